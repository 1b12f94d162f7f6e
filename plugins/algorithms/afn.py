"""Adaptive feature norm (unsupervised DA): the features of both domains pushed to larger norms
step by step, so that the target's are not left small and uninformative."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.data import Batch
from dabench.hparams import HParam, int_log2, log_uniform


def stepwise_norm_loss(f: torch.Tensor, delta: float) -> torch.Tensor:
    """SAFN's L_d (eq. 5): the mean over images of (||f|| - (||f|| detached + delta))^2, so each step
    asks every feature norm to grow by ``delta`` over its current value."""
    norm = f.norm(p=2, dim=1)
    return (norm - (norm.detach() + delta)).pow(2).mean()


class Block(nn.Module):
    """FC -> BatchNorm -> ReLU -> dropout, the dropout's output scaled by sqrt(1 - p) in training
    (SAFN's L2-preserving dropout: the feature norm is kept, not its mean)."""

    def __init__(self, in_features: int, width: int, p: float):
        super().__init__()
        self.fc, self.bn, self.dropout, self.p = nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.Dropout(p), p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.dropout(F.relu(self.bn(self.fc(x))))
        return f * math.sqrt(1 - self.p) if self.training else f


class AFN(ClassificationAlgorithm):
    """Stepwise Adaptive Feature Norm (Xu et al., ICCV 2019), as TLlib trains it (the authors'
    jihanyang/AFN ported by TLlib: examples/domain_adaptation/image_classification/afn.py,
    tllib/normalization/afn.py): source cross-entropy plus ``trade_off_norm`` (0.05) x the stepwise
    norm loss of the bottleneck features of the source and of the target, plus, on digits,
    ``trade_off_entropy`` (0.03) x the mean entropy of the target predictions; source and target
    through the network separately. The bottleneck is one ``Block`` of ``bottleneck_dim`` (1000)
    units; bottleneck and head initialised as TLlib's (weights N(0, 0.01), biases N(0, 0.01),
    batch-norm scales N(1, 0.01)). SGD at a constant rate ("fixed according to the original paper")
    with weight decay 5e-4, momentum 0.9 for the bottleneck and head and none for the backbone (TLlib's
    parameter groups). Regimes: its digit script (lenet from scratch, lr 0.01, delta 0.3, entropy
    0.03, 128 images per domain: afn.sh MNIST -> USPS) and its defaults (lr 0.001, delta 1, no
    entropy, 32 images per domain).
    """

    name = "afn"
    task = "classification"
    hparams = {
        "lr": HParam(0.01, log_uniform(-3.5, -1.5), "SGD learning rate (constant)", regimes={"digits": 0.01, "imagenet": 0.001}),
        "batch_size": HParam(128, int_log2(5, 7), "images per domain per step", regimes={"digits": 128, "imagenet": 32}),
        "weight_decay": HParam(5e-4, None, "L2 penalty"),
        "delta": HParam(0.3, None, "the norm increment asked for at each step", regimes={"digits": 0.3, "imagenet": 1.0}),
        "trade_off_norm": HParam(0.05, log_uniform(-2, -0.5), "weight of the stepwise norm loss"),
        "trade_off_entropy": HParam(0.03, None, "weight of the target entropy (0: off)",
                                    regimes={"digits": 0.03, "imagenet": 0.0}),
        "bottleneck_dim": HParam(1000, None, "width of the bottleneck block"),
        "dropout_p": HParam(0.5, None, "the block's dropout"),
        "freeze_backbone": ClassificationAlgorithm.hparams["freeze_backbone"],
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.bottleneck = Block(backbone.out_features, self.hp["bottleneck_dim"], self.hp["dropout_p"])
        self.head = nn.Linear(self.hp["bottleneck_dim"], num_classes)
        with torch.no_grad():
            self.bottleneck.bn.weight.normal_(1.0, 0.01)
            self.bottleneck.bn.bias.fill_(0)
            for linear in (self.bottleneck.fc, self.head):
                linear.weight.normal_(0.0, 0.01)
                linear.bias.normal_(0.0, 0.01)
        self.optims["model"] = torch.optim.SGD(
            [{"params": list(backbone.parameters())},
             {"params": list(self.bottleneck.parameters()), "momentum": 0.9},
             {"params": list(self.head.parameters()), "momentum": 0.9}],
            lr=self.hp["lr"], weight_decay=self.hp["weight_decay"])

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.bottleneck(self.featurizer(x))
        return self.head(f), f

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        x, y = batch.labeled_sources()
        y_s, f_s = self.classify(x)
        y_t, f_t = self.classify(batch.tgt_x)
        cls = F.cross_entropy(y_s, y)
        norm = stepwise_norm_loss(f_s[: len(batch.src_x)], self.hp["delta"]) + stepwise_norm_loss(f_t, self.hp["delta"])
        loss = cls + norm * self.hp["trade_off_norm"]
        logs = {"cls": cls.item(), "norm": norm.item()}
        if self.hp["trade_off_entropy"]:
            p = F.softmax(y_t, dim=1)
            ent = (-p * torch.log(p + 1e-5)).sum(1).mean()
            loss, logs["entropy"] = loss + ent * self.hp["trade_off_entropy"], ent.item()
        self.optimise(loss, self.optims["model"])
        return logs

    def predict(self, x):
        return self.classify(x)[0]
