"""FDA as a method: segmentation on Fourier-translated source images plus a robust target entropy."""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import SegmentationAlgorithm
from dabench.layers import seg_loss
from dabench.data import SEGMENTATION, Batch
from dabench.hparams import HParam, choice, log_uniform
from dabench_plugins.translators.fda import low_frequency_window


def robust_entropy(logits: torch.Tensor, eta: float) -> torch.Tensor:
    """FDA's Charbonnier-penalised entropy (eq. 3): per pixel the entropy over ln C, then
    (H^2 + 1e-8)^eta, mean over pixels; on the logits at the network's output resolution."""
    logp = F.log_softmax(logits.float(), 1)
    h = -(logp.exp() * logp).sum(1) / math.log(logits.shape[1])
    return (h.pow(2) + 1e-8).pow(eta).mean()


def source_to_target(src: torch.Tensor, tgt: torch.Tensor, b: int) -> torch.Tensor:
    """The authors' ``FDA_source_to_target`` (utils/__init__.py): per image and channel, the source
    amplitude in the four b x b corners of the unshifted spectrum replaced by the target's, the
    source phase kept, and the inverse taken as their ``torch.irfft(..., onesided=False)`` did: a
    complex-to-real transform of the first W // 2 + 1 columns, the others read as the conjugate
    mirror of these. The window is not conjugate-symmetric, so this is not the real part of the
    full inverse FFT (the fda translator's): on noise images they differ by up to 7.6 of 255 at
    32 x 64 pixels and 0.6 at 512 x 1024 (measured, b = 3 and 5)."""
    fs, ft = torch.fft.fft2(src), torch.fft.fft2(tgt)
    h, w = src.shape[-2:]
    amplitude = torch.where(low_frequency_window(h, w, b, src.device), ft.abs(), fs.abs())
    return torch.fft.irfft2(torch.polar(amplitude, fs.angle())[..., : w // 2 + 1], s=(h, w))


class FDASeg(SegmentationAlgorithm):
    """FDA (Yang & Soatto, CVPR 2020) as a training method: each step's source images take the low-
    frequency amplitude spectrum of the step's target images, the segmenter learns from them, and,
    after the first half of training, a robust entropy of the target predictions is minimised.

    As the authors' train.py (YanchaoYang/FDA; checked step for step in tests/test_parity_seg.py):
    the swap on 0-255 pixels (``source_to_target``) with a window of half-size floor(beta min(H, W))
    (``beta`` 0.01, their README's command; train.py's own default is 0.1; the paper's bands 0.01,
    0.05, 0.09), no clipping of the translated images; the loss CE(translated source, logits
    upsampled corner-aligned to the labels) + 0.005 x the Charbonnier entropy (eta 2) of the
    target's output-resolution logits. The entropy term is on from the step after switch2entropy
    50000 of a run that stops at num_steps_stop 100000 (``entropy_from`` 0.5 of ``--steps``, on
    where step > entropy_from x steps; their README's command uses 0); the poly decay spans
    num_steps 150000 (``poly_span`` 1.5 of ``--steps``). A single-output DeepLab (the auxiliary
    head, if the network has one, is not trained); SGD 2.5e-4, heads 10x. The entropy is over ln C
    where their code divides by 2.9444 (ln 19 to four places). Where the source and target images
    differ in size (the authors crop GTA5 to Cityscapes' 1024x512), the target images are resized
    to the source size for their spectra. As for AdaptSegNet, the authors' optimiser groups repeat
    backbone parameters (one entry per module containing them); dabench steps each once. The
    multi-band ensemble and self-training rounds of the paper are not part of this method (UDAS's
    self-training stage is).
    """

    name = "fda"
    task = SEGMENTATION
    hparams = {
        **SegmentationAlgorithm.hparams,
        "beta": HParam(0.01, choice([0.01, 0.05, 0.09]), "FDA window half-size as a fraction of min(H, W)"),
        "lambda_ent": HParam(0.005, log_uniform(-3, -1.5), "weight of the robust target entropy (entW)"),
        "eta": HParam(2.0, None, "Charbonnier exponent of the entropy (ita)"),
        "entropy_from": HParam(0.5, None, "the entropy term is on after this fraction of --steps (the authors' "
                               "switch2entropy 50000 of the 100000 steps they train; their README uses 0)"),
        "poly_span": HParam(1.5, None, "the poly decay's horizon as a multiple of --steps: the authors decay over "
                            "150000 iterations and stop at 100000 (1: decay to 0 at the end of the run)"),
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
        dtype = torch.promote_types(src_x.dtype, torch.float32)  # the FFT needs float32 at least
        pixels = source_to_target((src_x.to(dtype) + 1) * 127.5, (tgt_x[: len(src_x)].to(dtype) + 1) * 127.5, b)
        return (pixels / 127.5 - 1).to(src_x.dtype)  # the authors do not clip

    def set_rates(self, step: int) -> None:
        """The segmenter's poly-decayed rate at ``step``, over ``poly_span`` x ``--steps``."""
        self.poly(step, round(self.hp["poly_span"] * self.steps))

    def entropy_on(self, step: int) -> bool:
        """Whether the entropy term counts at ``step`` (the authors' ``i > switch2entropy``)."""
        return step > self.hp["entropy_from"] * self.steps

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.set_rates(step)
        parts = batch.labeled_parts()
        parts[0] = (self.translate(batch.src_x, batch.tgt_x), batch.src_y)
        seg = sum(seg_loss(self.segmenter(x)[0], y) for x, y in parts)  # seg_loss upsamples to the labels
        ent = robust_entropy(self.segmenter(batch.tgt_x)[0], self.hp["eta"])
        on = float(self.entropy_on(step))
        self.optimise(seg + on * self.hp["lambda_ent"] * ent, self.optims["seg"])
        return {"seg": seg.item(), "ent": ent.item(), "ent_on": on}

    def predict(self, x):
        return self.segmenter(x)[0]
