"""What every parity test does: the same batches and random state for a plugin's ``update`` and a
transcription's step, and a comparison of losses and parameters after each step."""
from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch

from dabench.data import Batch

# float32 on the CPU: the two sides compute the same sums in the same order where they can, but a
# reordered reduction (a sum of two means against one mean over the joint batch, a fused kernel)
# moves the last bits; 20 steps of SGD carry that through the weights. 1e-5 relative is the bar the
# issue names; a test that needs looser says why.
RTOL = 1e-5
ATOL = 1e-6


def digit_batches(steps: int, batch: int = 16, size: int = 28, classes: int = 10, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> list[Batch]:
    """``steps`` batches of random 3-channel digit-sized images in [-1, 1] (what the digit pairs
    feed the network), source labels cycling through the classes so every class is present;
    ``dtype`` float64 for a parity test run in double precision (the same draws, widened)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        src = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
        tgt = torch.rand(batch, 3, size, size, generator=g) * 2 - 1 + 0.3  # a shifted target
        y = torch.randperm(batch, generator=g) % classes
        out.append(Batch(src.to(dtype), y, tgt.to(dtype)))
    return out


def twin(module: torch.nn.Module) -> torch.nn.Module:
    """An independent copy (same weights, own gradients) for the transcription to train."""
    return copy.deepcopy(module)


def run_side_by_side(plugin_step: Callable[[int, Batch], dict[str, float]],
                     reference_step: Callable[[int, Batch], dict[str, float]],
                     batches: Iterable[Batch], seed: int = 1234) -> list[tuple[dict, dict]]:
    """Each batch through both sides, the global RNG reset to the same state before each side's
    step (dropout, random permutations and rotations draw the same numbers)."""
    logs = []
    for i, batch in enumerate(batches):
        torch.manual_seed(seed + i)
        a = plugin_step(i, batch)
        torch.manual_seed(seed + i)
        b = reference_step(i, batch)
        logs.append((a, b))
    return logs


def assert_losses_match(logs: list[tuple[dict, dict]], keys: dict[str, str], rtol: float = RTOL,
                        atol: float = ATOL) -> None:
    """``keys`` maps a plugin log name to the transcription's name for the same loss."""
    for step, (a, b) in enumerate(logs):
        for ours, theirs in keys.items():
            x, y = float(a[ours]), float(b[theirs])
            assert abs(x - y) <= atol + rtol * abs(y), f"step {step}: {ours} {x!r} != reference {theirs} {y!r}"


def assert_params_match(ours: Iterable[torch.Tensor], theirs: Iterable[torch.Tensor], rtol: float = RTOL,
                        atol: float = ATOL, what: str = "parameters") -> None:
    ours, theirs = list(ours), list(theirs)
    assert len(ours) == len(theirs), f"{what}: {len(ours)} tensors against the reference's {len(theirs)}"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"{what}[{i}]: shape {tuple(a.shape)} != {tuple(b.shape)}"
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol, msg=lambda m: f"{what}[{i}]: {m}")
