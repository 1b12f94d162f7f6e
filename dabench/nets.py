"""Small network helpers shared by backbone plugins."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dabench.errors import DabenchError


class Backbone(nn.Module):
    """A classification feature extractor in two parts, ``upper(lower(x))`` -> (N, out_features).

    ``lower`` ends on a feature map (N, C, H, W) half-way up the network; methods that act on
    intermediate features (SagNet's style randomisation) work between the two parts.
    """

    def __init__(self, lower: nn.Module, upper: nn.Module, out_features: int):
        super().__init__()
        self.lower, self.upper, self.out_features = lower, upper, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(x))


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict (``--pretrained PATH``); keys that do not fit are named, not ignored silently."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DabenchError(
            f"--pretrained: no file at {path}. Pass the path of a local PyTorch state dict "
            "(dabench never downloads weights)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DabenchError(f"--pretrained: {path} is not a readable PyTorch state dict ({exc}).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise DabenchError(
            f"--pretrained: none of the {len(state)} tensors in {path} match the backbone's parameter names and "
            f"shapes (e.g. the backbone expects '{next(iter(own))}'). Is it a checkpoint of this architecture?"
        )
    model.load_state_dict(usable, strict=False)
    missing = len(own) - len(usable)
    if missing:
        import warnings

        warnings.warn(f"--pretrained: {missing} of {len(own)} backbone tensors not in {path}; they keep their random init.")
