"""The training loop: one screen, top to bottom.

Every ``eval_every`` steps: evaluate on source val, target val and target test, append one JSON
line to ``results.jsonl``, keep the weights in ``selected.pt`` when source-val selection now
chooses this step (so the model a table reports is the model ``dabench.load`` gives), then
write the checkpoint (model, optimisers, RNG states, step) atomically. Batches are a pure function of (seed, step), so a resumed run continues with
exactly the batches, random numbers and therefore the numbers of an uninterrupted one.

A multi-stage method declares its stages (``Algorithm.stages``); they share the global step
count, each starts with ``begin_stage`` (which may swap the data its batches come from), and
each ends with a checkpoint, so a run resumes inside any stage.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dabench.algorithm import Algorithm, StageContext, TrainData, autocast
from dabench.layers import upsample
from dabench.data import LABELED_STREAM, TARGET_STREAM, Batch, Labeled, Subset, ordered_batches, source_stream, stream
from dabench import distributed, labelfree, tracking
from dabench.errors import DabenchError, RunFailed
from dabench.files import load_pt
from dabench.metrics import ConfusionMatrix
from dabench.protocol import Splits
from dabench.runfolder import (CACHE, CHECKPOINT, RESULTS, SELECTED, STEPS, TIMINGS, Scan, append_record,
                              scan_records, write_records)
from dabench.results.selection import select
from dabench.swad import BN_STEPS, LossValley, has_batch_norm, recompute_batch_norm
from dabench.tasks import task_of

EVAL_SPLITS = ("src-val", "tgt-val", "tgt-test")


class NullReporter:
    """What the trainer tells the outside world; the CLI passes a rich progress display."""

    def start(self, total: int, done: int, stage: str = "train") -> None: ...
    def advance(self, step: int, losses: dict[str, float]) -> None: ...
    def evaluating(self, step: int) -> None: ...
    def evaluated(self, record: dict) -> None: ...
    def stop(self) -> None: ...


@torch.no_grad()
def evaluate(algo: Algorithm, dataset, task: str, num_classes: int, device: torch.device, precision: str,
             batch_size: int = 256, channels_last: bool = False, workers: int = 0, loss: bool = False) -> dict:
    """The task's scores of ``algo`` on ``dataset``; ``loss``: also the mean cross-entropy over its
    labelled images (pixels), as SWAD's validation loss."""
    algo.eval()
    cm = ConfusionMatrix(num_classes, device)
    ignore = task_of(task).ignore_index
    total = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, labelled count
    rank, size = distributed.world()
    if size > 1:  # sharded: each rank scores every size-th image, the matrices are summed
        dataset = Subset(dataset, range(rank, len(dataset), size))
    for x, y in ordered_batches(dataset, batch_size, workers):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = algo.predict(x)
        if logits.ndim == 4:  # segmentation: score at label resolution
            logits = upsample(logits.float(), y.shape[-2:])
        cm.add(logits.argmax(1), y)
        if loss:
            total[0] += F.cross_entropy(logits.float(), y, ignore_index=-100 if ignore is None else ignore, reduction="sum")
            total[1] += (y != ignore).sum() if ignore is not None else y.numel()
    distributed.sum_(cm.mat)
    algo.train()
    summary = cm.summary(task)
    if loss:
        distributed.sum_(total)
        summary["loss"] = float(total[0] / total[1].clamp_min(1))
    return summary


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain data, so a checkpoint loads with
    ``weights_only=True`` (NumPy's key array as an int64 tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``'s generators. A checkpoint is loaded onto the run's device, but the
    generators take their states as CPU tensors (on a GPU, a resume failed without ``.cpu()``)."""
    torch.set_rng_state(state["torch"].cpu())
    saved = state["numpy"]
    if isinstance(saved, dict):
        keys = saved["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["gauss"]))
    else:  # a checkpoint from before dabench kept it as NumPy's own tuple
        np.random.set_state(saved)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def save_checkpoint(path: Path, algo: Algorithm, step: int, records: int, valley: LossValley | None = None) -> None:
    """The training state after ``step``, which follows ``records`` evaluations in results.jsonl
    (with ``--swad``, the averages too)."""
    if not distributed.is_main():
        return  # rank 0 writes the run folder
    state = {"step": step, "records": records, "model": algo.state_dict(), "rng": rng_state(),
             "optims": {k: o.state_dict() for k, o in algo.optims.items()}, "scaler": algo.scaler.state_dict()}
    if valley is not None:
        state["swad"] = valley.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves the old checkpoint or the new one, never half of one


def save_weights(path: Path, algo: Algorithm, step: int, selection: str) -> None:
    """The model alone (no optimiser), of the step a selection method chose; atomic as checkpoints."""
    if not distributed.is_main():
        return
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "selection": selection, "model": algo.state_dict()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, algo: Algorithm, device: torch.device,
                    valley: LossValley | None = None) -> tuple[int, int | None]:
    """Restore the training state (and ``valley``'s, with ``--swad``); returns (its step, the number
    of evaluations before it; None for a checkpoint from before dabench counted them)."""
    state = load_pt(path, "checkpoint", map_location=device)
    try:
        algo.load_state_dict(state["model"])
        if valley is not None:
            valley.load_state_dict(state["swad"])
        for k, o in algo.optims.items():
            o.load_state_dict(state["optims"][k])
        if state.get("scaler"):
            algo.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        return int(state["step"]), state.get("records")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DabenchError(f"{path} does not hold this run's training state ({type(exc).__name__}: {first[:160]}): it "
                           "was changed or comes from another run. Start again with --overwrite.") from None


def resumed_records(path: Path, start: int, before: int | None) -> list[dict]:
    """The evaluations a run resuming from its checkpoint at ``start`` keeps: those up to it, which
    must all be readable (``before`` of them, as the checkpoint counted). A line cut or damaged past
    the checkpoint is dropped with a warning (the steps after the checkpoint are trained and scored
    again); one before it stops the resume, since its evaluation cannot be read back."""
    scan = scan_records(path)
    kept = [r for r in scan.records if r["step"] <= start]  # evaluations past the checkpoint are redone
    lost = len(kept) < before if before is not None else (scan.bad_line is not None and not scan.torn)
    if lost:
        where = scan.problem(path) if scan.bad_line is not None else f"{path} holds {len(kept)} of them"
        raise DabenchError(f"The checkpoint at step {start} follows {before if before is not None else 'more'} "
                           f"evaluations, but {where}: evaluations before the checkpoint cannot be read back, so the "
                           "run cannot resume with its records whole. Start it again with --overwrite.")
    if scan.bad_line is not None:
        warnings.warn(f"{scan.problem(path)}; dropped: it is past the checkpoint at step {start}, from which the run "
                      "trains and evaluates again.", stacklevel=2)
    return kept


def train_and_evaluate(algo: Algorithm, splits: Splits, *, eval_every: int, seed: int, run_dir: Path,
        device: torch.device, precision: str = "fp32", channels_last: bool = False, resume: bool = False,
        reporter: NullReporter | None = None, workers: int = 0, cache_dir: Path | None = None,
        data_key: dict | None = None, log: str = "jsonl", dev: bool = False, swad: bool = False) -> list[dict]:
    """Train ``algo`` through its stages (one of ``algo.steps`` updates unless it declares more);
    returns every evaluation record of the run. Every step's losses go to ``steps.jsonl`` (and
    to the tracker ``log`` names: "tensorboard", "mlflow"; ``dabench.tracking``). ``dev``: also
    score deep embedded validation at each evaluation (classification). ``swad``: average the
    weights over the source-validation loss valley (``dabench.swad``); the averaged model is scored
    in a last record (stage ``swad``) and saved as ``selected.pt``."""
    reporter = reporter or NullReporter()
    task = task_of(splits.task)
    ckpt, results = run_dir / CHECKPOINT, run_dir / RESULTS
    valley = LossValley() if swad else None
    start, before = load_checkpoint(ckpt, algo, device, valley) if resume and ckpt.exists() else (0, 0)
    records = resumed_records(results, start, before)
    main = distributed.is_main()
    if main:
        write_records(results, records)
    else:
        reporter = NullReporter()
    _check_shards(algo, splits)
    with StepLog(run_dir, start, log if main else None) as step_log:
        ctx = StageContext(TrainData(splits.src_train, splits.tgt_train, splits.tgt_labeled), run_dir,
                           cache_dir or run_dir / CACHE, device, precision, seed, reporter, workers, data_key or {},
                           task.eval_batch)
        # Label-free selection scores unlabelled target images, and DEV weighs source-val ones; in
        # domain generalisation no target image may inform training or selection, so none are scored.
        unlabeled = labelfree.subset(splits.tgt_train, splits.task) if splits.tgt_train is not None else ()
        src_sample = labelfree.subset(splits.src_val, splits.task)
        src_train_sample = labelfree.subset(splits.src_train, splits.task) if dev else None  # DEV's classifier's
        evals = {name: ds for name, ds in {"src-val": splits.src_val, "tgt-val": splits.tgt_val,
                                             "tgt-test": splits.tgt_test}.items() if len(ds)}  # "paper": no hold-outs
        algo.train()

        offset = 0
        for index, stage in enumerate(algo.stages()):
            first, end = max(start, offset), offset + stage.steps
            offset = end
            if first >= end:
                continue  # done before the checkpoint (or a stage of no steps)
            if index and first == end - stage.steps:
                seed_all(seed * 1000 + index)  # a stage's random numbers do not depend on whether earlier ones ran or were cached
            t_begin = time.perf_counter()
            data = algo.begin_stage(stage, ctx, resumed=first > end - stage.steps)
            if data is None:  # its work is cached: skip its steps
                save_checkpoint(ckpt, algo, end, len(records), valley)
                _log_time(run_dir, stage.name, "cached", 0, time.perf_counter() - t_begin)
                continue
            prepare_s = time.perf_counter() - t_begin
            bs = algo.hp["batch_size"]
            src = source_stream(data.src_train, bs, seed, first, end, workers)
            tgt = stream(data.tgt_train, bs, seed, TARGET_STREAM, first, end, workers) if data.tgt_train is not None else None
            lab = (stream(data.tgt_labeled, min(bs, len(data.tgt_labeled)), seed, LABELED_STREAM, first, end, workers)
                   if data.tgt_labeled else None)
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}  # per loss: a term may start after a warm-up (cdan)
            t0, eval_s, evaluations = time.perf_counter(), 0.0, 0
            reporter.start(stage.steps, first - (end - stage.steps), stage.name)
            try:
                for step in range(first, end):
                    local = step - (end - stage.steps)
                    (sx, sy, domain), t = next(src), next(tgt) if tgt is not None else None
                    tx, pseudo = t if isinstance(t, (tuple, list)) else (t, None)
                    labeled = Labeled(*next(lab)) if lab is not None else None
                    batch = Batch(sx, sy, tx, labeled, pseudo, domain).to(device, channels_last)
                    with autocast(device, precision):
                        losses = distributed.average_losses(algo.update(batch, local), device)  # the whole batch's, under torchrun
                    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                    if bad:
                        kept = load_pt(ckpt, "checkpoint")["step"] if ckpt.exists() else 0
                        where = (f"The last good checkpoint (step {kept}) is kept in {run_dir}." if kept else
                                 f"No checkpoint was written before it; {run_dir} keeps its config and this "
                                 "message, and the leaderboard counts the seed as failed.")
                        failed = RunFailed(
                            f"Loss became non-finite at step {step + 1} ({', '.join(f'{k}={v}' for k, v in bad.items())}). "
                            f"{where} Try a smaller learning rate (-H lr=...) or --precision fp32."
                        )
                        failed.step = step + 1
                        raise failed
                    for k, v in losses.items():
                        sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
                    reporter.advance(local + 1, losses)
                    step_log.step(step + 1, stage.name, losses)
                    if valley is not None and stage.evaluate:
                        valley.observe(list(algo.parameters()), step + 1)
                    if (step + 1) % eval_every and step + 1 != end:
                        continue
                    if stage.evaluate:
                        record = {"step": step + 1, "stage": stage.name, "time_s": round(time.perf_counter() - t0, 3),
                                  "losses": {k: v / counts[k] for k, v in sums.items()}}
                        t_eval = time.perf_counter()
                        reporter.evaluating(step + 1)
                        for name, ds in evals.items():
                            record[name] = evaluate(algo, ds, splits.task, len(splits.classes), device, precision,
                                                    task.eval_batch, channels_last, workers, loss=valley is not None and name == "src-val")
                        if len(unlabeled):
                            record[labelfree.SPLIT] = labelfree.scores(
                                algo, unlabeled, splits.task, device, task.eval_batch,
                                lambda: autocast(device, precision), workers, src_sample, src_train_sample)
                        eval_s, evaluations = eval_s + time.perf_counter() - t_eval, evaluations + 1
                        if main:
                            append_record(results, record)
                        records.append(record)
                        if "src-val" in record and select("source-val", records, task.metric) == len(records) - 1:
                            save_weights(run_dir / SELECTED, algo, step + 1, "source-val")
                        reporter.evaluated(record)
                        step_log.evaluated(record)
                        sums, counts = {}, {}
                        if valley is not None:
                            valley.evaluated(record["src-val"]["loss"])
                    step_log.flush()  # before the checkpoint: a resume never finds a step the log lacks
                    save_checkpoint(ckpt, algo, step + 1, len(records), valley)
            finally:
                reporter.stop()
            _log_time(run_dir, stage.name, "prepare", 0, prepare_s)
            _log_time(run_dir, stage.name, "train", end - first, time.perf_counter() - t0 - eval_s)
            _log_time(run_dir, stage.name, "evaluate", 0, eval_s, evaluations=evaluations)
        if valley is not None and not (records and records[-1].get("stage") == SWAD_STAGE):
            record = _swad_record(algo, valley, splits, evals, offset, seed, device, precision, channels_last, workers)
            if main:
                append_record(results, record)
                save_weights(run_dir / SELECTED, algo, offset, SWAD_STAGE)
            records.append(record)
            step_log.evaluated(record)
        return records


SWAD_STAGE = "swad"


def _swad_record(algo: Algorithm, valley: LossValley, splits: Splits, evals: dict, end: int, seed: int,
                 device: torch.device, precision: str, channels_last: bool, workers: int) -> dict:
    """Load SWAD's average into ``algo`` (batch-norm statistics recomputed over 500 training batches
    where there are any) and score it: the run's last record."""
    average, converged = valley.final()
    with torch.no_grad():
        for p, mean in zip(algo.parameters(), average.params):
            p.copy_(mean)
    if has_batch_norm(algo):
        src = source_stream(splits.src_train, algo.hp["batch_size"], seed, end, end + BN_STEPS, workers)
        recompute_batch_norm(algo, (next(src)[0].to(device) for _ in range(BN_STEPS)))
    record = {"step": end, "stage": SWAD_STAGE,
              "swad": {"converged": converged, "dead_valley": valley.dead_valley, "start": average.start,
                       "end": average.end, "n": average.n, "segments": average.parts}}
    for name, ds in evals.items():
        record[name] = evaluate(algo, ds, splits.task, len(splits.classes), device, precision,
                                task_of(splits.task).eval_batch, channels_last, workers)
    return record


class StepLog:
    """The losses of every step: one JSON line each in ``steps.jsonl`` (``{"step", "stage", losses}``,
    the global step after the update), and to the tracker ``--log`` names (``dabench.tracking``:
    TensorBoard or MLflow) the losses under ``train/`` and the evaluations under ``<split>/``. A
    resumed run first drops the lines past its checkpoint, so the file reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, start: int, log: str | None = "jsonl"):
        self.file, self.tracker = None, None
        if log is None:  # not rank 0: it writes nothing
            return
        path = run_dir / STEPS
        scan = scan_records(path) if start else Scan()
        if scan.bad_line is not None:
            warnings.warn(f"{scan.problem(path)}; the step log keeps the steps before it.", stacklevel=2)
        kept = [r for r in scan.records if r["step"] <= start]
        write_records(path, kept)
        self.file = open(path, "a")
        self.tracker = tracking.tracker(log, run_dir, start)  # its package was checked by the runner

    def step(self, step: int, stage: str, losses: dict[str, float]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, "stage": stage, **losses}) + "\n")
        if self.tracker:
            self.tracker.scalars({f"train/{k}": v for k, v in losses.items()}, step)

    def evaluated(self, record: dict) -> None:
        if self.tracker:
            self.tracker.scalars({f"{split}/{k}": v for split in EVAL_SPLITS for k, v in (record.get(split) or {}).items()
                                  if isinstance(v, float)}, record["step"])

    def flush(self) -> None:
        if self.file is None:
            return
        self.file.flush()
        if self.tracker:
            self.tracker.flush()

    def __enter__(self) -> "StepLog":
        return self

    def __exit__(self, kind, *exc) -> None:
        if self.file is not None:
            self.file.close()
        if self.tracker:
            self.tracker.close(finished=kind is None)


def _check_shards(algo: Algorithm, splits: Splits) -> None:
    """Under torchrun, every batch must split evenly over the ranks."""
    size = distributed.world()[1]
    if size == 1:
        return
    sizes = {"-H batch_size": algo.hp["batch_size"]}
    if splits.tgt_labeled:
        sizes["the labelled-target batch (min(batch_size, --tgt-labeled))"] = min(algo.hp["batch_size"], len(splits.tgt_labeled))
    bad = {k: v for k, v in sizes.items() if v % size}
    if bad:
        raise DabenchError(f"{', '.join(f'{k} = {v}' for k, v in bad.items())} does not split over {size} processes: "
                           f"use a multiple of {size}.")


def _log_time(run_dir: Path, stage: str, part: str, steps: int, seconds: float, **extra) -> None:
    """One line of ``timings.jsonl``: how long a stage's preparation (translating, pseudo-labelling),
    its training steps, or its evaluations (``evaluations``: how many) took; a resumed stage adds
    lines of its own."""
    if not distributed.is_main():
        return
    append_record(run_dir / TIMINGS, {"stage": stage, "part": part, "steps": steps, "seconds": round(seconds, 3),
                                              **extra})
