"""The base class of translator plugins: input-level adaptation, source images made to look
like target images (CycleGAN, FDA) before a segmenter or classifier trains on them.

A translator is a ``torch.nn.Module`` with a declared hyperparameter space. A trainable one
(``trainable = True``, e.g. CycleGAN) learns from unpaired source and target batches through
``update(src_x, tgt_x, step)``, owning its optimisers in ``self.optims`` so the trainer can
checkpoint them; a fixed one (FDA) only translates. Images are floats in [-1, 1], (N, C, H, W).
Each domain keeps its own aspect: ``update`` gets both batches at their own sizes, and
``translate`` gets target images brought to the source size by ``cover`` (scaled, then
centre-cropped; never stretched).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dabench.hparams import HParam


def cover(x: torch.Tensor, size) -> torch.Tensor:
    """Images (N, C, h, w) scaled at their own aspect just enough to cover ``size`` (H, W), then
    centre-cropped to it: a Cityscapes 1024x512 frame for a 1280x720 GTA5 one is scaled to 1440x720
    and cropped, where a plain resize would stretch it."""
    (h, w), (height, width) = x.shape[-2:], tuple(size)
    if (h, w) == (height, width):
        return x
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (sh - height) // 2, (sw - width) // 2
    return x[..., top : top + height, left : left + width]


class Translator(nn.Module):
    """Subclass this. Set ``trainable``, declare ``hparams``, write ``translate`` (and ``update``)."""

    name: ClassVar[str | None] = None  # the name it is registered under (its entry point's), said here too
    trainable: ClassVar[bool] = False
    hparams: ClassVar[dict[str, HParam]] = {}

    def __init__(self, hparams: dict[str, Any], steps: int):
        super().__init__()
        self.hp = dict(hparams)
        self.steps = steps  # training steps of a trainable translator (its schedules need them)
        self.optims: dict[str, torch.optim.Optimizer] = {}

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def update(self, src_x: torch.Tensor, tgt_x: torch.Tensor, step: int) -> dict[str, float]:
        """One training step on unpaired batches; returns the losses to log."""
        raise NotImplementedError(f"{type(self).__name__} is not trainable")

    def translate(self, src_x: torch.Tensor, tgt_x: torch.Tensor) -> torch.Tensor:
        """Source images in the look of the target: same shape as ``src_x``, values in [-1, 1].
        ``tgt_x`` holds as many target images, brought to the source size by ``cover`` (FDA takes
        their spectra; a learned translator may ignore them)."""
        raise NotImplementedError
