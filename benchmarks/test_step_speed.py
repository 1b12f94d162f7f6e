"""Speed of one training step per algorithm and of one evaluation pass (pytest-benchmark).

    pytest benchmarks/ --benchmark-columns=mean,stddev,rounds

Runs on CUDA when there is a GPU (set DABENCH_BENCH_DEVICE=cpu to force the CPU). Kept out of
the test suite: timings belong here, not in asserts.
"""
from __future__ import annotations

import os

import pytest
import torch

from dabench.data import Batch, Labeled
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.trainer import evaluate

DEVICE = torch.device(os.environ.get("DABENCH_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
BATCH = 64


def make(algo: str):
    torch.manual_seed(0)
    cls = algorithms.get(algo)
    net = backbones.get("digit-cnn")(None, image_size=28)
    return cls(net, 10, defaults(cls.hparams), steps=1000).to(DEVICE)


def batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(BATCH) % 10
    lab = Labeled(torch.randn(16, 3, 28, 28, generator=g), torch.arange(16) % 10)
    return Batch(torch.randn(BATCH, 3, 28, 28, generator=g), y, torch.randn(BATCH, 3, 28, 28, generator=g), lab).to(DEVICE)


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("algo", ["erm", "oracle", "dann", "ccsa", "sagnet"])
def test_train_step(benchmark, algo):
    model, b = make(algo), batch()
    counter = iter(range(10**9))

    def step():
        model.update(b, next(counter))
        sync()

    benchmark.extra_info["device"] = str(DEVICE)
    benchmark(step)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 28, 28, generator=g), torch.arange(n) % 10

    def __len__(self):
        return len(self.y)

    def get_batch(self, idx):
        return self.x[idx], self.y[idx]


def test_evaluation_pass_1024_images(benchmark):
    model, data = make("erm"), _Images(1024)
    benchmark.extra_info["device"] = str(DEVICE)
    benchmark(lambda: evaluate(model, data, "classification", 10, DEVICE, "fp32"))
