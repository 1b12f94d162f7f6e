"""ADVENT: entropy minimisation for segmentation, directly (MinEnt) or adversarially (AdvEnt)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import Algorithm, level_outputs, seg_loss
from dabench.data import SEGMENTATION, Batch
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.adaptsegnet import AdaptSegNet


def self_information(logits: torch.Tensor) -> torch.Tensor:
    """The weighted self-information map I = -p log2(p) / log2(C) per class and pixel (ADVENT eq. 5,
    its code's ``prob_2_entropy``), in fp32; summed over classes it is the normalised entropy."""
    p = F.softmax(logits.float(), 1)
    return -p * torch.log2(p + 1e-30) / math.log2(logits.shape[1])


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """The mean over pixels of the normalised entropy, in [0, 1] (ADVENT eq. 4; ``entropy_loss``)."""
    return self_information(logits).sum(1).mean()


class MinEnt(Algorithm):
    """ADVENT's MinEnt (Vu et al., CVPR 2019): source segmentation plus the mean normalised entropy
    of the target predictions, minimised directly.

    As the paper's code (configs/minent.yml): multi-level, the main output's entropy at
    lambda_ent 0.001 and the auxiliary output's at 0.0002, segmentation weighted 1 and 0.1
    (``aux_weight``); logits upsampled to the input size (corner-aligned) before both losses;
    SGD with poly decay as AdaptSegNet. Entropy in bits over log2(C), so 1 is a uniform prediction.
    """

    task = SEGMENTATION
    hparams = {
        **Algorithm.segmentation_hparams,
        "lambda_ent": HParam(0.001, log_uniform(-4, -2), "weight of the main output's target entropy"),
        "lambda_ent_aux": HParam(0.0002, log_uniform(-4.7, -2.7), "weight of the auxiliary output's target entropy"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.segmenter = backbone
        self.optims["seg"] = self.seg_sgd(backbone)

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return level_outputs(self.segmenter, x)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.poly(step)
        seg_weight = {"main": 1.0, "aux": self.hp["aux_weight"]}
        ent_weight = {"main": self.hp["lambda_ent"], "aux": self.hp["lambda_ent_aux"]}
        seg = sum(seg_weight[k] * seg_loss(v, y) for x, y in self.labeled_parts(batch) for k, v in self.outputs(x).items())
        tgt = self.outputs(batch.tgt_x)
        ent = sum(ent_weight[k] * entropy_loss(v) for k, v in tgt.items())
        self.step(seg + ent, self.optims["seg"])
        return {"seg": seg.item(), "ent": entropy_loss(tgt["main"]).item()}

    def predict(self, x):
        return self.segmenter(x)[0]


class AdvEnt(AdaptSegNet):
    """ADVENT's AdvEnt (Vu et al., CVPR 2019): AdaptSegNet's output-space adversarial training with
    the discriminators reading the weighted self-information maps -p log2(p) / log2(C) instead of
    the softmax maps, so that target predictions learn to have the low-entropy structure of the
    source ones.

    As the paper's code (configs/advent.yml): multi-level, lambda_adv 0.001 (main) and 0.0002
    (auxiliary), discriminators of AdaptSegNet's architecture with Adam at 1e-4, source label 0
    and target 1, segmentation weights 1 and 0.1.
    """

    def disc_input(self, logits: torch.Tensor) -> torch.Tensor:
        return self_information(logits)
