"""Speed of AdaptSegNet on DeepLabv2: one training iteration and one evaluation forward, in fp32
and bf16, channels_last off and on, with model FLOP utilisation.

    python benchmarks/bench_segmentation.py                      # full size on a GPU, small on a CPU
    python benchmarks/bench_segmentation.py --size small --device cpu
    python benchmarks/bench_segmentation.py --flops-only         # FLOPs at full size, meta device, no timing
    python benchmarks/bench_segmentation.py --precision bf16 --channels-last on --compile off,on   # eager vs compiled

Full size is the paper's setting: DeepLabv2-ResNet101, 19 classes, batch 1, a 1280x720 source (GTA5)
and a 1024x512 target (Cityscapes) image per iteration; evaluation predicts one 1024x512 image and
upsamples the logits to 2048x1024 before the argmax, as ``dabench.trainer.evaluate`` scores
Cityscapes. Small size (for CPUs): resnet18 at 256x128 for both domains, labels at 512x256.

An iteration is ``AdaptSegNet.update`` (or ``--algo``'s) under ``dabench.algorithm.autocast``, as the
trainer runs it. FLOPs are counted with ``torch.utils.flop_counter`` on the first warm-up call of
each configuration (forward + backward of the segmenter and discriminators; optimiser arithmetic
is not counted); MFU = FLOPs / time / the device's dense peak for the precision (bf16, or TF32 for
fp32 convolutions while ``torch.backends.cudnn.allow_tf32`` is on, PyTorch's default). Each configuration runs in a fresh
process, so its peak memory is its own: ``torch.cuda.max_memory_allocated`` on a GPU, the process's
peak resident set (``resource.getrusage().ru_maxrss``, model and interpreter included) on a CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from torch.utils._python_dispatch import TorchDispatchMode

from dabench.data import SEGMENTATION, Batch
from dabench.hparams import defaults
from dabench.nets import SegNet
from dabench.registry import algorithms, backbones
from dabench.runner import compile_networks, repeatable_kernels
from dabench.algorithm import autocast

NUM_CLASSES = 19


@dataclass(frozen=True)
class Size:
    encoder: str
    src: tuple[int, int]  # (H, W)
    tgt: tuple[int, int]
    label: tuple[int, int]  # evaluation labels: logits are upsampled to this
    warmup: int
    iters: int


SIZES = {
    "full": Size("resnet101", src=(720, 1280), tgt=(512, 1024), label=(1024, 2048), warmup=3, iters=10),
    "small": Size("resnet18", src=(128, 256), tgt=(128, 256), label=(256, 512), warmup=1, iters=3),
}
CONFIGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
# Dense peaks in TFLOP/s by GPU name fragment: bf16 tensor cores, TF32 tensor cores, plain fp32.
# H200 has the H100 SXM's compute; the PCIe H100 is slower.
PEAKS = {"H100 PCIe": (756.0, 378.0, 51.2), "H100": (989.4, 494.7, 66.9), "H200": (989.4, 494.7, 66.9),
         "A100": (312.0, 156.0, 19.5)}


def peak_tflops(device: torch.device, precision: str) -> tuple[float, str] | None:
    """The dense peak this precision can reach here, and its name; None when unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, tf32, fp32) in PEAKS.items():
        if fragment in name:
            if precision == "bf16":
                return bf16, "bf16"
            # fp32 convolutions run on TF32 tensor cores while cudnn.allow_tf32 is on (PyTorch's default)
            return (tf32, "tf32") if torch.backends.cudnn.allow_tf32 else (fp32, "fp32")
    return None


def build(size: Size, algo: str, device: torch.device, steps: int = 10**6):
    cls = algorithms.get(algo)
    net = backbones.get("deeplabv2")(size.encoder, num_classes=NUM_CLASSES)
    return cls(net, NUM_CLASSES, defaults(cls.space(SEGMENTATION)), steps).to(device)


def make_batch(size: Size, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    src_y = torch.randint(0, NUM_CLASSES, (1, *size.src), generator=g)
    src_y[:, :8] = 255  # a band of ignored pixels, as real label maps have
    return Batch(torch.rand(1, 3, *size.src, generator=g) * 2 - 1, src_y,
                 torch.rand(1, 3, *size.tgt, generator=g) * 2 - 1).to(device)


def evaluate_once(algo, x: torch.Tensor, label_size: tuple[int, int]) -> torch.Tensor:
    """``dabench.trainer.evaluate`` for one image: predict, upsample to label size, argmax."""
    logits = algo.predict(x)
    logits = torch.nn.functional.interpolate(logits.float(), size=label_size, mode="bilinear", align_corners=False)
    return logits.argmax(1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_memory(device: torch.device) -> int:
    """Bytes: allocated by torch on a GPU (since the last reset), resident set of the process on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def timed(fn, device: torch.device, warmup: int, iters: int, flops: int | None = None) -> tuple[int, float, int]:
    """(FLOPs per call, median seconds per call, peak memory in bytes): the FLOPs are counted on the
    first of ``warmup`` untimed calls (unless given: a compiled network's are counted eagerly before
    compiling), then ``iters`` calls are timed one by one. The median, not the mean, so that a busy
    shared machine's stalls do not decide the number."""
    if flops is None:
        flops = count_flops(fn)
    else:
        fn()  # a compiled network compiles here
    for _ in range(warmup - 1):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return flops, statistics.median(times), peak_memory(device)


def measure(size: Size, algo_name: str, device: torch.device, precision: str, channels_last: bool,
            warmup: int, iters: int, compiled: bool = False) -> dict:
    """One configuration: evaluation first (so that a CPU's peak RSS is not yet the training one's)."""
    torch.manual_seed(0)
    algo = build(size, algo_name, device)
    batch = make_batch(size, device)
    if channels_last:
        algo = algo.to(memory_format=torch.channels_last)
        batch = batch.to(device, channels_last=True)
    step = iter(range(10**9))

    def train():
        with autocast(device, precision):
            algo.update(batch, next(step))

    @torch.no_grad()
    def evaluate():
        with autocast(device, precision):
            evaluate_once(algo, batch.tgt_x, size.label)

    known = {"eval": None, "train": None}
    if compiled:  # FLOPs counted eagerly, then the networks compiled as ``dabench run --compile`` does
        algo.eval()
        known["eval"] = count_flops(evaluate)
        algo.train()
        known["train"] = count_flops(train)
        compile_networks(algo)
    algo.eval()
    eval_flops, eval_s, eval_mem = timed(evaluate, device, warmup, iters, known["eval"])
    algo.train()
    train_flops, train_s, train_mem = timed(train, device, warmup, iters, known["train"])
    return {"train_s": train_s, "train_mem": train_mem, "train_flops": train_flops,
            "eval_s": eval_s, "eval_mem": eval_mem, "eval_flops": eval_flops}


class _MetaScalars(TorchDispatchMode):
    """Meta tensors hold no values: answer ``.item()`` with 1 so a whole ``update()`` (losses
    logged as floats, Adam's step count) can be traced for its FLOPs without computing anything."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            t = args[0]
            return True if t.dtype == torch.bool else (1.0 if t.is_floating_point() else 1)
        return func(*args, **(kwargs or {}))


def flops_only(size: Size, algo_name: str) -> str:
    """FLOPs of the segmenter's forward passes and of one training iteration, on the meta device
    (shapes only: no memory, no time, so full size is fine on a laptop)."""
    meta = torch.device("meta")
    with meta:
        algo = build(size, algo_name, meta)
    net = next(m for m in algo.modules() if isinstance(m, SegNet))
    batch = Batch(torch.empty(1, 3, *size.src, device=meta), torch.zeros(1, *size.src, dtype=torch.long, device=meta),
                  torch.empty(1, 3, *size.tgt, device=meta))
    rows = []
    with torch.no_grad():
        for name, (h, w) in (("source", size.src), ("target", size.tgt), ("label-size", size.label)):
            x = torch.empty(1, 3, h, w, device=meta)
            rows.append((f"segmenter forward, {name} {w}x{h}", count_flops(lambda: net(x))))
    with _MetaScalars(), FlopCounterMode(display=False) as counter:
        algo.update(batch, 0)
    total = counter.get_total_flops()
    seg = sum(counter.get_flop_counts().get(type(net).__name__, {}).values())
    rows += [(f"one {algo_name} iteration, forward + backward", total), ("  of which the segmenter", seg),
             ("  the rest (mostly the discriminators)", total - seg)]
    lines = [f"FLOPs, DeepLabv2-{size.encoder}, {NUM_CLASSES} classes, batch 1 (torch.utils.flop_counter, meta device)",
             "", "| pass | TFLOP |", "|---|---:|"]
    return "\n".join(lines + [f"| {name} | {flops / 1e12:.3f} |" for name, flops in rows])


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{torch.get_num_threads()}-thread CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}"


def table(results: list[tuple[str, bool, bool, dict]], device: torch.device) -> str:
    mem = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of the process (ru_maxrss)"
    head = ("| precision | channels_last | compile | train it/s | train ms/it | train TFLOP/s | train MFU | train peak mem GiB "
            "| eval it/s | eval TFLOP/s | eval MFU | eval peak mem GiB |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for precision, cl, comp, r in results:
        if "error" in r:
            lines.append(f"| {precision} | {'on' if cl else 'off'} | {'on' if comp else 'off'} | failed: {r['error']} |"
                         + " |" * 9)
            continue
        peak = peak_tflops(device, precision)

        def mfu(flops: int, seconds: float) -> str:
            return f"{100 * flops / seconds / (peak[0] * 1e12):.1f}% of {peak[1]}" if peak else ""

        lines.append(
            f"| {precision} | {'on' if cl else 'off'} | {'on' if comp else 'off'} | {1 / r['train_s']:.3g} | {1000 * r['train_s']:.1f} "
            f"| {r['train_flops'] / r['train_s'] / 1e12:.3g} | {mfu(r['train_flops'], r['train_s'])} "
            f"| {r['train_mem'] / 2**30:.2f} | {1 / r['eval_s']:.3g} | {r['eval_flops'] / r['eval_s'] / 1e12:.3g} "
            f"| {mfu(r['eval_flops'], r['eval_s'])} | {r['eval_mem'] / 2**30:.2f} |")
    first = next((r for *_, r in results if "error" not in r), None)
    notes = [f"Device: {describe_device(device)}. Peak memory: {mem}."]
    if first:
        notes.append(f"FLOPs counted: {first['train_flops'] / 1e12:.3f} TFLOP per training iteration, "
                     f"{first['eval_flops'] / 1e12:.3f} TFLOP per evaluation.")
    return "\n".join(lines + [""] + notes)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="full on a GPU, small on a CPU by default")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--algo", default="adaptsegnet", help="any segmentation algorithm plugin (default adaptsegnet)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations, median reported (default: 10 full, 3 small)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations first, at least 1, the first one counting FLOPs (default: 3 full, 1 small)")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    p.add_argument("--channels-last", default="off,on", help="comma-separated subset of off,on")
    p.add_argument("--compile", default="off", help="comma-separated subset of off,on: torch.compile the networks "
                   "(as dabench run --compile); on,off measures both")
    p.add_argument("--no-tf32", action="store_true", help="fp32 convolutions without TF32 tensor cores")
    p.add_argument("--deterministic", action="store_true",
                   help="the kernels a dabench run asks for on a GPU (runner.repeatable_kernels: cuDNN deterministic, "
                        "no autotuning, PyTorch's deterministic ops); default: PyTorch's defaults")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs on the meta device and stop")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "PRECISION,on|off,on|off": one configuration here
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    size_name = args.size or ("full" if device.type == "cuda" or args.flops_only else "small")
    size = SIZES[size_name]
    warmup = max(1, size.warmup if args.warmup is None else args.warmup)
    iters = size.iters if args.iters is None else args.iters
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    if args.flops_only:
        print(flops_only(size, args.algo))
        return
    if args.one:
        precision, layout, comp = args.one.split(",")
        kernels = repeatable_kernels(device) if args.deterministic else contextlib.nullcontext()
        with kernels:
            print(json.dumps(measure(size, args.algo, device, precision, layout == "on", warmup, iters, comp == "on")))
        return
    wanted = [(p, cl, comp) for p, cl in CONFIGS for comp in (False, True) if p in args.precision.split(",")
              and ("on" if cl else "off") in args.channels_last.split(",")
              and ("on" if comp else "off") in args.compile.split(",")]
    results = []
    for precision, cl, comp in wanted:
        flags = f"{precision},{'on' if cl else 'off'},{'on' if comp else 'off'}"
        cmd = [sys.executable, __file__, "--one", flags, "--device", str(device),
               "--size", size_name, "--algo", args.algo,
               "--iters", str(iters), "--warmup", str(warmup)] + (["--no-tf32"] if args.no_tf32 else []) \
            + (["--deterministic"] if args.deterministic else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            results.append((precision, cl, comp, json.loads(proc.stdout.strip().splitlines()[-1])))
        else:
            error = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
            results.append((precision, cl, comp, {"error": error}))
        print(f"{flags} (precision, channels_last, compile): {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
    print(f"{args.algo} on DeepLabv2-{size.encoder}, {NUM_CLASSES} classes, batch 1: source "
          f"{size.src[1]}x{size.src[0]} + target {size.tgt[1]}x{size.tgt[0]} per iteration; evaluation of one "
          f"{size.tgt[1]}x{size.tgt[0]} image scored at {size.label[1]}x{size.label[0]}; {warmup} warm-up + "
          f"{iters} timed iterations (median); kernels: "
          f"{'deterministic, as a dabench run asks for them' if args.deterministic else 'PyTorch defaults'}.\n")
    print(table(results, device))


if __name__ == "__main__":
    main()
