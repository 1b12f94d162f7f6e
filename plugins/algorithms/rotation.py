"""Self-supervised DA: rotation prediction on source and target images as an auxiliary task."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.erm import ERM

ROTATIONS = 4  # 0, 90, 180 and 270 degrees


def rotate(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image turned by a random multiple of 90 degrees (``torch.rand`` under the run's seed),
    and the multiple: the 4-way labels of the pretext task. Square images keep their shape."""
    k = torch.randint(0, ROTATIONS, (len(images),), device=images.device)
    turned = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(images, k.tolist())])
    return turned, k


def rotation_loss(featurizer: nn.Module, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the rotation head on the shared features of the turned images."""
    turned, k = rotate(images)
    return F.cross_entropy(head(featurizer(turned)), k)


class Rotation(ERM):
    """Self-supervised DA by rotation prediction (Sun, Tzeng, Darrell & Efros, "Unsupervised Domain
    Adaptation through Self-Supervision", 2019): the label loss on the labelled images plus
    lambda_rot times a 4-way rotation-prediction loss on the source and the unlabelled target
    images, through a linear head on the shared feature vector, so the features learn structure
    both domains share.

    As the paper: a linear rotation head on the features, both domains' images, each turned by a
    random multiple of 90 degrees, the task losses summed with weight 1 (``-H lambda_rot``). ERM's
    network and annealed SGD. ``dann -H aux=rotation`` adds the same task to DANN.
    """

    task = "classification"
    needs_target = False  # in domain generalisation the pretext task sees the source images alone
    hparams = {**ERM.hparams, "lambda_rot": HParam(1.0, log_uniform(-1, 0.5), "weight of the rotation-prediction loss")}

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.rotation_head = nn.Linear(backbone.out_features, ROTATIONS)
        self.optims["model"] = self.sgd(self.parameters())

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        x, y = self.labeled_sources(batch)
        cls = F.cross_entropy(self.predict(x), y)
        rot = rotation_loss(self.featurizer, self.rotation_head, self.with_target(batch.src_x, batch))
        self.step(cls + self.hp["lambda_rot"] * rot, self.optims["model"])
        return {"cls": cls.item(), "rot": rot.item()}
