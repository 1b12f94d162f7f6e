"""The authors' settings, transcribed, trained on dabench's arrays: is a method's number the method's
or the port's?

For each method the parity tests prove that dabench's ``update`` and the transcription under
tests/reference/ take the same steps from the same weights and batches. This script trains the
transcription itself, for --steps iterations, on the protocol's splits of a pair (mnist5k ->
mnistm5k by default), from the initial weights dabench's run of the same seed starts from, with
its own batches (drawn at random with replacement, as a plain loop draws them; dabench draws
seeded per-epoch permutations), and reports target-test accuracy at the last step, mean ± std over
the seeds. Beside it, when --runs names a folder of dabench run folders (``dabench sweep ... --out
FOLDER``), dabench's own last-step target-test accuracy of the same method, steps and seeds.

    python benchmarks/bench_transcriptions.py --methods cdan,cdan-e,mcc,dan --seeds 5 --steps 2000 \\
        --runs runs/ --out table.md

Methods: cdan, cdan-e (tests/reference/cdan.py, the digit script, warm-up and halvings counted in
tenths of --steps as the plugin does), mcc (tests/reference/mcc.py, TLlib's digit iteration), dan
(tests/reference/dan.py, TLlib's digit iteration), dann (tests/reference/dann.py, the paper's
update), afn (tests/reference/afn.py, TLlib's digit setting). Threads: torch's default unless --threads; CPU only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from dabench.data import get_batch, ordered_batches  # noqa: E402
from dabench.runner import RunConfig, build  # noqa: E402
from reference.harness import twin  # noqa: E402

PLUGIN = {"cdan": ("cdan", {}), "cdan-e": ("cdan", {"entropy_conditioning": "true"}), "mcc": ("mcc", {}),
          "dan": ("dan", {}), "dann": ("dann", {}), "afn": ("afn", {})}


@torch.no_grad()
def accuracy(predict, test) -> float:
    hits = 0
    for x, y in ordered_batches(test, 256):
        hits += (predict(x).argmax(1) == y).sum().item()
    return hits / len(test)


def trainer(method: str, algo, steps: int):
    """The transcription, on a copy of the plugin's initial weights; returns (step, predict)."""
    if method in ("cdan", "cdan-e"):
        from reference import cdan as ref

        features = nn.Sequential(twin(algo.featurizer), twin(algo.classifier[:-1]))
        fc = twin(algo.classifier[-1])
        tr = ref.DigitTrainer(features, fc, twin(algo.discriminator), "CDAN-E" if method == "cdan-e" else "CDAN")
        num_iter = steps // 10
        step = lambda i, xs, ys, xt: tr.step(i // num_iter + 1, i % num_iter, num_iter, xs, ys, xt)  # noqa: E731
        return step, lambda x: fc(features(x)), [features, fc]
    if method == "mcc":
        from reference import mcc as ref

        base, head = twin(algo.featurizer), twin(algo.classifier)
        tr = ref.TLlibDigitTrainer(base, head, algo.num_classes)
        return tr.step, lambda x: head(base(x)), [base, head]
    if method == "dan":
        from reference import dan as ref

        tr = ref.TLlibDAN(twin(algo.featurizer), twin(algo.bottleneck), twin(algo.head), lr=0.01, scratch=True)
        # TLlib's classifier returns (predictions, features) in training and the predictions alone in eval
        return lambda i, xs, ys, xt: tr.step(xs, ys, xt), lambda x: tr.model(x), [tr.model]
    if method == "afn":
        from reference import afn as ref

        block = ref.Block(algo.featurizer.out_features, algo.hp["bottleneck_dim"], algo.hp["dropout_p"])
        block.load_state_dict(algo.bottleneck.state_dict())
        tr = ref.TLlibAFN(twin(algo.featurizer), block, twin(algo.head), lr=0.01, delta=0.3, trade_off_entropy=0.03)
        return (lambda i, xs, ys, xt: tr.step(xs, ys, xt)), (lambda x: tr.model(x)[0]), [tr.backbone, tr.bottleneck, tr.head]
    if method == "dann":
        from reference import dann as ref

        parts = [twin(algo.featurizer.lower), twin(algo.featurizer.upper), twin(algo.classifier), twin(algo.discriminator)]
        tr = ref.PaperTrainer(*parts, steps)
        return tr.step, lambda x: parts[2](parts[1](parts[0](x))), parts
    raise SystemExit(f"unknown method {method!r}; choose from {', '.join(PLUGIN)}")


def train(method: str, src: str, tgt: str, steps: int, seed: int, work: Path) -> float:
    algo_name, hp = PLUGIN[method]
    cfg = RunConfig(algo=algo_name, src=src, tgt=tgt, steps=steps, eval_every=steps, seed=seed, out=str(work),
                    device="cpu", overrides=hp)
    built = build(cfg)  # the splits and dabench's initial weights for this seed
    splits, algo = built.splits, built.algorithm
    batch = built.config["hparams"]["batch_size"]
    step, predict, modules = trainer(method, algo, steps)
    torch.manual_seed(seed)
    n_src, n_tgt = len(splits.src_train), len(splits.tgt_train)
    for i in range(steps):
        xs, ys = get_batch(splits.src_train, torch.randint(n_src, (batch,)).tolist())
        xt = get_batch(splits.tgt_train, torch.randint(n_tgt, (batch,)).tolist())
        step(i, xs, ys, xt)
    for m in modules:
        m.eval()
    return accuracy(predict, splits.tgt_test)


def dabench_last(runs: Path, method: str, steps: int, first: int, seeds: int) -> list[float]:
    """dabench's last-step target-test accuracy of ``method``'s runs under ``runs``."""
    algo_name, hp = PLUGIN[method]
    out = {}
    for cfg_file in runs.rglob("config.json"):
        config = json.loads(cfg_file.read_text())
        if config["algo"] != algo_name or config["steps"] != steps or not (cfg_file.parent / "done").exists():
            continue
        if sorted(config.get("overrides", [])) != sorted(hp):
            continue
        if any(str(config["hparams"][k]).lower() != v for k, v in hp.items()):
            continue
        records = [json.loads(line) for line in (cfg_file.parent / "results.jsonl").read_text().splitlines()]
        out[config["seed"]] = records[-1]["tgt-test"]["acc"]
    return [out[s] for s in sorted(out) if first <= s < first + seeds]


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    pct = [100 * v for v in values]
    return f"{statistics.mean(pct):.1f} ± {statistics.stdev(pct) if len(pct) > 1 else 0.0:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="cdan,cdan-e,mcc,dan")
    ap.add_argument("--src", default="mnist5k")
    ap.add_argument("--tgt", default="mnistm5k")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="start at this seed (to add seeds to a measurement)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=Path, default=None, help="a folder of dabench run folders to compare with")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dabench-transcriptions"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = [f"{args.src} -> {args.tgt}, {args.steps} steps, seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, {torch.get_num_threads()} threads; "
             "target-test accuracy (%) at the last step", "",
             "| method | transcription of the authors' setting | per seed | dabench | per seed |", "|---|---:|---|---:|---|"]
    for method in args.methods.split(","):
        t = time.perf_counter()
        ours = []
        for s in range(args.first_seed, args.first_seed + args.seeds):
            ours.append(train(method, args.src, args.tgt, args.steps, s, args.work))
            print(f"{method} seed {s}: {100 * ours[-1]:.1f} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
        theirs = dabench_last(args.runs, method, args.steps, args.first_seed, args.seeds) if args.runs else []
        lines.append(f"| {method} | {mean_std(ours)} | {', '.join(f'{100 * v:.1f}' for v in ours)} | {mean_std(theirs)} | "
                     f"{', '.join(f'{100 * v:.1f}' for v in theirs)} |")
        print(lines[-1], f"({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
