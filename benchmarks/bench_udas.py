"""Speed of each UDAS stage: one iteration of CycleGAN training, of adaptation (multi-level
adversarial + KL + Domain CutMix with AutoAugment), of pseudo-labelling (a batch of target images
in K views, one forward pass) and of self-training.

    python benchmarks/bench_udas.py                        # full size on a GPU, small on a CPU
    python benchmarks/bench_udas.py --size small --device cpu --precision fp32

Full size: DeepLabv2-ResNet101, 19 classes, batch 1, a 1280x720 source and a 1024x512 target image,
CycleGAN at its paper widths (ngf 64, 9 blocks) trained on 256x256 crops of images loaded at 286
(the reference's preprocessing, as dabench's translate stage runs it; until dabench 0.1 it trained
on whole source-size frames); pseudo-labelling takes 2 target images x K=3 views. Small size:
resnet18 and 256x128 images for both domains, CycleGAN as at full size (so its crops are larger
than these images). Timings are medians of one-by-one
calls after warm-up (see bench_segmentation.py); peak memory as there.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from bench_segmentation import NUM_CLASSES, SIZES, Size, timed
from dabench.algorithm import Stage
from dabench.data import SEGMENTATION, Batch, Labeled
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.algorithm import autocast
from dabench_plugins.algorithms.udas import pseudo_labels

STAGES = ["translate", "adapt", "pseudo-label", "self-train"]


def build(size: Size, device: torch.device):
    cls = algorithms.get("udas")
    net = backbones.get("deeplabv2")(size.encoder, num_classes=NUM_CLASSES)
    hp = defaults(cls.space(SEGMENTATION)) | {"translator": "cyclegan"}
    return cls(net, NUM_CLASSES, hp, 10**6).to(device)


def batch(size: Size, device: torch.device, n_views_images: int = 2) -> tuple[Batch, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    src_y = torch.randint(0, NUM_CLASSES, (1, *size.src), generator=g)
    tgt_y = torch.randint(0, NUM_CLASSES, (1, *size.tgt), generator=g)
    b = Batch(torch.rand(1, 3, *size.src, generator=g) * 2 - 1, src_y, torch.rand(1, 3, *size.tgt, generator=g) * 2 - 1,
              Labeled(torch.rand(1, 3, *size.tgt, generator=g) * 2 - 1, tgt_y),
              torch.randint(0, NUM_CLASSES, (1, *size.tgt), generator=g))
    return b.to(device), torch.rand(n_views_images, 3, *size.tgt, generator=g).to(device) * 2 - 1


def measure(size: Size, stage: str, device: torch.device, precision: str, warmup: int, iters: int) -> dict:
    torch.manual_seed(0)
    algo = build(size, device)
    algo.train()
    b, views_x = batch(size, device)
    step = iter(range(10**9))
    if stage == "pseudo-label":
        gen = torch.Generator().manual_seed(0)

        def fn():
            with torch.no_grad(), autocast(device, precision):
                pseudo_labels(lambda v: algo.teacher(v)[0], views_x, algo.hp["views"], algo.hp["threshold"], gen)
    else:
        algo.stage = Stage(stage if stage != "self-train" else "self-train 1", 1)

        def fn():
            with autocast(device, precision):
                algo.update(b, next(step))

    flops, seconds, memory = timed(fn, device, warmup, iters)
    return {"stage": stage, "s": seconds, "mem": memory, "flops": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: both on a GPU, fp32 on a CPU")
    parser.add_argument("--stage", choices=STAGES, default=None, help="one stage (a fresh process runs each by default)")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = SIZES[args.size or ("full" if device.type == "cuda" else "small")]
    precisions = [args.precision] if args.precision else (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    if args.stage:  # the child process: one measurement, as JSON
        print(json.dumps(measure(size, args.stage, device, precisions[0], size.warmup, size.iters)))
        return
    import subprocess

    rows = []
    for precision in precisions:
        for stage in STAGES:
            cmd = [sys.executable, __file__, "--size", args.size or ("full" if device.type == "cuda" else "small"),
                   "--device", args.device, "--precision", precision, "--stage", stage]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(out.returncode)
            rows.append((precision, json.loads(out.stdout.strip().splitlines()[-1])))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads)"
    print(f"UDAS stages, {name}, DeepLabv2-{size.encoder}, source {size.src[1]}x{size.src[0]}, target "
          f"{size.tgt[1]}x{size.tgt[0]}, torch {torch.__version__}\n")
    print("| precision | stage | ms / iteration | TFLOP / iteration | peak memory (GiB) |")
    print("|---|---|---:|---:|---:|")
    for precision, r in rows:
        print(f"| {precision} | {r['stage']} | {1000 * r['s']:.1f} | {r['flops'] / 1e12:.3f} | {r['mem'] / 2**30:.2f} |")


if __name__ == "__main__":
    main()
