"""No translation: the source images as they are, the baseline of input-level adaptation."""
from __future__ import annotations

import torch

from dabench.translator import Translator


class NoTranslation(Translator):
    """No translation: source images unchanged (the baseline a translator must beat)."""

    name = "none"

    def translate(self, src_x: torch.Tensor, tgt_x: torch.Tensor) -> torch.Tensor:
        return src_x
