"""The base class of translator plugins: input-level adaptation, source images made to look
like target images (CycleGAN, FDA) before a segmenter or classifier trains on them.

A translator is a ``torch.nn.Module`` with a declared hyperparameter space. A trainable one
(``trainable = True``, e.g. CycleGAN) learns from unpaired source and target batches through
``update(src_x, tgt_x, step)``, owning its optimisers in ``self.optims`` so the trainer can
checkpoint them; a fixed one (FDA) only translates. Images are floats in [-1, 1], (N, C, H, W).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from dabench.hparams import HParam


class Translator(nn.Module):
    """Subclass this. Set ``trainable``, declare ``hparams``, write ``translate`` (and ``update``)."""

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
        ``tgt_x`` holds as many target images of the same size (FDA takes their spectra; a
        learned translator may ignore them)."""
        raise NotImplementedError
