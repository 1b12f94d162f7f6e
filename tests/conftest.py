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
from dabench_plugins.datasets.cityscapes import PALETTE

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


@pytest.fixture()
def one_thread(_small_threads):
    """One thread for files of tiny networks (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    they gain nothing from a second, and on a loaded machine OpenMP's second thread made their steps
    10-15x slower (test_adaptsegnet: 0.34 s against 3.8 s a step; a CCSA parity test: 1.6 s against
    27 s of CPU; test_parity_udas: 10 s against 150 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


from dabench.algorithm import Algorithm  # noqa: E402
from dabench.registry import algorithms  # noqa: E402


@algorithms.register("toy-seg")
class ToySegmenter(Algorithm):
    """Test-only segmentation algorithm, to check that task mismatches are refused."""

    task = "segmentation"


# A tiny segmentation pair and network, for the segmentation path of the core ----------------
from torch import nn  # noqa: E402

from dabench.nets import SegNet  # noqa: E402
from dabench.registry import backbones  # noqa: E402

TOY_SEG_CLASSES = ["road", "sky", "car"]


def toy_scenes(n: int, h: int, w: int, shift: float, seed: int) -> TensorImages:
    """Sky above a random horizon, road below, one car box on the road; flat colours + noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, h, w, dtype=torch.long)
    for i in range(n):
        horizon = int(torch.randint(h // 4, h // 2, (1,), generator=g))
        labels[i, :horizon] = 1
        x0 = int(torch.randint(0, w - w // 4, (1,), generator=g))
        labels[i, horizon + 2 : horizon + 2 + h // 4, x0 : x0 + w // 4] = 2
    colours = torch.tensor([[0.4, 0.4, 0.4], [0.3, 0.5, 0.9], [0.8, 0.1, 0.1]]) + shift
    img = colours[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 3, h, w, generator=g)
    return TensorImages((img.clamp(0, 1) * 255).to(torch.uint8), labels)


@datasets.register("toyseg-src")
@plugin(task="segmentation", description="test-only toy segmentation source")
def toyseg_src(arg=None, *, root=None, image_size=None) -> Domain:
    return Domain("toyseg-src", "segmentation", TOY_SEG_CLASSES, toy_scenes(24, 64, 96, 0.0, 3), image_size=(96, 64))


@datasets.register("toyseg-tgt")
@plugin(task="segmentation", description="test-only toy segmentation target")
def toyseg_tgt(arg=None, *, root=None, image_size=None) -> Domain:
    return Domain("toyseg-tgt", "segmentation", TOY_SEG_CLASSES, toy_scenes(24, 32, 64, 0.15, 4), image_size=(64, 32),
                  colours={c: PALETTE[c] for c in TOY_SEG_CLASSES})  # Cityscapes' colours, as a street data set gives


class _ToyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.low = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.high = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        low = self.low(x)
        return low, self.high(low)


@backbones.register("toy-segnet")
@plugin(task="segmentation", description="test-only tiny segmenter with an auxiliary head")
def toy_segnet(arg=None, *, in_channels=3, image_size=None, pretrained=None, num_classes=3):
    return SegNet(_ToyEncoder(), nn.Conv2d(8, num_classes, 1), nn.Conv2d(8, num_classes, 1))
