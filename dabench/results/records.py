"""Run folders as results: reading them, and one table row per algorithm from its seeds.

Shared by ``dabench leaderboard`` and ``dabench curve``. Reads only what runs leave on disk
(``config.json``, ``results.jsonl``, ``done``) and never imports training code (nor torch), so a
results folder copied from a cluster can be tabulated anywhere. A row's value is the target-test
metric at the step each selection method chose from validation records only (see
``dabench.results.selection``), as mean ± sample std (ddof=1) over seeds, in percent.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dabench.runfolder import CONFIG, RESULTS, is_done, scan_records
from dabench.results.selection import TEST, Method, select_run

REQUIRED = ("algo", "src", "tgt", "seed", "task", "metric")
FOOTNOTE = "mean ± sample std (ddof=1) over n seeds, in percent; a one-seed value has no ±"


@dataclass
class RunRecords:
    """A run folder as the tables read it: its config and evaluation records (``dabench.api.Run`` is
    a trained model; this is what it left on disk)."""

    path: Path
    config: dict
    records: list[dict]
    done: bool
    damage: str = ""  # results.jsonl's first unreadable line, if any (the records stop before it)


@dataclass
class Row:
    algo: str
    tgt_labeled: int | str
    n: int  # seeds
    mean: float  # target test, percent
    std: float  # sample std (ddof=1), 0 when n == 1
    src_val: float  # mean source-validation metric at the chosen steps, percent
    iou: list[float] | None = None  # segmentation: per-class target-test IoU, mean over seeds, percent
    variant: tuple = ()  # ((hyperparameter, value), ...) set with -H that tell this row from its siblings
    per_seed: tuple = ()  # ((seed, target test percent), ...) in seed order: the values the mean is over
    failed: int = 0  # seeds of this row that stopped on a non-finite loss (not in n, the mean or the std)

    @property
    def label(self) -> str:
        return row_label(self.algo, self.tgt_labeled, self.variant)


def versus(row: Row, rows: list[Row], reference: str = "erm") -> str:
    """``+15.1 (beyond 5.6)``: ``row``'s mean minus the reference algorithm's (its row without -H
    variants at the same labelled-target budget and the same ``RUN_OPTIONS``: steps, network),
    against twice the larger of their stds: "beyond" where the difference exceeds it (a gain or a
    loss that holds), "inside" where it does not; "" for the reference itself, where the table has
    none, or for one seed against one seed (no spread to compare with)."""
    ref = next((r for r in rows if r.algo == reference and r.variant == run_options(row.variant)
                and r.tgt_labeled == row.tgt_labeled), None)
    if row.failed and ref is not row:
        return f"{row.failed} of {row.n + row.failed} seeds failed (non-finite loss): not compared"
    if ref is None or ref is row or math.isnan(row.mean) or math.isnan(ref.mean) or (row.n < 2 and ref.n < 2):
        return ""
    diff, spread = row.mean - ref.mean, 2 * max(row.std, ref.std)
    return f"{diff:+.1f} ({'beyond' if abs(diff) > spread else 'inside'} {spread:.1f})"


def variant_text(variant: tuple, sep: str = ", ") -> str:
    """``key=value`` of each -H or run option, values as the command line writes them (``bsp=true``)."""
    return sep.join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in variant)


def seeds_cell(row: Row) -> str:
    """A row's n: its seeds with a number, and those that stopped on a non-finite loss."""
    return f"{row.n} (+{row.failed} failed)" if row.failed else str(row.n)


def row_label(algo: str, tgt_labeled: int | str, variant: tuple = ()) -> str:
    """A table row's name: the algorithm, with its -H variant and labelled-target budget."""
    parts = [variant_text(variant)] if variant else []
    if tgt_labeled == "all":
        parts.append("all labels")
    elif tgt_labeled:
        parts.append(f"N={tgt_labeled}")
    return f"{algo} ({', '.join(parts)})" if parts else algo


def load_run(run_dir: Path) -> RunRecords:
    config = json.loads((run_dir / CONFIG).read_text())
    if not isinstance(config, dict):
        raise ValueError("config.json is not a JSON object")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ValueError(f"config.json lacks {', '.join(missing)}")
    if not isinstance(config["seed"], int) or not isinstance(config.get("tgt_labeled", 0), (int, str)):
        raise ValueError("config.json has a seed or tgt_labeled that is not a number (or 'all')")
    scan = scan_records(run_dir / RESULTS)
    damage = scan.problem(run_dir / RESULTS) if scan.bad_line is not None else ""
    return RunRecords(run_dir, config, scan.records, is_done(run_dir), damage)


def read_runs(run_dirs: Iterable[Path]) -> tuple[list[RunRecords], list[tuple[Path, int | None]], list[tuple[Path, str]]]:
    """(finished runs with records, unfinished ones with their last step, unreadable ones with why)."""
    runs, incomplete, skipped = [], [], []
    for run_dir in run_dirs:
        try:
            run = load_run(run_dir)
        except (OSError, ValueError) as exc:
            skipped.append((run_dir, f"unreadable config.json: {exc}"))
            continue
        if not run.done:  # still training (its last line may be mid-write) or stopped
            incomplete.append((run_dir, run.records[-1]["step"] if run.records else None))
        elif run.damage:
            skipped.append((run_dir, f"finished, but {run.damage.replace(str(run_dir) + '/', '')}: its records "
                                     "cannot all be read, so it counts nowhere"))
        elif not run.records:
            skipped.append((run_dir, "finished (has done) but results.jsonl has no evaluation records"))
        elif TEST not in run.records[-1]:
            skipped.append((run_dir, "no target test results: its target was given without labels"))
        else:
            runs.append(run)
    return runs, incomplete, skipped


# Run options that make another experiment of the same algorithm (a budget, a network): runs that
# differ in one are rows of their own, never seeds or search samples of one row.
RUN_OPTIONS = ("steps", "backbone", "pretrained", "image_size", "precision", "eval_every")


def run_options(var: tuple) -> tuple:
    """The ``RUN_OPTIONS`` part of a ``variant`` (what the reference row must share)."""
    return tuple((k, v) for k, v in var if k in RUN_OPTIONS)


def variant(run: RunRecords, group: list[RunRecords]) -> tuple:
    """The hyperparameters set with -H whose values differ between runs of this algorithm in the
    table (an ablation: ``udas`` with ``translator=none``) or that some run of the table did not set
    (``dann -H bsp=true`` beside runs without it is never labelled plain ``dann``; a -H every run
    shares names no row), then the ``RUN_OPTIONS`` that differ between any runs of the table (every
    row then names its ``steps=...``), as ((name, value), ...). Runs that differ only in
    random-search samples share a row and model selection picks among them."""
    algo = run.config["algo"]
    peers = [r for r in group if r.config["algo"] == algo]
    keys = sorted({k for r in peers for k in r.config.get("overrides") or []})
    varying = [k for k in keys if len({json.dumps((r.config.get("hparams") or {}).get(k)) for r in peers}) > 1
               or any(k not in (r.config.get("overrides") or []) for r in group)]
    options = [k for k in RUN_OPTIONS if len({json.dumps(r.config.get(k), default=str) for r in group}) > 1]
    swad = (("swad", True),) if run.config.get("swad") else ()  # the weight average is its own row
    return (tuple((k, (run.config.get("hparams") or {}).get(k)) for k in varying)
            + tuple((k, run.config.get(k)) for k in options) + swad)


def variant_order(var: tuple) -> tuple:
    """A sort key for ``variant`` tuples: numbers by value (steps=2000 before steps=10000), the rest
    as text."""
    return tuple((k, (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v)))
                 for k, v in var)


def aggregate(method: Method, key: tuple, runs: list[RunRecords], metric: str, seg: bool, n_classes: int) -> Row:
    """One row for key (algo, tgt_labeled): each seed's selected target-test value, mean ± std over seeds."""
    seeds: dict = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r.config.get("hparam_index", 0), str(r.path))):
        seeds[run.config["seed"]].append(run)
    test, src, ious = [], [], []
    for _, candidates in sorted(seeds.items()):
        r, i = select_run(method, [c.records for c in candidates], metric)
        record = candidates[r].records[i]  # the only place a test value is read
        test.append(100 * _num((record.get(TEST) or {}).get(metric)))
        src.append(100 * _num((record.get("src-val") or {}).get(metric)))
        ious.append((record.get(TEST) or {}).get("iou") or [])
    average, std = _mean_std(test)
    iou = [mean([100 * v[c] for v in ious if c < len(v) and v[c] is not None]) for c in range(n_classes)]
    return Row(key[0], key[1], len(test), average, std, mean(src), iou if seg else None, key[2] if len(key) > 2 else (),
               tuple(zip(sorted(seeds), test)))


def _num(v) -> float:
    return math.nan if v is None else float(v)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = mean(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
