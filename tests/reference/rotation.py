"""Rotation prediction for DA (Sun, Tzeng, Darrell & Efros, "Unsupervised Domain Adaptation through
Self-Supervision", 2019), from the authors' code.

Repository yueatsprograms/uda_release, commit b256316283e74b5d1f16777f029c384ee9b6e2e7:
- dset_classes/DsetSSRotRand.py, lines 5-45: each image gets a label drawn from {0, 1, 2, 3} and is
  turned by it; ``digit=True`` swaps 90 degrees for a transpose and 180 degrees for a left-right
  flip (270 degrees stays), "No rotation 180 for digits!" (utils/parse_tasks.py, lines 18-21);
- utils/parse_tasks.py, lines 14-42: the rotation task sees source and target images (half a batch
  each), a linear head on the pooled layer-3 features (utils/SSHead.py, lines 10-16), and its own
  SGD over the extractor and the head (lr_rotation, momentum 0.9, weight decay);
- utils/SSTask.py, lines 42-57 (``train_batch``): the source and target rotation batches
  concatenated, one cross-entropy, zero_grad / backward / step of the rotation optimiser;
- utils/train.py, lines 26-35: per iteration, every self-supervised task's ``train_batch`` first,
  then the classification step: zero_grad, cross-entropy of the whole network on the labelled
  source batch, backward, step of the classification optimiser (main.py, lines 71-75: SGD over the
  network and the heads, lr, momentum 0.9, weight decay).

Adapted: the labels come from one ``torch.randint`` over the source-then-target images (theirs:
``np.random.randint(4)`` per image in the data loader), and the rotation batches are the step's
source and target batches (theirs: separate shuffled draws). Learning rates are handed in each step
(theirs: MultiStepLR at two epoch milestones; the bench's annealed rate here). Left out: data
loading, evaluation, the quadrant and flip tasks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# Each takes one (C, H, W) image, as the authors' dataset does.
def tensor_rot_90(x):
    return x.flip(2).transpose(1, 2)


def tensor_rot_90_digit(x):
    return x.transpose(1, 2)


def tensor_rot_180(x):
    return x.flip(2).flip(1)


def tensor_rot_180_digit(x):
    return x.flip(2)


def tensor_rot_270(x):
    return x.transpose(1, 2).flip(2)


def ss_rot_rand(image: torch.Tensor, label: int, digit: bool) -> torch.Tensor:
    """``DsetSSRotRand.__getitem__`` with its label given."""
    if label == 1:
        image = tensor_rot_90_digit(image) if digit else tensor_rot_90(image)
    elif label == 2:
        image = tensor_rot_180_digit(image) if digit else tensor_rot_180(image)
    elif label == 3:
        image = tensor_rot_270(image)
    return image


class SelfSupervisedDA:
    """``net`` maps images to class logits; ``ext`` is the part of it the rotation head reads."""

    def __init__(self, net: nn.Module, ext: nn.Module, head: nn.Module, digit: bool, lr: float, lr_rotation: float,
                 weight_decay: float, net_parameters: list[nn.Parameter]):
        self.net, self.ext, self.head, self.digit = net, ext, head, digit
        self.lr_ratio = lr_rotation / lr
        parameters = list(net_parameters) + list(head.parameters())  # main.py: the heads join the list
        self.optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
        self.ss_optimizer = torch.optim.SGD(list(ext.parameters()) + list(head.parameters()), lr=lr_rotation,
                                            momentum=0.9, weight_decay=weight_decay)

    def train_batch(self, su_inputs: torch.Tensor, tu_inputs: torch.Tensor) -> torch.Tensor:
        """``SSTask.train_batch``; the labels drawn as the data loader would, one per image."""
        us_inputs = torch.cat((su_inputs, tu_inputs))
        us_labels = torch.randint(0, 4, (len(us_inputs),))
        us_inputs = torch.stack([ss_rot_rand(img, int(k), self.digit) for img, k in zip(us_inputs, us_labels)])
        self.ss_optimizer.zero_grad()
        outputs = self.head(self.ext(us_inputs))
        loss = F.cross_entropy(outputs, us_labels)
        loss.backward()
        self.ss_optimizer.step()
        return loss

    def step(self, sc_inputs: torch.Tensor, sc_labels: torch.Tensor, tg_inputs: torch.Tensor, lr: float) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for group in self.ss_optimizer.param_groups:
            group["lr"] = lr * self.lr_ratio
        rot = self.train_batch(sc_inputs, tg_inputs)
        self.optimizer.zero_grad()
        outputs_cls = self.net(sc_inputs)
        loss_cls = F.cross_entropy(outputs_cls, sc_labels)
        loss_cls.backward()
        self.optimizer.step()
        return {"loss_cls": loss_cls.item(), "loss_rot": rot.item()}
