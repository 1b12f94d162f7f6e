"""SelfReg (domain generalisation): self-supervised contrastive regularisation within classes, as DomainBed runs it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM


def class_intervals(sorted_y: list[int]) -> list[int]:
    """The ends of the runs of one class in sorted labels, as DomainBed's SelfReg cuts them (its
    first comparison is with class 0, so a batch whose smallest class is not 0 starts with an
    empty run)."""
    intervals, ex = [], 0
    for idx, val in enumerate(sorted_y):
        if ex == val:
            continue
        intervals.append(idx)
        ex = val
    return intervals + [len(sorted_y)]


class SelfReg(ERM):
    """SelfReg (Kim et al., ICCV 2021), DomainBed's: logits and projected features pulled towards
    those of other images of the same class, and towards mixes of two of them.

    As DomainBed (facebookresearch/DomainBed, algorithms.py ``SelfReg``): the batch sorted by class;
    lambda ~ Beta(0.5, 0.5) (numpy's global generator); within each class, two random permutations
    give partners; the loss is CE + min(CE, 1) (lambda (MSE(logits, partner logits) + 0.3
    MSE(features, partner projections)) + (1 - lambda) (the same against the lambda-mix of both
    partners)), the projections from a 3-layer MLP with batch norm (width 2 x the features). As
    DomainBed builds it, Adam (1e-3) holds the featurizer and classifier only: the projector is
    created after ERM's optimiser, so it keeps its initial weights (its batch-norm statistics
    move), and the feature term compares the featurizer's output with the partners' projections.
    No domain labels and no target: it runs in DG, and in UDA as a source-only method.
    """

    name = "selfreg"
    task = "classification"
    needs_target = False
    hparams = {**ERM.hparams, **DOMAINBED_ADAM}

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.optims["model"] = torch.optim.Adam([*self.featurizer.parameters(), *self.classifier.parameters()],
                                                lr=self.hp["lr"], weight_decay=self.hp["weight_decay"])
        width = backbone.out_features
        hidden = width if width == 2048 else 2 * width
        self.cdpl = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, width), nn.BatchNorm1d(width))

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        x, y = batch.labeled_sources()
        lam = np.random.beta(0.5, 0.5)
        y, order = torch.sort(y)
        x = x[order]
        feat = self.featurizer(x)
        proj = self.cdpl(feat)
        output = self.classifier(feat)
        first, second, start = [], [], 0
        for end in class_intervals(y.tolist()):
            first.append(torch.randperm(end - start) + start)
            second.append(torch.randperm(end - start) + start)
            start = end
        first, second = torch.cat(first), torch.cat(second)
        output_2, feat_2, output_3, feat_3 = (torch.zeros_like(t) for t in (output, proj, output, proj))
        for i in range(len(y)):  # row by row, as DomainBed: its gradient's summation order, which Adam
            # amplifies where a gradient is near 0 (a gather sums in another order: 1e-4 apart in 3 steps)
            output_2[i], feat_2[i] = output[first[i]], proj[first[i]]
            output_3[i], feat_3[i] = output[second[i]], proj[second[i]]
        output_3 = lam * output_2 + (1 - lam) * output_3
        feat_3 = lam * feat_2 + (1 - lam) * feat_3
        individual = F.mse_loss(output, output_2) + 0.3 * F.mse_loss(feat, feat_2)
        hetero = F.mse_loss(output, output_3) + 0.3 * F.mse_loss(feat, feat_3)
        cls = F.cross_entropy(output, y)
        loss = cls + min(cls.item(), 1.0) * (lam * individual + (1 - lam) * hetero)
        self.optimise(loss, self.optims["model"])
        return {"loss": loss.item(), "cls": cls.item()}
