"""Seconds ``dabench report`` takes to write its page for a 40-run sweep folder (issue 25's target:
under 10 s on 2 cores).

    python benchmarks/bench_report.py                 # 5 algorithms x 8 seeds, 10,000 steps each
    python benchmarks/bench_report.py --runs-dir runs/ # your own folder

The generated folder is what a 10,000-step digit sweep leaves: per run a config.json, an
evaluation record every 200 steps (three splits, per-class accuracy, label-free scores) and a
steps.jsonl line per step with two losses. Best of --repeats, the file cache warm.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from dabench.results.report import report


def sweep(root: Path, algos: int = 5, seeds: int = 8, steps: int = 10_000, every: int = 200) -> Path:
    rng = random.Random(0)
    for a in range(algos):
        for seed in range(seeds):
            run = root / "mnist5k_to_mnistm5k" / f"algo{a}" / f"seed{seed}"
            run.mkdir(parents=True)
            config = {"algo": f"algo{a}", "src": "mnist5k", "tgt": "mnistm5k", "seed": seed, "task": "classification",
                      "metric": "acc", "steps": steps, "eval_every": every, "tgt_labeled": 0, "hparams": {},
                      "backbone": "digit-cnn", "classes": [str(c) for c in range(10)]}
            (run / "config.json").write_text(json.dumps(config))
            split = lambda: {"acc": rng.random(), "class_acc": [rng.random() for _ in range(10)]}  # noqa: E731
            (run / "results.jsonl").write_text("".join(json.dumps(
                {"step": s, "stage": "train", "losses": {"cls": 0.1}, "src-val": split(), "tgt-val": split(),
                 "tgt-test": split(), "tgt-unlabeled": {"entropy": 1.0, "im": 1.0, "snd": 4.0}}) + "\n"
                for s in range(every, steps + 1, every)))
            (run / "steps.jsonl").write_text("".join(json.dumps(
                {"step": s, "stage": "train", "cls": 2.3 / s, "dom": 0.69 + 0.01 * rng.random()}) + "\n"
                for s in range(1, steps + 1)))
            (run / "done").touch()
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.runs_dir or sweep(Path(tmp) / "runs")
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = report(root, Path(tmp) / "report.html")
            times.append(time.perf_counter() - start)
        runs = len(list(Path(root).rglob("config.json")))
        print(f"dabench report: {runs} runs, best of {args.repeats}: {min(times):.2f} s "
              f"(all: {', '.join(f'{t:.2f}' for t in times)}); page {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
