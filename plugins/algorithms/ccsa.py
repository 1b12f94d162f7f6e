"""CCSA: supervised DA that pulls same-class source/target embeddings together and pushes others apart."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.layers import mlp
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform, uniform

# The authors keep every same-class pair and 3x as many random different-class pairs, so a
# quarter of their pair batches are positives (``pairing=expected`` weights all pairs to that).
NEGATIVES_PER_POSITIVE = 3
POS_SHARE = 0.25
PAIR_BATCH = 256  # the authors' batch of pairs per train_on_batch
# Keras 2.0's Adadelta defaults, which the authors' model.compile(optimizer='adadelta') takes.
ADADELTA = {"rho": 0.95, "eps": 1e-8}
KERAS_EPSILON = 1e-7  # K.epsilon(), the clip of Keras' cross-entropy


def pair_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Na, D), (Nb, D) -> (Na, Nb) Euclidean distances, sqrt(max(sum of squares, 1e-8)) as in the
    authors' code, so the gradient stays finite when two embeddings coincide."""
    sq = (a.float()[:, None, :] - b.float()[None, :, :]).pow(2).sum(-1)
    return sq.clamp_min(1e-8).sqrt()


def paired_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (N,) distance of each row of ``a`` to the same row of ``b`` (the authors'
    ``euclidean_distance`` between the two streams of a pair batch)."""
    return (a.float() - b.float()).pow(2).sum(-1).clamp_min(1e-8).sqrt()


def contrastive_loss(d: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean over pairs of d^2 for a same-class pair and max(0, margin - d)^2 for a different-class
    one (the authors' ``contrastive_loss``: margin 1, no 1/2 factor)."""
    return torch.where(same, d.pow(2), (margin - d).clamp_min(0).pow(2)).mean()


def keras_cross_entropy(logits: torch.Tensor, y: torch.Tensor, eps: float = KERAS_EPSILON) -> torch.Tensor:
    """Keras 2.0's ``categorical_crossentropy`` on a softmax output, as the authors' model computes
    it: the probabilities renormalised and clipped to [eps, 1 - eps] before the log, so a sample's
    loss stops at -log(1e-7) = 16.1 and carries no gradient once its probability is clipped."""
    p = torch.softmax(logits.float(), dim=-1)
    p = (p / p.sum(-1, keepdim=True)).clamp(eps, 1 - eps)
    return -p.log().gather(1, y[:, None]).mean()


def csa_loss(src_emb: torch.Tensor, src_y: torch.Tensor, tgt_emb: torch.Tensor, tgt_y: torch.Tensor,
             margin: float = 1.0, pos_share: float | None = POS_SHARE) -> torch.Tensor:
    """Contrastive semantic alignment over every (source, labelled target) pair (``pairing=expected``).

    A same-class pair costs d^2 (semantic alignment, L_SA), a different-class pair
    max(0, margin - d)^2 (separation, L_S); no 1/2 factor, as in the authors' code. Same-class
    pairs share ``pos_share`` of the weight and different-class pairs the rest (equal weights
    inside each group); ``pos_share=None`` is the plain mean over all pairs. A batch with pairs
    of one kind only takes the mean over those.
    """
    d = pair_distances(src_emb, tgt_emb)
    same = src_y[:, None] == tgt_y[None, :]
    terms = torch.where(same, d.pow(2), (margin - d).clamp_min(0).pow(2))
    n_pos, n = int(same.sum()), same.numel()
    if pos_share is None or n_pos in (0, n):
        return terms.mean()
    weights = torch.where(same, pos_share / n_pos, (1 - pos_share) / (n - n_pos))
    return (weights * terms).sum()


def sample_pairs(src_y: torch.Tensor, tgt_y: torch.Tensor, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' ``Create_Pairs`` on one batch: (source index, target index) of every same-class
    pair, then 3x as many different-class pairs drawn at random (all there are when fewer), the
    whole list shuffled; the first ``limit`` (0: all). No pair when no class is shared. Draws two
    ``torch.randperm`` from the global generator: the negatives' order, then the list's."""
    same = src_y[:, None] == tgt_y[None, :]
    pos, neg = same.nonzero(), (~same).nonzero()  # row-major, as the authors' two nested loops
    neg = neg[torch.randperm(len(neg))[:NEGATIVES_PER_POSITIVE * len(pos)].to(neg.device)]
    pairs = torch.cat([pos, neg])
    pairs = pairs[torch.randperm(len(pairs)).to(pairs.device)]
    if limit:
        pairs = pairs[:limit]
    return pairs[:, 0], pairs[:, 1]


class CCSA(ClassificationAlgorithm):
    """Classification and contrastive semantic alignment of source and a few labelled target samples.

    Motiian et al., "Unified Deep Supervised Domain Adaptation and Generalization", ICCV 2017,
    sec. 3, as the authors' Keras code trains it (samotiian/CCSA, ``main.py`` and
    ``Initialization.py``; transcribed in tests/reference/ccsa.py, checked step for step by
    tests/test_parity_ccsa_sagnet.py): loss = (1 - alpha) * CE + alpha * contrastive, alpha 0.25.

    - Pairs: every (source, labelled target) pair of the batch with the same class, plus 3x as many
      random different-class pairs, shuffled, at most ``pair_batch`` (256, the authors' batch).
    - Contrastive term: mean over the pairs of d^2 (same class) or max(0, margin - d)^2 (different
      class), d = sqrt(max(|g(a) - g(b)|^2, 1e-8)) between unnormalised embeddings, margin 1, no 1/2.
    - Two steps per batch, as the authors' two ``train_on_batch`` calls: (source, target) with CE on
      the source images' labels, then (target, source) with CE on the labelled target images.
      Each stream's image is its own forward pass (an image in k pairs counts k times in CE).
    - CE as Keras computes it on the softmax output: probabilities clipped to [1e-7, 1 - 1e-7]
      before the log (``keras_cross_entropy``): a sample's loss stops at 16.1 and its
      gradient at 0 once clipped, where log-softmax would keep pushing.
    - g is the backbone's feature vector; h is the authors' Dropout(0.5) -> Linear (Glorot-uniform
      weights, zero bias, as Keras' Dense).
    - Optimiser (per regime): digits, Adadelta with Keras 2.0's defaults (lr 1, rho 0.95, eps
      1e-8, no schedule, no weight decay), as the authors; imagenet, dabench's SGD with the DANN
      annealed rate, as the authors published no code for their Office experiments. A batch with
      no shared class makes no pair and trains nothing (no loss is logged for it).

    Variants (dabench 0.1's form, off by default):
    ``-H pairing=expected``: one step on CE over the source and labelled target samples together
    and a contrastive term over every in-batch pair, positives weighted 1/4 and negatives 3/4
    (the sampler's expected loss without its noise). ``-H head=erm``: ERM's MLP head
    (fc 100 -> fc K) instead of the authors' h, so CCSA differs from ERM with --tgt-labeled N only by
    the alignment term. ``-H optimizer=sgd`` / ``adadelta``: either optimiser in either regime.
    Unlabelled target images are not used.
    """

    name = "ccsa"
    target_labels = "required"
    hparams = {
        **ClassificationAlgorithm.hparams,
        "lr": HParam(1.0, log_uniform(-3, -1.5), "initial learning rate (Adadelta: constant; SGD: annealed as in DANN)",
                     regimes={"digits": 1.0, "imagenet": 0.01}),
        "optimizer": HParam("adadelta", None, "adadelta: Keras 2.0's defaults, as the authors' digit code; sgd: "
                            "momentum 0.9 and the DANN annealed rate", choices=("adadelta", "sgd"),
                            regimes={"digits": "adadelta", "imagenet": "sgd"}),
        "alpha": HParam(0.25, uniform(0.05, 0.75), "weight of the contrastive alignment loss; CE gets 1 - alpha"),
        "margin": HParam(1.0, log_uniform(-1, 1), "distance beyond which different-class pairs cost nothing"),
        "pair_batch": HParam(PAIR_BATCH, None, "pairs per step at most (the authors' batch); 0: every pair sampled"),
        "pairing": HParam("sampled", None, "sampled: the authors' pairs and two steps; expected: one step over every "
                          "pair, positives weighted 1/4 (dabench 0.1)", choices=("sampled", "expected")),
        "head": HParam("authors", None, "authors: Dropout(0.5) -> Linear; erm: ERM's MLP head",
                       choices=("authors", "erm")),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        if self.hp["head"] == "erm":
            self.classifier = mlp([backbone.out_features, 100, num_classes])
        else:
            dense = nn.Linear(backbone.out_features, num_classes)
            nn.init.xavier_uniform_(dense.weight)
            nn.init.zeros_(dense.bias)
            self.classifier = nn.Sequential(nn.Dropout(0.5), dense)
        if self.hp["optimizer"] == "adadelta":
            self.optims["model"] = torch.optim.Adadelta(self.parameters(), lr=self.hp["lr"],
                                                        weight_decay=self.hp["weight_decay"], **ADADELTA)
        else:
            self.optims["model"] = self.sgd(self.parameters())

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        if self.hp["optimizer"] == "sgd":
            self.anneal(step)
        if self.hp["pairing"] == "expected":
            return self._update_expected(batch)
        lab = batch.tgt_labeled
        i, j = sample_pairs(batch.src_y, lab.y, self.hp["pair_batch"])
        if not len(i):
            return {}
        same = batch.src_y[i] == lab.y[j]
        src_x, tgt_x = batch.src_x[i], lab.x[j]
        cls, csa, total = self._pair_step(src_x, tgt_x, batch.src_y[i], same)
        cls_t, csa_t, total_t = self._pair_step(tgt_x, src_x, lab.y[j], same)
        return {"cls": cls, "csa": csa, "total": total, "cls_tgt": cls_t, "csa_tgt": csa_t, "total_tgt": total_t}

    def _pair_step(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, same: torch.Tensor) -> tuple[float, ...]:
        """One ``train_on_batch`` of the authors' siamese model: CE on stream ``a``, contrastive on (a, b)."""
        emb_a, emb_b = self.featurizer(a), self.featurizer(b)
        cls = keras_cross_entropy(self.classifier(emb_a), y)
        csa = contrastive_loss(paired_distances(emb_a, emb_b), same, self.hp["margin"])
        alpha = self.hp["alpha"]
        total = (1 - alpha) * cls + alpha * csa
        self.optimise(total, self.optims["model"])
        return cls.item(), csa.item(), total.item()

    def _update_expected(self, batch: Batch) -> dict[str, float]:
        x, y = batch.labeled_sources()
        n_src = len(batch.src_x)
        emb = self.featurizer(x)
        cls = F.cross_entropy(self.classifier(emb), y)
        csa = csa_loss(emb[:n_src], y[:n_src], emb[n_src:], y[n_src:], self.hp["margin"])
        alpha = self.hp["alpha"]
        total = (1 - alpha) * cls + alpha * csa
        self.optimise(total, self.optims["model"])
        return {"cls": cls.item(), "csa": csa.item(), "total": total.item()}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
