"""Images per second per loader worker: decoding + resizing GTA5 frames from the originals and from
a prepared copy (``dabench datasets prepare``), and, where a GPU is present, AdaptSegNet
iterations per second on it with 0, 4 and 8 workers feeding it (GTA5 -> a generated Cityscapes
layout, at their default training sizes).

    python benchmarks/bench_loading.py                 # 24 generated frames, 1280x720 training size
    python benchmarks/bench_loading.py --frames 48 --image-size 512
    python benchmarks/bench_loading.py --data-root ~/data   # your GTA5 (its first --frames frames)

Without ``--data-root`` the frames are generated in a temporary GTA5 layout at GTA5's stored size
(1914x1052): the scikit-image photographs scaled up, with per-pixel noise so that the PNGs hold as
much detail as a rendered frame (about 3 MB each, like GTA5's), and palette labels of stripes. A
worker is one process with one thread, as a DataLoader worker is: the rate is measured in this
process with ``torch.set_num_threads(1)``, reading ``dataset[i]`` (decode, resize, label lookup)
for every frame, best of ``--repeats`` passes, the file cache warm.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dabench.segdata import prepared
from dabench.protocol import load_domain
from dabench_plugins.datasets.cityscapes import PALETTE

GTA5_STORED = (1914, 1052)


def photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def stripes(size: tuple[int, int]) -> np.ndarray:
    """A (height, width) label map of seven vertical stripes of Cityscapes label ids."""
    w, h = size
    return np.repeat(np.array([7, 8, 11, 21, 23, 24, 26])[(np.arange(w) * 7) // w][None], h, 0).astype(np.uint8)


def make_frames(root: Path, n: int) -> None:
    pictures = photos()
    rng = np.random.default_rng(0)
    colours = [c for i in range(256) for c in list(PALETTE.values())[i % len(PALETTE)]]
    for i in range(n):
        big = Image.fromarray(pictures[i % len(pictures)]).resize(GTA5_STORED, Image.BICUBIC)
        pixels = np.asarray(big).astype(np.int16) + rng.integers(-12, 13, (*GTA5_STORED[::-1], 3))
        (root / "gta5" / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / "gta5" / "images" / f"{i:05d}.png")
        label = Image.fromarray(stripes(GTA5_STORED), "P")
        label.putpalette(colours)
        (root / "gta5" / "labels").mkdir(parents=True, exist_ok=True)
        label.save(root / "gta5" / "labels" / f"{i:05d}.png")


CITYSCAPES_STORED = (2048, 1024)


def make_cityscapes(root: Path, n: int) -> None:
    """A Cityscapes layout for the GPU check's target (a run may not adapt GTA5 to itself): ``n``
    frames a split, the same photographs at Cityscapes' stored 2048x1024, grey labelIds of stripes."""
    pictures, ids = photos(), stripes(CITYSCAPES_STORED)
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        images, labels = (root / "cityscapes" / kind / split / city for kind in ("leftImg8bit", "gtFine"))
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            Image.fromarray(pictures[i % len(pictures)]).resize(CITYSCAPES_STORED, Image.BICUBIC).save(
                images / f"{stem}_leftImg8bit.png")
            Image.fromarray(ids, "L").save(labels / f"{stem}_gtFine_labelIds.png")


def rate(ds, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        best = min(best, time.perf_counter() - t)
    return len(ds) / best


def gpu_iterations(root: Path, workers: list[int], steps: int, device: str = "cuda") -> dict[int, float]:
    """AdaptSegNet iterations per second on the GPU, GTA5 -> Cityscapes at their default sizes
    (1280x720, 1024x512), both read from prepared copies of generated frames, with each number of
    DataLoader workers; the one evaluation (a few Cityscapes val frames) is in the time."""
    from dabench.runner import RunConfig, run

    out = {}
    for w in workers:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = RunConfig(algo="adaptsegnet", src="gta5", tgt="cityscapes", data_root=str(root), steps=steps,
                            eval_every=steps, out=tmp, workers=w, precision="bf16", device=device)
            t = time.perf_counter()
            run(cfg)
            out[w] = steps / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--image-size", type=int, default=720, help="training height (GTA5's default: 720)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data-root", default=None, help="read your GTA5 instead of generated frames")
    ap.add_argument("--gpu-steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    tmp = tempfile.TemporaryDirectory(prefix="dabench-bench-loading-")
    root = Path(tmp.name)
    if args.data_root:  # the first frames of the user's copy, linked into a small GTA5 layout
        src = Path(args.data_root).expanduser() / "gta5"
        for sub in ("images", "labels"):
            (root / "gta5" / sub).mkdir(parents=True)
            for f in sorted((src / sub).glob("*.png"))[: args.frames]:
                (root / "gta5" / sub / f.name).symlink_to(f)
    else:
        make_frames(root, args.frames)
    original = load_domain("gta5", root, args.image_size, prepared=False)
    rates, sizes = {"original": rate(original.train, args.repeats)}, {}
    sizes["original"] = np.mean([p.stat().st_size for p in (root / "gta5" / "images").iterdir()]) / 2**20
    for level in (6, 0):  # zlib's default level, then dabench's (stored): the copy the GPU check reads
        t = time.perf_counter()
        prepared.prepare(original, root, workers=1, compression=level)
        prepare_s = time.perf_counter() - t
        copy = load_domain("gta5", root, args.image_size)
        assert "prepared_copy" in copy.info
        rates[f"prepared, PNG level {level}"] = rate(copy.train, args.repeats)
        sizes[f"prepared, PNG level {level}"] = np.mean([Path(a).stat().st_size for a, _ in copy.train.pairs]) / 2**20
    result = {
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "frames": args.frames,
        "stored_size": "x".join(map(str, GTA5_STORED)) if not args.data_root else "as stored",
        "training_size": "x".join(map(str, original.image_size)),
        "mean_image_MB": {k: round(float(v), 2) for k, v in sizes.items()},
        "images_per_s_per_worker": {k: round(v, 2) for k, v in rates.items()},
        "prepare_s_per_image_one_process": round(prepare_s / args.frames, 3),
    }
    if torch.cuda.is_available():
        result["device"] = torch.cuda.get_device_name()
        json.dump(result, sys.stderr)  # the CPU numbers, should the GPU part not finish
        if args.image_size != 720:
            prepared.prepare(load_domain("gta5", root, 720, prepared=False), root, workers=1)
        make_cityscapes(root, 4)
        prepared.prepare(load_domain("cityscapes", root, None, prepared=False), root, workers=1)
        result["adaptsegnet_it_per_s_by_workers"] = gpu_iterations(root, [0, 4, 8], args.gpu_steps)
    json.dump(result, sys.stdout, indent=1)
    print()
    tmp.cleanup()


if __name__ == "__main__":
    main()
