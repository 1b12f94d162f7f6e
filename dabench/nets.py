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

    ``lower_features``: the length of ``lower``'s output flattened, when the network's paper attaches
    heads there (the DANN paper's digit CNN: its domain classifier reads the 48x4x4 = 768 convolutional
    features); None when the feature vector is the last layer (timm models), so heads read ``forward``.
    """

    def __init__(self, lower: nn.Module, upper: nn.Module, out_features: int, lower_features: int | None = None):
        super().__init__()
        self.lower, self.upper, self.out_features = lower, upper, out_features
        self.lower_features = lower_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(x))


class SegNet(nn.Module):
    """A segmentation network: ``forward(x)`` -> ``(main, aux)`` logits, each (N, K, h, w) at the
    network's own output stride (algorithms upsample them), ``aux`` None when there is no
    auxiliary head.

    ``encoder(x)`` returns two feature maps ``(low, high)``; ``head`` maps ``high`` to the main
    logits and ``aux_head`` (optional) maps ``low`` to the auxiliary ones, as DeepLabv2's two ASPP
    classifiers on layer3 and layer4 do for multi-level methods (AdaptSegNet).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, aux_head: nn.Module | None = None):
        super().__init__()
        self.encoder, self.head, self.aux_head = encoder, head, aux_head

    @property
    def has_aux(self) -> bool:
        return self.aux_head is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        low, high = self.encoder(x)
        return self.head(high), (self.aux_head(low) if self.aux_head is not None else None)

    def param_groups(self, head_lr_mult: float = 10.0) -> list[dict]:
        """Trainable parameters: the encoder at the base rate, the heads at ``head_lr_mult`` times it
        (DeepLab's 10x for freshly initialised classifiers). Frozen parameters are left out."""
        heads = [p for m in (self.head, self.aux_head) if m is not None for p in m.parameters() if p.requires_grad]
        return [{"params": [p for p in self.encoder.parameters() if p.requires_grad], "lr_mult": 1.0},
                {"params": heads, "lr_mult": head_lr_mult}]


IMAGENET = "imagenet"  # --pretrained imagenet: timm's ImageNet weights (downloaded once by timm, then cached)


def timm_model(name: str, pretrained: str | None, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)``, with timm's ImageNet weights when ``pretrained`` is
    "imagenet". timm downloads them on first use where the machine is online and reads its cache
    afterwards; offline with no cache, the error names the cache folder and the local-file way."""
    import os

    import timm

    if pretrained != IMAGENET:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # timm / huggingface_hub raise several kinds when offline
        hub = os.environ.get("HF_HUB_CACHE") or str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")
        raise DabenchError(
            f"--pretrained imagenet: timm could not load the ImageNet weights of '{name}' ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no message'}). timm downloads them once on a machine that "
            f"is online and then reads them from its cache, {hub}. Offline: copy that cache folder from an online "
            f"machine, or save the weights there and pass the file: --pretrained PATH (a timm state dict of {name})."
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A local state dict (``--pretrained PATH``), unwrapped from a ``{"state_dict": ...}`` checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DabenchError(
            f"--pretrained: no file at {path}. Pass the path of a local PyTorch state dict, or "
            f"--pretrained {IMAGENET} for timm's ImageNet weights (a timm backbone)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DabenchError(f"--pretrained: {path} is not a readable PyTorch state dict ({exc}).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DabenchError(f"--pretrained: {path} holds a {type(state).__name__}, not a state dict.")
    return state


def load_weights(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load a local state dict (``--pretrained PATH``; ``state``: that file already read); keys that do
    not fit are named, not ignored silently."""
    state = read_state_dict(path) if state is None else state
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
