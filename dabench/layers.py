"""Losses and layers the algorithm plugins share: a pairwise discrepancy average, the logit
upsampling and per-pixel loss of the segmentation methods, and the MLP heads of the classification
ones. (``dabench.algorithm`` re-exports them: the path plugins written for dabench 0.1 import.)"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.tasks import IGNORE_INDEX


def pairwise_mean(groups: list[torch.Tensor], term) -> torch.Tensor:
    """``term(a, b)`` averaged over every pair of groups (0 with fewer than two groups)."""
    pairs = [(a, b) for i, a in enumerate(groups) for b in groups[i + 1:]]
    if not pairs:
        return groups[0].new_zeros(())
    return sum(term(a, b) for a, b in pairs) / len(pairs)


def spectral_penalty(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Batch spectral penalisation (BSP, Chen et al. 2019, eq. 4 with k = 1): the squared largest
    singular value of the source features plus that of the target features (thuml's ``BSP``)."""
    return torch.linalg.svdvals(src.flatten(1))[0] ** 2 + torch.linalg.svdvals(tgt.flatten(1))[0] ** 2


def upsample(logits: torch.Tensor, size, align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of (N, K, h, w) logits to ``size`` (H, W); identity when already there.
    Corner-aligned (``align_corners=True``), as the AdaptSegNet, ADVENT and FDA code upsample their
    logits for the loss, the discriminators and evaluation; images are resized with False."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def level_outputs(segmenter, x: torch.Tensor, aux: bool = True) -> dict[str, torch.Tensor]:
    """A segmenter's main (and, with ``aux`` and an auxiliary head, auxiliary) logits, upsampled to
    the input size: the levels the output-space methods (AdaptSegNet, ADVENT) adapt."""
    main, low = segmenter(x)
    out = {"main": upsample(main, x.shape[-2:])}
    if aux and low is not None:
        out["aux"] = upsample(low, x.shape[-2:])
    return out


def seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy at label resolution (logits upsampled first, as AdaptSegNet does),
    mean over the pixels that are not ignored (255); 0 when every pixel is ignored (a pseudo-label
    map with no confident pixel), where PyTorch's mean would be 0/0."""
    total = F.cross_entropy(upsample(logits, labels.shape[-2:]).float(), labels, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with ReLU (and optional dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers)
