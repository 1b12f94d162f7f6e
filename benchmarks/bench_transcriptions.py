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

Methods: cdan, cdan-e, cdan-bsp (tests/reference/cdan.py, the digit script, warm-up and halvings
counted in tenths of --steps as the plugin does; cdan-bsp adds the BSP authors' 1e-4 term as dabench's
cdan -H bsp=true), coral (tests/reference/coral.py, the Caffe CORAL layer on the
logits at weight 1, with the bench's SGD and annealed rate as its parity test: the Caffe solver is not
transcribed), mcc (tests/reference/mcc.py, TLlib's digit iteration), dan
(tests/reference/dan.py, TLlib's digit iteration), dann (tests/reference/dann.py, the paper's
update), bsp (tests/reference/dann.py with tests/reference/bsp.py: the paper's DANN update plus the
BSP authors' 1e-4 term; dabench's dann -H bsp=true), afn (tests/reference/afn.py, TLlib's digit
setting), mcd (tests/reference/mcd.py, the authors' digit solver: Adam 2e-4, num_k 4; predicts
with the sum of both classifiers, as the plugin), mdd (tests/reference/mdd.py, TLlib's digit
iteration, lr 0.01), jan (tests/reference/jan.py, TLlib's digit iteration, lr 0.01, --scratch),
self-ensembling (tests/reference/selfensemble.py, the authors' default digit options; the views
made by the plugin's augmentation; predicts with the teacher), fixmatch (tests/reference/
fixmatch.py, Dassl's step, SGD 0.05, the cosine rate per iteration as the plugin steps it; the
views made by the plugin's augmentation), adda (tests/reference/adda.py, the authors' two
programs of scripts/svhn-mnist.sh: the source network for the plugin's pretrain_steps, then the
adversarial stage for --steps; predicts with the target network), mme (tests/reference/mme.py,
the authors' step with their digit-size ``Predictor``, lr 0.01, T 0.05, lamda 0.1; needs
--tgt-labeled N). With --tgt-labeled N (mme, fixmatch) the run's N labelled target images are
drawn with replacement, min(batch size, N) a step, as dabench's labelled-target batch. Threads:
torch's default unless --threads; CPU only.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from dabench.data import Batch, Labeled, get_batch, ordered_batches  # noqa: E402
from dabench.results.leaderboard import run_folders  # noqa: E402
from dabench.results.records import read_runs  # noqa: E402
from dabench.runner import RunConfig, build  # noqa: E402
from reference.harness import twin  # noqa: E402

PLUGIN = {"cdan": ("cdan", {}), "cdan-e": ("cdan", {"entropy_conditioning": "true"}), "cdan-bsp": ("cdan", {"bsp": "true"}),
          "dann": ("dann", {}), "bsp": ("dann", {"bsp": "true"}), "mcc": ("mcc", {}), "coral": ("coral", {}),
          "dan": ("dan", {}), "afn": ("afn", {}), "mcd": ("mcd", {}), "mdd": ("mdd", {}), "jan": ("jan", {}),
          "self-ensembling": ("self-ensembling", {}), "fixmatch": ("fixmatch", {}), "adda": ("adda", {}), "mme": ("mme", {})}
LABELED = {"fixmatch": "may", "mme": "must"}  # the transcriptions whose step takes labelled target images


@torch.no_grad()
def accuracy(predict, test) -> float:
    hits = 0
    for x, y in ordered_batches(test, 256):
        hits += (predict(x).argmax(1) == y).sum().item()
    return hits / len(test)


def trainer(method: str, algo, steps: int):
    """The transcription, on a copy of the plugin's initial weights; returns (step, predict, modules).
    ``step(i, xs, ys, xt)``; the methods of LABELED take the labelled target batch (a ``Labeled``) as
    a fifth argument when the run has one."""
    if method in ("cdan", "cdan-e", "cdan-bsp"):
        from reference import cdan as ref

        features = nn.Sequential(twin(algo.featurizer), twin(algo.classifier[:-1]))
        fc = twin(algo.classifier[-1])
        tr = ref.DigitTrainer(features, fc, twin(algo.discriminator), "CDAN-E" if method == "cdan-e" else "CDAN",
                              bsp=method == "cdan-bsp")  # bsp: 1e-4 x BSP of the features, as -H bsp=true
        num_iter = steps // 10
        step = lambda i, xs, ys, xt: tr.step(i // num_iter + 1, i % num_iter, num_iter, xs, ys, xt)  # noqa: E731
        return step, lambda x: fc(features(x)), [features, fc]
    if method == "coral":
        from reference import coral as ref

        # the Caffe CORAL layer on the logits at the digit weight 1; the authors' Caffe solver is not
        # transcribed, so the bench's SGD (momentum 0.9) and annealed rate, as the parity test hands it
        net = nn.Sequential(twin(algo.featurizer), twin(algo.classifier))
        opt = torch.optim.SGD(net.parameters(), lr=algo.hp["lr"], momentum=0.9, weight_decay=algo.hp["weight_decay"])
        tr = ref.DeepCORAL(net, algo.hp["lambda_coral"], opt)
        lr = lambda i: algo.hp["lr"] / (1 + 10 * i / (steps - 1)) ** 0.75  # noqa: E731
        return (lambda i, xs, ys, xt: tr.step(xs, ys, xt, lr(i))), net, [net]
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
    if method in ("dann", "bsp"):
        from reference import dann as ref

        parts = [twin(algo.featurizer.lower), twin(algo.featurizer.upper), twin(algo.classifier), twin(algo.discriminator)]
        tr = ref.PaperTrainer(*parts, steps, bsp=method == "bsp")  # bsp: 1e-4 x BSP of the conv features, as -H bsp=true
        return tr.step, lambda x: parts[2](parts[1](parts[0](x))), parts
    if method == "mcd":
        from reference import mcd as ref

        # the authors' digit solver (classification/main.py: Adam 2e-4, num_k 4); predicts with C1 + C2, as the plugin
        g, c1, c2 = twin(algo.featurizer), twin(algo.c1), twin(algo.c2)
        solver = ref.DigitSolver(g, c1, c2, 2e-4, 4)
        return (lambda i, xs, ys, xt: solver.step(xs, ys, xt)), (lambda x: c1(g(x)) + c2(g(x))), [g, c1, c2]
    if method == "mdd":
        from reference import mdd as ref

        # TLlib's digit line of mdd.sh (lr 0.01); the classifier returns (outputs, adversary's outputs)
        tr = ref.TLlibMDD(twin(algo.featurizer), twin(algo.bottleneck), twin(algo.head), twin(algo.adv_head), lr=0.01)
        return (lambda i, xs, ys, xt: tr.step(xs, ys, xt)), (lambda x: tr.classifier(x)[0]), [tr.classifier]
    if method == "jan":
        from reference import jan as ref

        # TLlib's digit lines of jan.sh (lr 0.01, --scratch); predictions alone in eval, as dan
        tr = ref.TLlibJAN(twin(algo.featurizer), twin(algo.bottleneck), twin(algo.head), lr=0.01, scratch=True)
        return (lambda i, xs, ys, xt: tr.step(xs, ys, xt)), (lambda x: tr.model(x)), [tr.model]
    if method == "self-ensembling":
        from reference import selfensemble as ref

        # the authors' default options; the three views from the plugin's augmentation (theirs is cv2's),
        # as the parity test makes them; the teacher predicts, as the plugin
        student, teacher = twin(algo.student), twin(algo.student)
        tr = ref.Trainer(student, teacher, algo.num_classes)

        def step(i, xs, ys, xt):
            x_src, x_stu, x_tea = algo.views(Batch(xs, ys, xt))
            return tr.f_train(x_src, ys, x_stu, x_tea)
        return step, teacher, [student, teacher]
    if method == "fixmatch":
        from reference import fixmatch as ref

        # Dassl's step (SGD 0.05, threshold 0.95); the four views from the plugin's augmentation, as the
        # parity test makes them; the cosine rate per iteration over --steps, as the plugin steps it
        model = nn.Sequential(twin(algo.featurizer), twin(algo.classifier))
        tr = ref.Trainer(model)

        def step(i, xs, ys, xt, labeled=None):
            b = Batch(xs, ys, xt, labeled)  # labelled target images join the labelled views, as the plugin's
            x_w, x_s, u_w, u_s = algo.views(b)
            lr = 0.05 * (1 + math.cos(math.pi * i / steps)) / 2
            return tr.forward_backward(lr, x_w, x_s, b.labeled_sources()[1], u_w, u_s)
        return step, model, [model]
    if method == "adda":
        from reference import adda as ref

        # the authors' two programs (scripts/svhn-mnist.sh): tools/train.py for the plugin's pretrain_steps
        # (the loop runs every stage's steps), then tools/train_adda.py for --steps; the target network,
        # the classifier included, starts as the source network and predicts (their eval_classification.py)
        pre = algo.hp["pretrain_steps"]
        net, target = twin(algo.source), twin(algo.target)
        source_tr, adapt_tr = ref.SourceTrainer(net), ref.AddaTrainer(net, target, twin(algo.discriminator))

        def step(i, xs, ys, xt):
            if i < pre:
                return source_tr.step(xs, ys)
            if i == pre:
                target.load_state_dict(net.state_dict())
            return adapt_tr.step(xs, xt)
        return step, target, [net, target]
    if method == "mme":
        from reference import mme as ref

        # the authors' step with their digit-size Predictor (cosine on the features, T 0.05), lr 0.01, lamda 0.1,
        # the backbone at 1 x lr (multi 1, trained from scratch), as the parity test's digit regime
        G = twin(algo.featurizer)
        F1 = ref.Predictor(algo.num_classes, algo.featurizer.out_features, 0.05)
        F1.fc.load_state_dict(algo.classifier.fc.state_dict())
        tr = ref.Trainer(G, F1, 0.01, 1.0, 0.1)
        step = lambda i, xs, ys, xt, lab: tr.step(i, xs, ys, lab.x, lab.y, xt)  # noqa: E731
        return step, lambda x: F1(G(x)), [G, F1]
    raise SystemExit(f"unknown method {method!r}; choose from {', '.join(PLUGIN)}")


def train(method: str, src: str, tgt: str, steps: int, seed: int, work: Path, tgt_labeled: int = 0) -> float:
    algo_name, hp = PLUGIN[method]
    cfg = RunConfig(algo=algo_name, src=src, tgt=tgt, steps=steps, eval_every=steps, seed=seed, out=str(work),
                    device="cpu", overrides=hp, tgt_labeled=tgt_labeled)
    built = build(cfg)  # the splits and dabench's initial weights for this seed
    splits, algo = built.splits, built.algorithm
    batch = built.config["hparams"]["batch_size"]
    step, predict, modules = trainer(method, algo, steps)
    torch.manual_seed(seed)
    random.seed(seed)  # fixmatch's RandAugment draws from Python's generator
    n_src, n_tgt = len(splits.src_train), len(splits.tgt_train)
    labeled = splits.tgt_labeled  # the run's labelled target images (--tgt-labeled), or None
    n_lab = len(labeled) if labeled else 0
    iterations = sum(stage.steps for stage in algo.stages())  # adda: its source stage, then --steps
    for i in range(iterations):
        xs, ys = get_batch(splits.src_train, torch.randint(n_src, (batch,)).tolist())
        xt = get_batch(splits.tgt_train, torch.randint(n_tgt, (batch,)).tolist())
        if n_lab:  # dabench's labelled-target batch holds min(batch_size, N) images
            step(i, xs, ys, xt, Labeled(*get_batch(labeled, torch.randint(n_lab, (min(batch, n_lab),)).tolist())))
        else:
            step(i, xs, ys, xt)
    for m in modules:
        m.eval()
    return accuracy(predict, splits.tgt_test)


def dabench_last(runs: Path, method: str, steps: int, first: int, seeds: int, tgt_labeled: int = 0) -> list[float]:
    """dabench's last-step target-test accuracy of ``method``'s runs under ``runs`` (with ``tgt_labeled``
    labelled target images)."""
    algo_name, hp = PLUGIN[method]
    out = {}
    finished, _, _ = read_runs(run_folders(runs)[1])  # done runs, read as the leaderboard reads them
    for run in finished:
        config = run.config
        if config["algo"] != algo_name or config["steps"] != steps or config.get("tgt_labeled", 0) != tgt_labeled:
            continue
        if sorted(config.get("overrides", [])) != sorted(hp):
            continue
        if any(str(config["hparams"][k]).lower() != v for k, v in hp.items()):
            continue
        out[config["seed"]] = run.records[-1]["tgt-test"]["acc"]
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
    ap.add_argument("--tgt-labeled", type=int, default=0, metavar="N",
                    help="labelled target images (RunConfig's tgt_labeled): mme needs them, fixmatch takes them")
    ap.add_argument("--runs", type=Path, default=None, help="a folder of dabench run folders to compare with")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dabench-transcriptions"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    methods = args.methods.split(",")
    for method in methods:
        if method not in PLUGIN:
            raise SystemExit(f"unknown method {method!r}; choose from {', '.join(PLUGIN)}")
        if args.tgt_labeled and method not in LABELED:
            raise SystemExit(f"{method}'s transcription takes no labelled target images: drop --tgt-labeled for it")
        if not args.tgt_labeled and LABELED.get(method) == "must":
            raise SystemExit(f"{method} is semi-supervised: give --tgt-labeled N")
    if args.threads:
        torch.set_num_threads(args.threads)
    labeled = f", {args.tgt_labeled} labelled target images" if args.tgt_labeled else ""
    lines = [f"{args.src} -> {args.tgt}{labeled}, {args.steps} steps, seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, {torch.get_num_threads()} threads; "
             "target-test accuracy (%) at the last step", "",
             "| method | transcription of the authors' setting | per seed | dabench | per seed |", "|---|---:|---|---:|---|"]
    for method in methods:
        t = time.perf_counter()
        ours = []
        for s in range(args.first_seed, args.first_seed + args.seeds):
            ours.append(train(method, args.src, args.tgt, args.steps, s, args.work, args.tgt_labeled))
            print(f"{method} seed {s}: {100 * ours[-1]:.1f} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
        theirs = (dabench_last(args.runs, method, args.steps, args.first_seed, args.seeds, args.tgt_labeled)
                  if args.runs else [])
        lines.append(f"| {method} | {mean_std(ours)} | {', '.join(f'{100 * v:.1f}' for v in ours)} | {mean_std(theirs)} | "
                     f"{', '.join(f'{100 * v:.1f}' for v in theirs)} |")
        print(lines[-1], f"({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
