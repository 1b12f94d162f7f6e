"""ERM against DANN on syndigits -> uci-digits with the source's appearance gap taken away, one part
at a time: what is left when colour, polarity and the sensor match the target's (issue 9).

Each variant re-renders syndigits from its own glyph masks (the same fonts, poses and seed as the
shipped data set) and trains ``erm`` and ``dann`` at their defaults on it against the protocol's
uci-digits splits, through ``dabench.fit`` (the same runner, records and selection as ``dabench
run``). Variants:

- ``shipped``: syndigits as it ships (colour, texture, either polarity, 28x28 renderings);
- ``grey``: the white digit on black, no colour or texture;
- ``light-on-dark``: colour and texture, each image inverted where the digit is darker than its
  background, so the digit is always the lighter part (as in the target);
- ``sensor``: ``grey`` through the target's sensor: 8x8, 17 grey levels, then bilinear back up;
- ``mean-image``: ``shipped``, with the mean image subtracted from every input (the DANN paper's
  only preprocessing), for erm and dann alike: the mean over all of syndigits' and uci-digits'
  images (their pixels; no label is read), so it is a transductive diagnostic, not a protocol.

Prints one line per run (target-test accuracy at the source-val step and at the last step) and a
markdown table of means and standard deviations. Runs go to --out (default runs-renderings/): a
finished run is not trained again, so an interrupted study resumes.

    OMP_NUM_THREADS=1 python benchmarks/bench_dann_renderings.py --seeds 3
    python benchmarks/bench_dann_renderings.py --variants grey,sensor --seeds 5 --steps 2000

Each run takes 70-140 s on one core (2,000 steps); the default study (5 variants x 2 algorithms x 3
seeds) about an hour at one thread. benchmarks/RESULTS.md has the numbers.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import dabench
import dabench.nets
from dabench.data import CLASSIFICATION, Domain, TensorImages, to_unit_range
from dabench.registry import datasets
from dabench.results.selection import choose
from dabench_plugins.datasets import digits

VARIANTS = ("shipped", "grey", "light-on-dark", "sensor", "mean-image")
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def light_on_dark(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Invert each image whose digit (mask-weighted mean luma) is darker than its background."""
    luma, m = (images.float() * LUMA).sum(1, keepdim=True), masks.float().unsqueeze(1) / 255
    digit = (luma * m).sum((2, 3)) / m.sum((2, 3))
    back = (luma * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3))
    return torch.where((digit < back).view(-1, 1, 1, 1), 255 - images, images)


def through_sensor(masks: torch.Tensor, size: int) -> torch.Tensor:
    """White-on-black digits as the UCI scanner saw them: averaged to 8x8, 17 levels (0-16), back up."""
    x = F.interpolate(masks.float().unsqueeze(1), size=(8, 8), mode="bilinear", antialias=True)
    return digits.to_rgb_uint8((x / 255 * 16).round() * 255 / 16, size)


def source(variant: str, n: int = 10_000, size: int = digits.DEFAULT_SIZE) -> str | Domain:
    """The source domain of a variant: the shipped name, or syndigits re-rendered."""
    if variant in ("shipped", "mean-image"):
        return "syndigits"
    rng = np.random.default_rng(digits.SEED)  # draws as render_syndigits does: the same masks and colours
    labels = np.arange(n) % 10
    masks = digits._masks(labels, digits.digit_fonts(), size, rng)
    grey = torch.from_numpy(masks)
    if variant == "grey":
        images = grey.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    elif variant == "light-on-dark":
        images = light_on_dark(digits.paint(masks, rng), grey)
    else:
        images = through_sensor(grey, size)
    return Domain(f"syndigits-{variant}", CLASSIFICATION, digits.CLASSES, TensorImages(images, torch.from_numpy(labels)),
                  None, size)


class SubtractMean(nn.Module):
    def __init__(self, mean: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


def subtract_mean_image() -> None:
    """Make every Backbone built from now on subtract the mean [-1, 1] image of syndigits' and
    uci-digits' images from its input (this process only)."""
    images = [datasets.get(name)(None).train.images for name in ("syndigits", "uci-digits")]
    mean = to_unit_range(torch.cat(images)).mean(0, keepdim=True)
    build = dabench.nets.Backbone.__init__

    def with_mean(self, lower, upper, out_features, lower_features=None):
        build(self, nn.Sequential(SubtractMean(mean.clone()), lower), upper, out_features, lower_features)

    dabench.nets.Backbone.__init__ = with_mean


def accuracy(record: dict) -> float:
    return 100 * record["tgt-test"]["acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--algos", default="erm,dann")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default="runs-renderings")
    args = ap.parse_args()
    variants = args.variants.split(",")
    if unknown := sorted(set(variants) - set(VARIANTS)):
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if "mean-image" in variants and len(variants) > 1:
        ap.error("mean-image changes every network this process builds: run it on its own (--variants mean-image)")
    if variants == ["mean-image"]:
        subtract_mean_image()
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for variant in variants:
        src = source(variant)
        for algo in args.algos.split(","):
            for seed in range(args.seeds):
                run = dabench.fit(algo, src=src, tgt="uci-digits", out=f"{args.out}/{variant}", progress=False,
                                  seed=seed, steps=args.steps)
                records = [r for r in run.records if "tgt-test" in r]
                pair = (accuracy(choose("source-val", records, "acc")), accuracy(records[-1]))
                results.setdefault((variant, algo), []).append(pair)
                print(f"{variant} {algo} seed {seed}: source-val {pair[0]:.1f}, last {pair[1]:.1f}", flush=True)
    print("\n| source | algorithm | seeds | source-val | last |\n|---|---|---:|---:|---:|")
    for (variant, algo), pairs in results.items():
        cells = []
        for values in zip(*pairs):
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        print(f"| {variant} | {algo} | {len(pairs)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
