"""FDA as a method: segmentation on Fourier-translated source images plus a robust target entropy."""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import Algorithm, seg_loss
from dabench.data import SEGMENTATION, Batch
from dabench.hparams import HParam, choice, log_uniform
from dabench_plugins.translators.fda import translate_pixels


def robust_entropy(logits: torch.Tensor, eta: float) -> torch.Tensor:
    """FDA's Charbonnier-penalised entropy (eq. 3): per pixel the entropy over ln C, then
    (H^2 + 1e-8)^eta, mean over pixels; on the logits at the network's output resolution."""
    logp = F.log_softmax(logits.float(), 1)
    h = -(logp.exp() * logp).sum(1) / math.log(logits.shape[1])
    return (h.pow(2) + 1e-8).pow(eta).mean()


class FDASeg(Algorithm):
    """FDA (Yang & Soatto, CVPR 2020) as a training method: each step's source images take the low-
    frequency amplitude spectrum of the step's target images, the segmenter learns from them, and,
    after the first third of training, a robust entropy of the target predictions is minimised.

    As the authors' train.py: the swap on 0-255 pixels with a window of half-size
    floor(beta min(H, W)) (``beta`` 0.01, their README's setting; the paper's bands 0.01, 0.05,
    0.09), no clipping of the translated images; the loss CE(translated source) + 0.005 x the
    Charbonnier entropy (eta 2) of the target's output-resolution logits, switched on after 50k of
    150k steps (``entropy_from`` = 1/3 of ``--steps``); a single-output DeepLab (the auxiliary head,
    if the network has one, is not trained); SGD with poly decay from 2.5e-4. Where the source and
    target images differ in size (the authors crop GTA5 to Cityscapes' 1024x512), the target images
    are resized to the source size for their spectra. The multi-band ensemble and self-training
    rounds of the paper are not part of this method (UDAS's self-training stage is).
    """

    task = SEGMENTATION
    hparams = {
        **Algorithm.segmentation_hparams,
        "beta": HParam(0.01, choice([0.01, 0.05, 0.09]), "FDA window half-size as a fraction of min(H, W)"),
        "lambda_ent": HParam(0.005, log_uniform(-3, -1.5), "weight of the robust target entropy (entW)"),
        "eta": HParam(2.0, None, "Charbonnier exponent of the entropy (ita)"),
        "entropy_from": HParam(1 / 3, None, "fraction of --steps after which the entropy term is on (50k of 150k)"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.segmenter = backbone
        self.optims["seg"] = self.seg_sgd(backbone)
        self._warned = False

    def translate(self, src_x: torch.Tensor, tgt_x: torch.Tensor) -> torch.Tensor:
        """The source images with the paired target images' low-frequency amplitude, in [-1, 1] units."""
        if tgt_x.shape[-2:] != src_x.shape[-2:]:
            tgt_x = F.interpolate(tgt_x.float(), size=src_x.shape[-2:], mode="bilinear", align_corners=False)
        if len(tgt_x) < len(src_x):  # labelled target images lengthen nothing here; pair cyclically
            tgt_x = tgt_x.repeat(math.ceil(len(src_x) / len(tgt_x)), 1, 1, 1)[: len(src_x)]
        b = math.floor(min(src_x.shape[-2:]) * self.hp["beta"])
        if b == 0:
            if not self._warned:
                warnings.warn(f"fda: beta {self.hp['beta']} on {min(src_x.shape[-2:])}-px images gives an empty "
                              f"window, so nothing is translated; use -H beta={1 / min(src_x.shape[-2:]):.3g} or more.",
                              stacklevel=2)
                self._warned = True
            return src_x
        return translate_pixels(src_x, tgt_x[: len(src_x)], b, clip=False)  # the authors do not clip

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.poly(step)
        parts = self.labeled_parts(batch)
        parts[0] = (self.translate(batch.src_x, batch.tgt_x), batch.src_y)
        seg = sum(seg_loss(self.segmenter(x)[0], y) for x, y in parts)  # seg_loss upsamples to the labels
        ent = robust_entropy(self.segmenter(batch.tgt_x)[0], self.hp["eta"])
        on = float(step >= self.hp["entropy_from"] * self.steps)
        self.step(seg + on * self.hp["lambda_ent"] * ent, self.optims["seg"])
        return {"seg": seg.item(), "ent": ent.item(), "ent_on": on}

    def predict(self, x):
        return self.segmenter(x)[0]
