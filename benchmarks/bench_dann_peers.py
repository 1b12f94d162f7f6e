"""DANN three ways on the same data: dabench, a plain PyTorch loop, and skada's DANN.

Each pair and seed trains the DANN paper's MNIST network (Ganin et al., JMLR 2016: conv5x5-32,
ReLU, maxpool 2, conv5x5-48, ReLU, maxpool 2 = 768 features; label predictor fc100-ReLU-fc100-
ReLU-fc10; domain classifier fc100-ReLU-fc1 on the 768 features through the gradient reversal
layer) for --steps steps of 64 source + 64 target images, and reports target-test accuracy at the
last step and training throughput. The point: to see whether dabench's DANN gives the numbers and
the speed that a plain loop and another toolkit give on the same arrays.

1. dabench: ``dabench.runner.run(RunConfig(algo="dann", ...))`` on the named pair, and again on
   the same images written as PNG folders (``folder:PATH``). The folder's protocol split follows its
   file order (class by class), so it holds other images unless the data set is stored class by
   class (mnist5k, mnistm5k are; the report says which): its speed compares, its accuracy only then.
2. plain: the loop below, about 40 lines, with its own copy of the network (built in the order
   dabench builds its DANN, so one seed gives both the same initial weights). SGD momentum 0.9,
   lr 0.01 / (1 + 10 p)^0.75, GRL weight 2 / (1 + exp(-10 p)) - 1, 64 + 64 images drawn at random
   (with replacement) from the protocol's source train and target train, the paper's domain term
   (JMLR 2016, eq. 18: mean logistic loss over the source images, label 1, plus the mean over the
   target images, label 0), as dabench's DANN computes it.
3. skada: ``skada.deep.DANN`` on the same arrays, the same network and the same domain classifier
   (passed in, with BCE-with-logits), reg=1, SGD momentum 0.9, lr 0.01, 64 + 64 images a batch,
   as many epochs as make about --steps batches. skada's DANN differs from the other two in ways
   this script keeps (it measures skada as skada runs): no GRL-weight schedule (the reversed
   gradient has weight 1 from the first batch; the paper ramps it with lambda_p), no learning-rate
   annealing, the domain loss is mean BCE(source) + mean BCE(target) (eq. 18, as in dabench and
   the plain loop), domain labels source 0 / target 1, and epochs of
   sampling without replacement within each domain, the smaller domain cycled. Its own default domain classifier (``DomainClassifier``) ends in a Softmax over one
   output, which is always 1: no domain gradient at all; that is why this script passes one.

Accuracy is the same function for every row: argmax of the logits over the protocol's tgt_test
split, in batches of 256 (for dabench, from the model saved at the last step, checked against the
run's own record). Throughput: source + target images trained on per second of the training loop
(batch fetching included; data building, the final evaluation and checkpoint not), i.e. for
dabench ``time_s`` of results.jsonl (taken before its evaluation; timings.jsonl's train seconds
include it), for the plain loop the loop, for skada the sum of skorch's epoch durations.

skada is not a dabench dependency; run this from a scratch virtual environment that has skada and
skorch and sees dabench's:

    python3 -m venv /tmp/skenv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > /tmp/skenv/lib/python3.11/site-packages/dabench_venv.pth   # from the repository root
    /tmp/skenv/bin/pip install skada==0.6.0 skorch
    /tmp/skenv/bin/python benchmarks/bench_dann_peers.py --seeds 5 --steps 2000

(A .pth holding just the path works too: this script then loads the project venv's editable
dabench install itself.) Options: --pairs syndigits:uci-digits,mnist5k:mnistm5k (SRC:TGT, or
SRC->TGT when a name has a colon), --seeds N (seeds 0..N-1), --steps S, --threads N (torch
threads; default: torch's own), --out FILE (markdown, also printed). CPU only. A full run (2
pairs x 3 seeds x 4 trainings of 2,000 steps, 1-2 minutes each) takes about 30 minutes on an idle
2-core CPU; run it on an otherwise idle machine, as other load changes the speeds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import site
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64  # images per domain per step
LR = 0.01
MOMENTUM = 0.9
EVAL_BATCH = 256
METHODS = {
    "dabench": "dabench",
    "dabench-folder": "dabench, folder:PATH",
    "plain": "plain PyTorch loop",
    "skada": "skada.deep.DANN",
}
SETUP = ("Make a venv with skada and skorch that sees dabench's packages:\n"
         "  python3 -m venv /tmp/skenv\n"
         f"  echo \"import site; site.addsitedir('{ROOT}/.venv/lib/python3.11/site-packages')\" "
         "> /tmp/skenv/lib/python3.11/site-packages/dabench_venv.pth\n"
         "  /tmp/skenv/bin/pip install skada==0.6.0 skorch\n"
         "then run: /tmp/skenv/bin/python benchmarks/bench_dann_peers.py")


def _import_dabench() -> None:
    """A .pth that only lists the project venv's site-packages leaves its .pth files (the editable
    dabench install) unread; read them here."""
    try:
        import dabench  # noqa: F401
    except ImportError:
        for sitedir in sorted((ROOT / ".venv" / "lib").glob("python*/site-packages")):
            site.addsitedir(str(sitedir))


_import_dabench()
try:
    from dabench.data import get_batch, ordered_batches
    from dabench.protocol import Splits, load_domain
    from dabench.runner import RunConfig, build, run
except ImportError as exc:
    sys.exit(f"bench_dann_peers.py: cannot import dabench ({exc}). This interpreter ({sys.executable}) must see "
             f"the project venv's packages.\n{SETUP}")
try:
    import skorch
    import skada
    from skada.deep import DANN as SkadaDANN
except ImportError as exc:
    sys.exit(f"bench_dann_peers.py: skada and skorch are needed for the skada rows ({exc}); "
             f"{sys.executable} does not have them. skada is not a dabench dependency.\n{SETUP}")


# The network, written out here rather than imported from dabench ----------------------------------

class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


class DigitNet(nn.Module):
    """Features (``features``: 48 x 4 x 4 = 768 at 28x28) and label predictor of the paper's MNIST net."""

    def __init__(self, image_size: int, num_classes: int):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.width = 48 * side * side
        self.features = nn.Sequential(nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.label = nn.Sequential(nn.Linear(self.width, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                                   nn.Linear(100, num_classes))

    def forward(self, x: torch.Tensor, sample_weight=None) -> torch.Tensor:  # skada passes sample_weight
        return self.label(self.features(x))


class DomainHead(nn.Module):
    """GRL, then fc100-ReLU-fc1: one domain logit per image. ``lam`` weighs the reversed gradient."""

    def __init__(self, width: int):
        super().__init__()
        self.lam = 1.0
        self.net = nn.Sequential(nn.Linear(width, 100), nn.ReLU(), nn.Linear(100, 1))

    def forward(self, features: torch.Tensor, sample_weight=None) -> torch.Tensor:
        return self.net(GradReverse.apply(features, self.lam)).squeeze(1)


def build(splits: Splits) -> tuple[DigitNet, DomainHead]:
    net = DigitNet(splits.image_size, len(splits.classes))
    return net, DomainHead(net.width)


# One training of each kind ----------------------------------------------------------------------

@dataclass
class Result:
    acc: float  # target test, last step
    seconds: float  # the training loop
    samples: int  # source + target images trained on
    steps: int
    with_eval: float | None = None  # dabench: timings.jsonl's train seconds (the final evaluation included)

    @property
    def rate(self) -> float:
        return self.samples / self.seconds


@torch.no_grad()
def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], test) -> float:
    """Share of ``test`` whose argmax logit is the label: the one measure of every row."""
    hits = 0
    for x, y in ordered_batches(test, EVAL_BATCH):
        hits += (predict(x).argmax(1) == y).sum().item()
    return hits / len(test)


def config(src: str, tgt: str, steps: int, seed: int, out: Path, image_size: int | None = None) -> RunConfig:
    return RunConfig(algo="dann", src=src, tgt=tgt, steps=steps, eval_every=steps, seed=seed, out=str(out),
                     device="cpu", image_size=image_size)


def train_dabench(cfg: RunConfig, algorithm: nn.Module, tgt_test) -> Result:
    """One ``dabench.runner.run``; accuracy recomputed from its last checkpoint into ``algorithm``."""
    result = run(cfg)
    record = result.final
    state = torch.load(result.run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    algorithm.load_state_dict(state["model"])
    algorithm.eval()
    acc = accuracy(algorithm.predict, tgt_test)
    if abs(acc - record["tgt-test"]["acc"]) > 1e-9:
        raise RuntimeError(f"{result.run_dir}: accuracy recomputed from checkpoint.pt is {acc}, the run recorded "
                           f"{record['tgt-test']['acc']}: the checkpoint is not the model that was evaluated.")
    timings = [json.loads(line) for line in (result.run_dir / "timings.jsonl").read_text().splitlines()]
    with_eval = sum(t["seconds"] for t in timings if t["part"] == "train")
    return Result(acc, record["time_s"], cfg.steps * 2 * result.config["hparams"]["batch_size"], cfg.steps,
                  with_eval)


def train_plain(splits: Splits, steps: int, seed: int) -> Result:
    """DANN as the paper trains it, in one loop."""
    torch.manual_seed(seed)
    net, head = build(splits)
    optim = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=LR, momentum=MOMENTUM)
    domain = torch.cat([torch.ones(BATCH), torch.zeros(BATCH)])  # source 1, target 0
    n_src, n_tgt = len(splits.src_train), len(splits.tgt_train)
    start = time.perf_counter()
    for step in range(steps):
        p = step / max(1, steps - 1)
        for group in optim.param_groups:
            group["lr"] = LR / (1 + 10 * p) ** 0.75
        head.lam = 2 / (1 + math.exp(-10 * p)) - 1
        xs, ys = get_batch(splits.src_train, torch.randint(n_src, (BATCH,)).tolist())
        xt = get_batch(splits.tgt_train, torch.randint(n_tgt, (BATCH,)).tolist())
        features = net.features(torch.cat([xs, xt]))
        loss = F.cross_entropy(net.label(features[:BATCH]), ys)
        logits = head(features)  # eq. 18: mean over source (domain 1) + mean over target (domain 0)
        loss = loss + F.binary_cross_entropy_with_logits(logits[:BATCH], domain[:BATCH]) \
            + F.binary_cross_entropy_with_logits(logits[BATCH:], domain[BATCH:])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    seconds = time.perf_counter() - start
    net.eval()
    return Result(accuracy(net, splits.tgt_test), seconds, steps * 2 * BATCH, steps)


def skada_arrays(splits: Splits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """skada's input: source then target images in one array, labels (-1: target, unlabelled) and
    sample_domain (skada's convention: sources > 0, targets < 0)."""
    xs, ys = get_batch(splits.src_train, list(range(len(splits.src_train))))
    xt = get_batch(splits.tgt_train, list(range(len(splits.tgt_train))))
    x = torch.cat([xs, xt]).numpy()
    y = np.concatenate([ys.numpy(), np.full(len(xt), -1)])
    sample_domain = np.concatenate([np.full(len(xs), 1), np.full(len(xt), -2)])
    return x, y, sample_domain


def skada_epochs(splits: Splits, steps: int) -> int:
    """Epochs of about ``steps`` batches. skada's DomainBalancedSampler makes an epoch of as many
    64 + 64 batches as the larger domain fills whole (its loader's batch is 2 x batch_size)."""
    per_epoch = max(len(splits.src_train) // BATCH, len(splits.tgt_train) // BATCH)
    return max(1, round(steps / per_epoch))


def train_skada(splits: Splits, arrays, steps: int, seed: int) -> Result:
    torch.manual_seed(seed)
    net, head = build(splits)
    model = SkadaDANN(net, layer_name="features", reg=1, domain_classifier=head,
                      domain_criterion=nn.BCEWithLogitsLoss(), batch_size=BATCH,  # per domain: batches of 128
                      max_epochs=skada_epochs(splits, steps), optimizer=torch.optim.SGD,
                      optimizer__momentum=MOMENTUM, lr=LR, train_split=None, device="cpu", verbose=0)
    x, y, sample_domain = arrays
    model.fit(x, y, sample_domain=sample_domain)
    history = model.history
    batches = [b for epoch in history for b in epoch["batches"]]
    net.eval()
    return Result(accuracy(net, splits.tgt_test), sum(history[:, "dur"]),
                  sum(b["train_batch_size"] for b in batches), len(batches))


# The folder variant ------------------------------------------------------------------------------

def write_image_folder(name: str, image_size: int | None, path: Path) -> Path:
    """All images of domain ``name`` as PNGs, PATH/<class>/<i>.png (PATH/train and PATH/test when the
    domain has an official test split)."""
    root = Path(os.environ["DABENCH_DATA"]).expanduser() if os.environ.get("DABENCH_DATA") else None
    domain = load_domain(name, root, image_size)
    parts = {".": domain.train} if domain.test is None else {"train": domain.train, "test": domain.test}
    for part, ds in parts.items():
        for d in domain.classes:
            (path / part / d).mkdir(parents=True, exist_ok=True)
        for start in range(0, len(ds), 4096):
            x, y = get_batch(ds, list(range(start, min(start + 4096, len(ds)))))
            pixels = x.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for i, (image, label) in enumerate(zip(pixels, y.tolist())):
                Image.fromarray(image).save(path / part / domain.classes[label] / f"{start + i:06d}.png")
    return path


def check_same_network(prepared, splits: Splits) -> bool:
    """The script's network must have dabench's DANN's parameter shapes (else the rows compare
    different models); returns whether one seed also gives identical initial weights."""
    torch.manual_seed(prepared.config["seed"])
    ours = [p for m in build(splits) for p in m.parameters()]
    theirs = list(prepared.algorithm.parameters())
    if [p.shape for p in ours] != [p.shape for p in theirs]:
        raise RuntimeError(f"The script's network differs from dabench's DANN: {[tuple(p.shape) for p in ours]} vs "
                           f"{[tuple(p.shape) for p in theirs]}. Fix DigitNet/DomainHead to match digit-cnn + DANN.")
    return all(torch.equal(a, b) for a, b in zip(ours, theirs))


def same_images(a: Splits, b: Splits) -> bool:
    """Whether two pairs' protocols give the same images in the same order (a folder written from a
    class-sorted data set lists its files in the data set's order, so its split is the same)."""
    def images(ds) -> torch.Tensor:
        batch = get_batch(ds, list(range(len(ds))))
        return batch[0] if isinstance(batch, (tuple, list)) else batch  # tgt_train yields images only

    return a.sizes() == b.sizes() and all(torch.equal(images(getattr(a, n)), images(getattr(b, n)))
                                          for n in ("src_train", "tgt_train", "tgt_test"))


# The benchmark -----------------------------------------------------------------------------------

def bench_pair(src: str, tgt: str, seeds: int, steps: int, work: Path) -> tuple[dict[str, list[Result]], dict]:
    named = build(config(src, tgt, steps, 0, work / "runs"))
    splits = named.splits
    size = splits.image_size
    same_init = check_same_network(named, splits)
    t = time.perf_counter()
    folder_src = write_image_folder(src, None, work / "folders" / "src")
    folder_tgt = write_image_folder(tgt, size, work / "folders" / "tgt")
    written = time.perf_counter() - t
    folder = build(config(f"folder:{folder_src}", f"folder:{folder_tgt}", steps, 0, work / "runs", size))
    t = time.perf_counter()
    for ds in (folder.splits.src_train, folder.splits.tgt_train):
        get_batch(ds, [0])  # the folder loader decodes every file once, on first use (inside a run's loop)
    decode = time.perf_counter() - t
    arrays = skada_arrays(splits)
    facts = {"splits": splits.sizes(), "folder_splits": folder.splits.sizes(), "same_init": same_init,
             "same_split": same_images(splits, folder.splits),
             "png_write_s": written, "decode_s": decode, "skada_epochs": skada_epochs(splits, steps)}
    print(f"{src} -> {tgt}: splits {splits.sizes()}; folder pair splits {folder.splits.sizes()}; PNGs written in "
          f"{written:.1f} s, decoded in {decode:.1f} s; same initial weights as dabench: {same_init}", file=sys.stderr)

    train_plain(splits, 3, 0)  # warm-up: the first training in a process pays one-off start-up costs
    results: dict[str, list[Result]] = {m: [] for m in METHODS}
    for seed in range(seeds):
        runs = {
            "dabench": lambda: train_dabench(config(src, tgt, steps, seed, work / "runs"), named.algorithm,
                                             splits.tgt_test),
            "dabench-folder": lambda: train_dabench(
                config(f"folder:{folder_src}", f"folder:{folder_tgt}", steps, seed, work / "runs", size),
                folder.algorithm, folder.splits.tgt_test),
            "plain": lambda: train_plain(splits, steps, seed),
            "skada": lambda: train_skada(splits, arrays, steps, seed),
        }
        order = list(runs)[seed % len(runs):] + list(runs)[:seed % len(runs)]  # no method always runs first
        for method in order:  # methods interleaved per seed, so changing load on the machine hits them alike
            r = runs[method]()
            results[method].append(r)
            extra = f" (timings.jsonl train: {r.with_eval:.1f} s)" if r.with_eval is not None else ""
            print(f"  seed {seed} {method}: acc {100 * r.acc:.2f}%, {r.steps} steps, {r.seconds:.1f} s{extra}, "
                  f"{r.rate:.0f} samples/s", file=sys.stderr)
    dabench = results["dabench"] + results["dabench-folder"]
    facts["eval_overhead_s"] = statistics.fmean(r.with_eval - r.seconds for r in dabench)
    return results, facts


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split("->") if "->" in item else item.split(":")
        if len(parts) != 2 or not all(parts):
            raise SystemExit(f"--pairs: cannot read '{item}'. Write SRC:TGT (e.g. syndigits:uci-digits), or "
                             "SRC->TGT when a name holds a colon (syndigits:20000->uci-digits).")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean = f"{scale * statistics.fmean(values):.{digits}f}"
    return f"{mean} ± {scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{mean} (1 seed)"


def report(all_results: dict, all_facts: dict, args, command: str, load: tuple) -> str:
    from dabench.runner import cpu_model  # the name config.json records

    lines = [
        "# DANN three ways: dabench, a plain PyTorch loop, skada",
        "",
        f"`{command}`",
        "",
        f"{date.today()}; {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads ({'--threads' if args.threads else 'torch default'}), "
        f"python {platform.python_version()}, skada {skada.__version__}, skorch {skorch.__version__}; "
        f"load average (1 min) {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end. "
        f"{args.seeds} seed(s), {args.steps} steps of {BATCH} source + {BATCH} target images.",
        "",
        "| pair | method | steps | tgt-test acc % (mean ± std) | train samples/s (mean) | acc % per seed | samples/s per seed |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for (src, tgt), results in all_results.items():
        for method, rs in results.items():
            steps = "/".join(sorted({str(r.steps) for r in rs}))
            lines.append(
                f"| {src} → {tgt} | {METHODS[method]} | {steps} | {mean_std([r.acc for r in rs], 100)} | "
                f"{statistics.fmean(r.rate for r in rs):.0f} | {', '.join(f'{100 * r.acc:.1f}' for r in rs)} | "
                f"{', '.join(f'{r.rate:.0f}' for r in rs)} |")
    lines += ["", "Per pair:", ""]
    for (src, tgt), f in all_facts.items():
        same = "the same images in the same order, so its accuracy is comparable too" if f["same_split"] else "other images"
        lines.append(f"- {src} → {tgt}: protocol splits {f['splits']}; the folder pair's splits {f['folder_splits']} "
                     f"({same}); "
                     f"skada {f['skada_epochs']} epoch(s); the script's network starts from dabench's initial "
                     f"weights for a seed: {'yes' if f['same_init'] else 'no'}; PNGs decoded once in "
                     f"{f['decode_s']:.1f} s (inside the folder rows' first-step time); dabench's timings.jsonl "
                     f"train seconds exceed `time_s` by {f['eval_overhead_s']:.1f} s on average (the final "
                     "evaluation of src-val, tgt-val and tgt-test, and the checkpoint).")
    lines += [
        "",
        "Notes:",
        "",
        "- Accuracy: argmax of the logits on the protocol's tgt_test split, one function for all rows; dabench's "
        "is recomputed from the run's last checkpoint and matches its results.jsonl.",
        "- Samples/s: source + target images per second of the training loop (batch fetching included). dabench: "
        "results.jsonl `time_s`, taken before the run's one evaluation (timings.jsonl's train seconds include "
        "that evaluation and the checkpoint); skada: the sum of skorch's epoch times (its sampler re-reads the "
        "whole dataset at every epoch; that is in).",
        "- The folder rows train on the same images written as PNGs, through `folder:PATH`. Its protocol cuts "
        "the split from the folder's file order (class by class), so unless the data set is stored class by "
        "class its splits hold other images (see per pair): then compare their speed, not their accuracy.",
        "- plain: batches drawn with replacement by `torch.randint`; dabench: seeded per-epoch permutations. "
        "Same schedules (lr 0.01/(1+10p)^0.75, GRL weight 2/(1+exp(-10p))-1) and the same domain term (eq. 18).",
        "- skada 0.6.0's DANN as run here: our domain classifier (its default one ends in a Softmax over a "
        "single output, constant 1, so no domain gradient flows); GRL weight fixed at 1 and lr fixed at 0.01 "
        "(no schedules in skada's DANN); domain loss mean BCE(source) + mean BCE(target), as in the "
        "other rows; batches of 64 + 64 (DomainBalancedDataLoader doubles "
        "batch_size), epochs without replacement within each domain, the smaller domain cycled.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="syndigits:uci-digits,mnist5k:mnistm5k")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "dann_peers.md")
    args = parser.parse_args()
    if args.seeds < 1 or args.steps < 2:
        raise SystemExit(f"--seeds must be at least 1 and --steps at least 2, got {args.seeds} and {args.steps}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join([sys.executable, *sys.argv])
    load = os.getloadavg()
    all_results, all_facts = {}, {}
    for src, tgt in parse_pairs(args.pairs):
        with tempfile.TemporaryDirectory(prefix="dann_peers_") as work:
            all_results[(src, tgt)], all_facts[(src, tgt)] = bench_pair(src, tgt, args.seeds, args.steps, Path(work))
    text = report(all_results, all_facts, args, command, load)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
