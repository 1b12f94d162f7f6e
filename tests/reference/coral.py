"""Deep CORAL's training step (Sun & Saenko, ECCV 2016 workshops), from the authors' Caffe code.

Repository VisionLearningGroup/CORAL, commit 339844fa3336b74a51a170b6c2848056931c0311:
- code/D-CORAL.zip, D-CORAL/coral_loss_layer.cpp, lines 36-110: ``CORALLossLayer::Forward_cpu``
  (the covariances as D'D / (n - 1) - s s' / (n (n - 1)) with s the column sums, n the *source*
  batch size for both, the loss ||C_S - C_T||_F^2 / (4 d^2)) and ``Backward_cpu`` (the hand-written
  gradient (D - 1 mean') (C_S - C_T) / (d^2 (n - 1)), + for the source, - for the target: the exact
  gradient of the forward, so autograd stands in for it).
- code/D-CORAL_Office31.zip, sample_protofile/a_w_trainval_coral_fc8_loss_0.8_full_source.prototxt,
  lines 1-48 (a labelled source batch and an unlabelled target batch of the same size), 844-911 (the
  source and target branches share every weight, the CORAL layer reads fc8 of both with
  ``loss_weight`` 0.8) and 921-932 (SoftmaxWithLoss on the source fc8, weight 1).

Left out: Caffe's solver (its step policy, 10x/20x learning rates of fc8, bias multipliers and its
form of momentum); the optimiser is handed in, the bench's shared one, as it is for ERM. AlexNet
has no batch norm, so running the two branches one after the other is what Caffe computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def caffe_coral(fc8_s: torch.Tensor, fc8_t: torch.Tensor) -> torch.Tensor:
    """``CORALLossLayer::Forward_cpu``, line for line."""
    num, dim = fc8_s.shape  # bottom[0]->num(): the source batch size serves both covariances
    sum_s, sum_t = fc8_s.sum(0, keepdim=True), fc8_t.sum(0, keepdim=True)  # gemv with a row of ones
    cov_s = fc8_s.T @ fc8_s / (num - 1) - sum_s.T @ sum_s / (num * (num - 1))
    cov_t = fc8_t.T @ fc8_t / (num - 1) - sum_t.T @ sum_t / (num * (num - 1))
    diff = cov_s - cov_t
    return (diff * diff).sum() / (4.0 * dim * dim)


class DeepCORAL:
    """The Office-31 trainval net's training step: ``net`` maps images to fc8 (the logits)."""

    def __init__(self, net: nn.Module, loss_weight: float, optimizer: torch.optim.Optimizer):
        self.net, self.loss_weight, self.optimizer = net, loss_weight, optimizer

    def step(self, x_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor, lr: float) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        fc8_s = self.net(x_s)  # the source branch
        fc8_t = self.net(x_t)  # the target branch (shared weights)
        classification_loss = F.cross_entropy(fc8_s, y_s)  # SoftmaxWithLoss, normalised by the batch
        coral_fc8 = caffe_coral(fc8_s, fc8_t)
        self.optimizer.zero_grad()
        (1.0 * classification_loss + self.loss_weight * coral_fc8).backward()
        self.optimizer.step()
        return {"classification_loss": classification_loss.item(), "coral_fc8": coral_fc8.item()}
