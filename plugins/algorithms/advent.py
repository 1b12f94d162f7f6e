"""ADVENT: entropy minimisation for segmentation, directly (MinEnt) or adversarially (AdvEnt)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import SegmentationAlgorithm
from dabench.layers import level_outputs, seg_loss
from dabench.data import SEGMENTATION, Batch
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.adaptsegnet import AdaptSegNet

# ADVENT's config.py: poly decay over MAX_ITERS 250000, training stopped at EARLY_STOP 120000.
POLY_SPAN = HParam(250_000 / 120_000, None, "the poly decay's horizon as a multiple of --steps: ADVENT decays over "
                   "250000 iterations and stops at 120000 (1: decay to 0 at the end of the run)")


def self_information(logits: torch.Tensor) -> torch.Tensor:
    """The weighted self-information map I = -p log2(p) / log2(C) per class and pixel (ADVENT eq. 5,
    its code's ``prob_2_entropy``), in fp32; summed over classes it is the normalised entropy."""
    p = F.softmax(logits.float(), 1)
    return -p * torch.log2(p + 1e-30) / math.log2(logits.shape[1])


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """The mean over pixels of the normalised entropy, in [0, 1] (ADVENT eq. 4; ``entropy_loss``)."""
    return self_information(logits).sum(1).mean()


class MinEnt(SegmentationAlgorithm):
    """ADVENT's MinEnt (Vu et al., CVPR 2019): source segmentation plus the mean normalised entropy
    of the target predictions, minimised directly.

    As the paper's code (valeoai/ADVENT ``train_minent`` with configs/minent.yml; checked step for
    step in tests/test_parity_seg.py): multi-level, the main output's entropy at lambda_ent 0.001 and
    the auxiliary output's at 0.0002, segmentation weighted 1 and 0.1 (``aux_weight``); logits
    upsampled to the input size (corner-aligned) before both losses; SGD 2.5e-4 (heads 10x) with
    poly decay over MAX_ITERS 250000, stopped at EARLY_STOP 120000: the decay spans ``poly_span`` =
    25/12 of ``--steps``. Entropy in bits over log2(C), so 1 is a uniform prediction. As for
    AdaptSegNet, the authors' optimiser groups repeat backbone parameters (one entry per module
    containing them); dabench steps each once.
    """

    name = "minent"
    task = SEGMENTATION
    hparams = {
        **SegmentationAlgorithm.hparams,
        "lambda_ent": HParam(0.001, log_uniform(-4, -2), "weight of the main output's target entropy"),
        "lambda_ent_aux": HParam(0.0002, log_uniform(-4.7, -2.7), "weight of the auxiliary output's target entropy"),
        "poly_span": POLY_SPAN,
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.segmenter = backbone
        self.optims["seg"] = self.seg_sgd(backbone)

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return level_outputs(self.segmenter, x)

    def set_rates(self, step: int) -> None:
        """The segmenter's poly-decayed rate at ``step``, over ``poly_span`` x ``--steps``."""
        self.poly(step, round(self.hp["poly_span"] * self.steps))

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.set_rates(step)
        seg_weight = {"main": 1.0, "aux": self.hp["aux_weight"]}
        ent_weight = {"main": self.hp["lambda_ent"], "aux": self.hp["lambda_ent_aux"]}
        seg = sum(seg_weight[k] * seg_loss(v, y) for x, y in batch.labeled_parts() for k, v in self.outputs(x).items())
        tgt = self.outputs(batch.tgt_x)
        ent = sum(ent_weight[k] * entropy_loss(v) for k, v in tgt.items())
        self.optimise(seg + ent, self.optims["seg"])
        return {"seg": seg.item(), "ent": entropy_loss(tgt["main"]).item()}

    def predict(self, x):
        return self.segmenter(x)[0]


class AdvEnt(AdaptSegNet):
    """ADVENT's AdvEnt (Vu et al., CVPR 2019): AdaptSegNet's output-space adversarial training with
    the discriminators reading the weighted self-information maps -p log2(p) / log2(C) instead of
    the softmax maps, so that target predictions learn to have the low-entropy structure of the
    source ones.

    As the paper's code (valeoai/ADVENT ``train_advent`` with configs/advent.yml; checked step for
    step in tests/test_parity_seg.py): multi-level, lambda_adv 0.001 (main) and 0.0002 (auxiliary),
    discriminators of AdaptSegNet's architecture with Adam at 1e-4, betas (0.9, 0.99), source label
    0 and target 1, segmentation weights 1 and 0.1, AdaptSegNet's order of operations; poly decay
    over MAX_ITERS 250000, stopped at EARLY_STOP 120000 (``poly_span`` 25/12 of ``--steps``).
    """

    name = "advent"
    hparams = {**AdaptSegNet.hparams, "poly_span": POLY_SPAN}

    def disc_input(self, logits: torch.Tensor) -> torch.Tensor:
        return self_information(logits)
