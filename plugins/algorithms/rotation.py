"""Self-supervised DA: rotation prediction on source and target images as an auxiliary task."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.erm import ERM

ROTATIONS = 4  # four classes of the pretext task

# What each label does to a (N, C, H, W) batch of square images, as the authors' DsetSSRotRand.py
# writes it. ``four``: 0, 90 (anticlockwise), 180 and 270 degrees. ``digits``: the authors' set for
# digit data, where 180 degrees makes a 6 of a 9: label 1 is a transpose (a mirror about the main
# diagonal), label 2 a left-right mirror, label 3 still 270 degrees.
TURNS = {
    "four": (lambda x: x, lambda x: torch.rot90(x, 1, (-2, -1)), lambda x: torch.rot90(x, 2, (-2, -1)),
             lambda x: torch.rot90(x, 3, (-2, -1))),
    "digits": (lambda x: x, lambda x: x.transpose(-2, -1), lambda x: x.flip(-1), lambda x: torch.rot90(x, 3, (-2, -1))),
}


def rotate(images: torch.Tensor, turns: str = "four") -> tuple[torch.Tensor, torch.Tensor]:
    """Each image transformed by a random label of ``TURNS[turns]`` (``torch.randint`` under the
    run's seed), and the labels of the 4-way pretext task. Square images keep their shape."""
    k = torch.randint(0, ROTATIONS, (len(images),), device=images.device)
    views = torch.stack([turn(images) for turn in TURNS[turns]])
    return views[k, torch.arange(len(images), device=images.device)], k


def rotation_loss(featurizer: nn.Module, head: nn.Module, images: torch.Tensor, turns: str = "four") -> torch.Tensor:
    """Cross-entropy of the rotation head on the shared features of the turned images."""
    turned, k = rotate(images, turns)
    return F.cross_entropy(head(featurizer(turned)), k)


class Rotation(ERM):
    """Self-supervised DA by rotation prediction (Sun, Tzeng, Darrell & Efros, "Unsupervised Domain
    Adaptation through Self-Supervision", 2019): the label loss on the labelled images plus a 4-way
    rotation-prediction task on the source and the unlabelled target images, through a linear head
    on the shared feature vector, so the features learn structure both domains share.

    As the authors' code (yueatsprograms/uda_release: utils/train.py, utils/SSTask.py,
    utils/parse_tasks.py, dset_classes/DsetSSRotRand.py):
    - Two SGD steps per iteration, rotation first: an optimiser over the featurizer and the rotation
      head steps on the rotation loss of the source and the target images (each image its own random
      label), then the classification optimiser steps on the source cross-entropy, its gradient
      taken at the weights the rotation step left. Each optimiser keeps its own momentum. The
      task's weight is the rotation step's learning rate over the classification step's
      (``lambda_rot``; the authors' lr_rotation = lr = 0.1: 1), on the bench's annealed rate.
    - The transformations (``-H turns``): for digits the authors leave 180 degrees out, a 6 turned
      by 180 degrees being a 9 (parse_tasks.py: "No rotation 180 for digits!"), and use identity,
      transpose, left-right mirror and 270 degrees (``digits``, the digits regime); other data
      turns by 0, 90, 180 and 270 degrees (``four``, the ImageNet regime).
    - The head: one linear layer on the pooled features the label classifier reads (theirs:
      avgpool + fc on layer 3 of their ResNet; ours: the backbone's feature vector).
    Not transcribed: their rotation batches are separate draws of half a batch from each domain;
    here the rotation task sees the step's source and target batches.

    ``-H rot_update=summed`` sums the two losses, cls + lambda_rot x rot, in one step of one
    optimiser: the objective as the paper writes it, and how ``dann -H aux=rotation`` adds the
    task to DANN. Domain generalisation: the rotation task sees the source images alone.
    """

    name = "rotation"
    task = "classification"
    needs_target = False  # in domain generalisation the pretext task sees the source images alone
    hparams = {
        **ERM.hparams,
        "lambda_rot": HParam(1.0, log_uniform(-1, 0.5), "weight of the rotation task: the rotation step's learning "
                             "rate over the classification step's (alternating), or the loss weight (summed)"),
        "turns": HParam("four", None, "the pretext labels: four (0/90/180/270 degrees) or digits (identity, transpose, "
                        "mirror, 270 degrees: no 180, as the authors for digits)", choices=("four", "digits"),
                        regimes={"digits": "digits", "imagenet": "four"}),
        "rot_update": HParam("alternating", None, "alternating: a rotation step then a classification step, as the "
                             "authors' code; summed: one step on cls + lambda_rot x rot", choices=("alternating", "summed")),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.rotation_head = nn.Linear(backbone.out_features, ROTATIONS)
        self.optims["model"] = self.sgd(self.parameters())
        if self.hp["rot_update"] == "alternating":
            shared = list(self.featurizer.parameters()) + list(self.rotation_head.parameters())
            self.optims["rotation"] = self.sgd([{"params": shared, "lr_mult": self.hp["lambda_rot"]}])

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        images = batch.with_target(batch.src_x)
        x, y = batch.labeled_sources()
        if self.hp["rot_update"] == "alternating":
            rot = rotation_loss(self.featurizer, self.rotation_head, images, self.hp["turns"])
            self.optimise(rot, self.optims["rotation"])
            cls = F.cross_entropy(self.predict(x), y)
            self.optimise(cls, self.optims["model"])
        else:
            cls = F.cross_entropy(self.predict(x), y)
            rot = rotation_loss(self.featurizer, self.rotation_head, images, self.hp["turns"])
            self.optimise(cls + self.hp["lambda_rot"] * rot, self.optims["model"])
        return {"cls": cls.item(), "rot": rot.item()}
