"""Any timm image model as a feature extractor: ``--backbone timm:resnet50``."""
from __future__ import annotations

import difflib

import torch
from torch import nn

from dabench.errors import DabenchError
from dabench.nets import IMAGENET, Backbone, load_weights, timm_model
from dabench.registry import plugin


class _Features(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class _PooledHead(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = [model]  # not a submodule: its head holds no parameters after num_classes=0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model[0].forward_head(x, pre_logits=True)


@plugin("timm", task="classification", description="any timm model by name, e.g. timm:resnet50 (random init unless --pretrained PATH|imagenet)")
def timm_backbone(arg: str | None = None, *, in_channels: int = 3, image_size: int = 224, pretrained: str | None = None,
              num_classes: int | None = None) -> Backbone:
    """A timm model without its classifier; ``lower`` = ``forward_features`` (the last feature
    map), ``upper`` = timm's pooling head. Weights: random, a local file (``--pretrained PATH``), or
    timm's ImageNet weights (``--pretrained imagenet``, downloaded once by timm where online)."""
    import timm

    if not arg:
        raise DabenchError("The timm backbone needs a model name: --backbone timm:resnet50 (see timm.list_models()).")
    if arg not in timm.list_models():
        close = difflib.get_close_matches(arg, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise DabenchError(f"timm has no model '{arg}'.{hint} List them with python -c 'import timm; print(timm.list_models())'.")
    model = timm_model(arg, pretrained, num_classes=0, in_chans=in_channels)
    if pretrained and pretrained != IMAGENET:
        load_weights(model, pretrained)
    return Backbone(_Features(model), _PooledHead(model), model.num_features)
