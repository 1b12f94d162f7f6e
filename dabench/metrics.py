"""Metrics: accuracy for classification; a device-side confusion matrix for segmentation."""
from __future__ import annotations

import math

import torch

from dabench.tasks import IGNORE_INDEX, task_of


class ConfusionMatrix:
    """Rows = ground truth, columns = prediction, accumulated on the device with one bincount."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.n = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = (target != IGNORE_INDEX) & (target >= 0) & (target < self.n)
        idx = target[keep].long() * self.n + pred[keep].long()
        self.mat += torch.bincount(idx, minlength=self.n * self.n).view(self.n, self.n)

    def accuracy(self) -> float:
        total = int(self.mat.sum())
        return float(self.mat.diag().sum()) / total if total else math.nan

    def iou(self) -> list[float]:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from both labels and predictions."""
        m = self.mat.double()
        tp = m.diag()
        denom = m.sum(0) + m.sum(1) - tp
        return [float(t / d) if d > 0 else math.nan for t, d in zip(tp.tolist(), denom.tolist())]

    def recall(self) -> list[float]:
        """Per-class accuracy = TP / (images of the class); NaN for a class with no image."""
        m = self.mat.double()
        return [float(t / n) if n > 0 else math.nan for t, n in zip(m.diag().tolist(), m.sum(1).tolist())]

    def summary(self, task: str) -> dict:
        """The evaluation record's entry for ``task`` (``Task.summary``)."""
        t = task_of(task)
        return t.summary(self.accuracy(), self.iou() if t.per_class else self.recall())

