"""Maximum Classifier Discrepancy (unsupervised DA): two classifiers disagree on the target as much
as the source allows, and the features learn to make them agree."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.data import Batch
from dabench.hparams import HParam, choice, int_log2, log_uniform
from dabench.layers import mlp


def discrepancy(logits_1: torch.Tensor, logits_2: torch.Tensor) -> torch.Tensor:
    """MCD's discrepancy (eq. 1): the mean absolute difference of the two classifiers' class
    probabilities, over images and classes."""
    return (F.softmax(logits_1, dim=1) - F.softmax(logits_2, dim=1)).abs().mean()


def class_balance(probs: torch.Tensor) -> torch.Tensor:
    """The VisDA script's ``entropy_loss`` of one classifier: -mean over classes of log(mean over the
    target images of the class probability + 1e-6)."""
    return -torch.log(probs.mean(0) + 1e-6).mean()


class MCD(ClassificationAlgorithm):
    """MCD (Saito et al., CVPR 2018): a feature generator G and two classifiers C1, C2, three steps
    per iteration. A: G, C1 and C2 on the source cross-entropy of both classifiers. B: C1 and C2 on
    that loss minus the discrepancy of their target predictions (G fixed). C: ``num_k`` (4) steps of
    G on the target discrepancy alone (C1, C2 fixed).

    As the authors' code (mil-tokyo/MCD_DA, commit af10217), per kind of data (``setting``):
    - ``digits`` (classification/solver.py ``train``, main.py): source and target through G
      separately, each optimiser Adam 2e-4 with weight decay 5e-4, 128 images per domain.
    - ``visda`` (visda_classification/res_train_main.py, the ImageNet-size script): source and
      target through G in one batch, 0.01 x a class-balance term in steps A and B (-mean log of each
      classifier's mean target prediction), SGD 1e-3 with weight decay 5e-4 (momentum 0.9 for the
      classifiers, none for G), 32 images per domain.
    The classifiers are ERM's head (fc100 -> fc K) on the backbone's features (the authors' digit
    classifiers are three fully connected layers with batch-norm and dropout on the convolutional
    features); the prediction is C1 + C2 (the ensemble their test prints beside each classifier).
    """

    name = "mcd"
    task = "classification"
    hparams = {
        "lr": HParam(2e-4, log_uniform(-4.5, -2.5), "learning rate of every optimiser (constant)",
                     regimes={"digits": 2e-4, "imagenet": 1e-3}),
        "batch_size": HParam(128, int_log2(5, 7), "images per domain per step", regimes={"digits": 128, "imagenet": 32}),
        "weight_decay": HParam(5e-4, None, "L2 penalty of every optimiser"),
        "num_k": HParam(4, choice([1, 2, 3, 4]), "generator steps on the discrepancy per iteration"),
        "setting": HParam("digits", None, "the authors' digit script (Adam, separate forwards) or their VisDA "
                          "script (SGD, one forward, class balance)", choices=("digits", "visda"),
                          regimes={"digits": "digits", "imagenet": "visda"}),
        "freeze_backbone": ClassificationAlgorithm.hparams["freeze_backbone"],
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.c1 = mlp([backbone.out_features, 100, num_classes])
        self.c2 = mlp([backbone.out_features, 100, num_classes])
        lr, wd = self.hp["lr"], self.hp["weight_decay"]
        if self.hp["setting"] == "digits":
            self.optims = {k: torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd)
                           for k, m in (("g", self.featurizer), ("c1", self.c1), ("c2", self.c2))}
        else:
            self.optims = {"g": torch.optim.SGD(self.featurizer.parameters(), lr=lr, weight_decay=wd),
                           "f": torch.optim.SGD([*self.c1.parameters(), *self.c2.parameters()], lr=lr, momentum=0.9,
                                                weight_decay=wd)}

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        x, y = batch.labeled_sources()
        return self._digits(x, y, batch.tgt_x) if self.hp["setting"] == "digits" else self._visda(x, y, batch.tgt_x)

    def _digits(self, xs, ys, xt) -> dict[str, float]:
        g, c1, c2 = self.optims["g"], self.optims["c1"], self.optims["c2"]
        feat_s = self.featurizer(xs)
        loss_s = F.cross_entropy(self.c1(feat_s), ys) + F.cross_entropy(self.c2(feat_s), ys)
        self.optimise(loss_s, g, c1, c2)  # A
        feat_s, feat_t = self.featurizer(xs), self.featurizer(xt)
        s1, s2 = F.cross_entropy(self.c1(feat_s), ys), F.cross_entropy(self.c2(feat_s), ys)
        dis = discrepancy(self.c1(feat_t), self.c2(feat_t))
        self.optimise(s1 + s2 - dis, c1, c2)  # B
        for _ in range(self.hp["num_k"]):  # C
            feat_t = self.featurizer(xt)
            dis = discrepancy(self.c1(feat_t), self.c2(feat_t))
            self.optimise(dis, g)
        return {"cls_1": s1.item(), "cls_2": s2.item(), "dis": dis.item()}

    def _visda(self, xs, ys, xt) -> dict[str, float]:
        g, f = self.optims["g"], self.optims["f"]
        n = len(xs)

        def forward():
            feats = self.featurizer(torch.cat([xs, xt]))
            o1, o2 = self.c1(feats), self.c2(feats)
            p1, p2 = F.softmax(o1[n:], dim=1), F.softmax(o2[n:], dim=1)
            cls = F.cross_entropy(o1[:n], ys) + F.cross_entropy(o2[:n], ys)
            return cls, (p1 - p2).abs().mean(), class_balance(p1) + class_balance(p2)

        cls, _, balance = forward()
        self.optimise(cls + 0.01 * balance, g, f)  # A
        cls, dis, balance = forward()
        self.optimise(cls - dis + 0.01 * balance, f)  # B
        for _ in range(self.hp["num_k"]):  # C
            _, dis, _ = forward()
            self.optimise(dis, g)
        return {"cls": cls.item(), "dis": dis.item(), "balance": balance.item()}

    def predict(self, x):
        feats = self.featurizer(x)
        return self.c1(feats) + self.c2(feats)
