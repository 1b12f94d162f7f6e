"""M3SDA (multi-source DA): the features' moments matched across every pair of domains, and a pair
of classifiers per source trained as MCD trains its two."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.data import Batch, by_domain
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.mcd import discrepancy


def moment_distance(sources: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Dassl's ``moment_distance`` (M3SDA eq. 1 with the first two moments): the mean over the
    source-target and source-source pairs of the Euclidean distance between feature means, the same
    for the (unbiased) variances, and the average of the two."""
    def pairwise(stats: list[torch.Tensor], tgt: torch.Tensor) -> torch.Tensor:
        pairs = [(s, tgt) for s in stats] + [(stats[i], stats[j]) for i in range(len(stats)) for j in range(i + 1, len(stats))]
        return sum(((a - b) ** 2).sum().sqrt() for a, b in pairs) / len(pairs)
    first = pairwise([s.mean(0) for s in sources], target.mean(0))
    second = pairwise([s.var(0) for s in sources], target.var(0))
    return (first + second) / 2


class M3SDA(ClassificationAlgorithm):
    """M3SDA (Peng et al., ICCV 2019), as Dassl trains it (KaiyangZhou/Dassl.pytorch, commit
    c61a1b5: dassl/engine/da/m3sda.py, config/defaults.py, configs/trainers/da/m3sda/digit5.yaml):
    a feature network F and, per source domain, two linear classifiers. Step A: F and every
    classifier on the mean over sources of both classifiers' cross-entropy plus ``lmda`` (0.5) x
    the moment distance between each source's and the target's features (means and variances, every
    pair). Step B: the classifiers alone (F's features without gradient) on that source loss minus
    the mean over sources of the L1 discrepancy of each pair on the target. Step C: ``n_step_f`` (4)
    steps of F on the target discrepancy. SGD 0.05, momentum 0.9, weight decay 5e-4, cosine to 0
    over the run (Dassl steps it per epoch); 64 images per domain (Digit-5's 256 over 4 sources and
    64 unlabelled). Prediction: the mean over sources of the first classifier's softmax.

    The authors' digit code (VisionLearningGroup.github.io, DomainNet/code_MSDA_digit) is written
    for exactly four sources (its regulariser names them one by one, counts one pair twice and
    leaves another out), so it cannot run on three; Dassl's general form is the one transcribed.
    Needs several source domains (``--src a,b,c``) and the target.
    """

    name = "m3sda"
    task = "classification"
    hparams = {
        "lr": HParam(0.05, log_uniform(-2.5, -1), "SGD learning rate (cosine to 0)"),
        "batch_size": HParam(64, None, "images per domain per step"),
        "weight_decay": HParam(5e-4, None, "L2 penalty"),
        "lmda": HParam(0.5, None, "weight of the moment distance"),
        "n_step_f": HParam(4, None, "steps of the feature network on the discrepancy per iteration"),
        "freeze_backbone": ClassificationAlgorithm.hparams["freeze_backbone"],
    }

    @classmethod
    def refuses(cls, hparams: dict, sources: int) -> str | None:
        if sources < 2:
            return ("M3SDA matches moments between source domains and keeps a classifier pair per source: it needs "
                    "several sources (--src a,b,c). With one source, mcd is the same method.")
        return None

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.pairs = nn.ModuleList()  # one (c1, c2) per source, made when the first batch shows how many
        self.num_classes = num_classes
        sgd = dict(lr=self.hp["lr"], momentum=0.9, weight_decay=self.hp["weight_decay"])
        self.optims = {"f": torch.optim.SGD(backbone.parameters(), **sgd)}
        self._sgd = sgd

    def _ensure_pairs(self, n: int) -> None:
        if len(self.pairs):
            return
        width = self.featurizer.out_features
        for _ in range(n):
            self.pairs.append(nn.ModuleList([nn.Linear(width, self.num_classes), nn.Linear(width, self.num_classes)]))
        self.pairs.to(next(self.featurizer.parameters()).device)
        self.optims["c"] = torch.optim.SGD(self.pairs.parameters(), **self._sgd)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        n = len({k.split(".")[1] for k in state_dict if k.startswith(prefix + "pairs.")})
        if n:
            self._ensure_pairs(n)  # a checkpoint of a run that has made its pairs
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        xs, ys = by_domain(batch.src_x, batch.src_domain), by_domain(batch.src_y, batch.src_domain)
        self._ensure_pairs(len(xs))
        self.cosine(step)
        n = len(xs)
        # A
        feats = [self.featurizer(x) for x in xs]
        loss_x = sum(F.cross_entropy(c1(f), y) + F.cross_entropy(c2(f), y) for f, y, (c1, c2) in zip(feats, ys, self.pairs)) / n
        loss_a = loss_x + moment_distance(feats, self.featurizer(batch.tgt_x)) * self.hp["lmda"]
        self.optimise(loss_a, self.optims["f"], self.optims["c"])
        # B
        with torch.no_grad():
            feat_u = self.featurizer(batch.tgt_x)
            feats = [self.featurizer(x) for x in xs]
        loss_x = sum(F.cross_entropy(c1(f), y) + F.cross_entropy(c2(f), y) for f, y, (c1, c2) in zip(feats, ys, self.pairs)) / n
        dis = sum(discrepancy(c1(feat_u), c2(feat_u)) for c1, c2 in self.pairs) / n
        loss_b = loss_x - dis
        self.optimise(loss_b, self.optims["c"])
        # C
        for _ in range(self.hp["n_step_f"]):
            feat_u = self.featurizer(batch.tgt_x)
            loss_c = sum(discrepancy(c1(feat_u), c2(feat_u)) for c1, c2 in self.pairs) / n
            self.optimise(loss_c, self.optims["f"])
        return {"step_a": loss_a.item(), "step_b": loss_b.item(), "step_c": loss_c.item()}

    def predict(self, x):
        """The log of Dassl's ``model_inference`` (the mean of the sources' first-classifier softmax):
        logits whose softmax is that mean."""
        f = self.featurizer(x)
        if not len(self.pairs):
            return f.new_zeros(len(x), self.num_classes)  # before the first step: every class alike
        mean = sum(F.softmax(c1(f), 1) for c1, _ in self.pairs) / len(self.pairs)
        return torch.log(mean.clamp_min(1e-12))
