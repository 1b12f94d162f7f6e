"""Shared test fixtures: a tiny two-domain classification problem made on the fly.

``toy-src`` and ``toy-tgt`` are 4-class, 16x16 images (a bright quadrant per class); the target
is shifted in colour and noise so there is something to adapt. They register through the
same decorator a plugin uses, so the whole CLI works on them in-process (click's CliRunner).
"""
from __future__ import annotations

import pytest
import torch

from dabench.data import Domain, TensorImages
from dabench.registry import datasets, plugin

TOY_CLASSES = ["tl", "tr", "bl", "br"]


def toy_images(n: int, shift: float, seed: int) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    img = torch.rand(n, 3, 16, 16, generator=g) * 0.3
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 2)
        img[i, :, r * 8 : r * 8 + 8, q * 8 : q * 8 + 8] += 0.6
    img[:, 0] += shift
    img = img + shift * torch.rand(n, 1, 16, 16, generator=g)
    return TensorImages((img.clamp(0, 1) * 255).to(torch.uint8), labels)


@datasets.register("toy-src")
@plugin(task="classification", description="test-only toy source")
def toy_src(arg=None, *, root=None, image_size=None) -> Domain:
    return Domain("toy-src", "classification", TOY_CLASSES, toy_images(160, 0.0, 1), image_size=16)


@datasets.register("toy-tgt")
@plugin(task="classification", description="test-only toy target")
def toy_tgt(arg=None, *, root=None, image_size=None) -> Domain:
    return Domain("toy-tgt", "classification", TOY_CLASSES, toy_images(120, 0.4, 2), image_size=16)


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(2)
    yield


from dabench.algorithm import Algorithm  # noqa: E402
from dabench.registry import algorithms  # noqa: E402


@algorithms.register("toy-seg")
class ToySegmenter(Algorithm):
    """Test-only segmentation algorithm, to check that task mismatches are refused."""

    task = "segmentation"
