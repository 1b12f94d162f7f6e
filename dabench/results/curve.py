"""Data efficiency: target-test results against the number of labelled target images.

The study of semi-supervised DA papers (how far do N labels take each method, and how close to
the fully labelled model): rows are algorithms, columns labelled-target budgets, each cell the
target-test metric under one model-selection method, mean ± std over seeds, in percent, with the
change from the algorithm's own value with every target label ("all").

Reads run folders exactly as the leaderboard does (``dabench.results.records.records``) and never imports
training code; ``dabench curve`` runs the missing runs with the sweep first.

    c = build("gta5", "cityscapes", run_dirs, ["udas", "oracle"], [0, 100, "all"], "source-val")
    write(c, Path("runs/curves"), "gta5_to_cityscapes")   # .md, .csv, .png
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from dabench.results.records import FOOTNOTE, Row, aggregate, read_runs
from dabench.results.selection import Method, get

METRIC_NAMES = {"miou": "mIoU", "acc": "accuracy"}


@dataclass
class Curve:
    src: str
    tgt: str
    metric: str | None  # None: no run finished, so the task is unknown
    method: Method
    algos: list[str]
    budgets: list[int | str]  # the columns, in the order given
    rows: dict[tuple[str, int | str], Row]  # (algo, tgt_labeled) -> finished runs' row
    tgt_train: int | None  # target train images, which "all" labels: where it sits on the x axis
    not_averaged: list[tuple[Path, str]] = field(default_factory=list)  # (run folder, why)

    @property
    def metric_name(self) -> str:
        return METRIC_NAMES.get(self.metric, self.metric or "primary metric")

    @property
    def title(self) -> str:
        oracle = " (oracle: uses target labels)" if self.method.oracle else ""
        return f"{self.src} -> {self.tgt}: target-test {self.metric_name} (%), selection {self.method.name}{oracle}"

    def cell(self, algo: str, n: int | str) -> Row | None:
        """The finished runs' row; None where there is none (the oracle at 0: it always has labels)."""
        row = self.rows.get((algo, n))
        return row if row is not None and not math.isnan(row.mean) else None

    def delta(self, algo: str, n: int | str) -> float | None:
        """Mean at budget n minus the algorithm's mean with all target labels (None if either is missing)."""
        row, full = self.cell(algo, n), self.cell(algo, "all")
        return None if row is None or full is None else row.mean - full.mean

    def text(self, algo: str, n: int | str) -> str:
        row, delta = self.cell(algo, n), self.delta(algo, n)
        if row is None:
            return "-"
        return f"{row.mean:.1f} ± {row.std:.1f}" + (f" ({delta:+.1f})" if delta is not None and n != "all" else "")


def build(src: str, tgt: str, run_dirs: Iterable[str | Path], algos: Sequence[str], budgets: Sequence[int | str],
          selection: str | Method = "source-val") -> Curve:
    """The curve of the finished runs among ``run_dirs`` of the pair src -> tgt."""
    method = get(selection)
    runs, incomplete, skipped = read_runs(Path(p) for p in run_dirs)
    runs = [r for r in runs if (str(r.config["src"]), str(r.config["tgt"])) == (src, tgt)]
    groups: dict[tuple, list] = defaultdict(list)
    for run in runs:
        groups[(str(run.config["algo"]), run.config.get("tgt_labeled", 0))].append(run)
    metric = runs[0].config["metric"] if runs else None
    rows = {key: aggregate(method, key, group, metric, False, 0) for key, group in groups.items()}
    sizes = [(r.config.get("splits") or {}).get("tgt_train") for r in runs]
    tgt_train = max((s for s in sizes if isinstance(s, int)), default=None)
    not_averaged = [(p, f"unfinished, last step {step}") for p, step in incomplete] + skipped
    return Curve(src, tgt, metric, method, list(algos), list(budgets), rows, tgt_train, not_averaged)


def markdown(curve: Curve) -> str:
    header = ["algorithm", *map(str, curve.budgets)]
    lines = [f"# Data efficiency: {curve.src} -> {curve.tgt}", "",
             f"Target-test {curve.metric_name} at the step chosen by {curve.method.name} ({curve.method.title}); "
             f"{FOOTNOTE}. In brackets: the change from the algorithm's own value with all target labels"
             + (f" (all = {curve.tgt_train} target train images)" if curve.tgt_train else "")
             + ". '-': no finished run (the oracle has no 0 column: it always trains on target labels).", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * len(curve.budgets)]
    lines += ["| " + " | ".join([algo, *(curve.text(algo, n) for n in curve.budgets)]) + " |" for algo in curve.algos]
    if curve.not_averaged:
        lines += ["", "Not averaged:", *(f"- {p}: {why}" for p, why in curve.not_averaged)]
    return "\n".join(lines) + "\n"


def csv_text(curve: Curve) -> str:
    """One row per algorithm x budget; empty values where no run finished."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["algorithm", "tgt_labeled", "n_seeds", "mean", "std", "delta_vs_all"])
    num = lambda v: "" if v is None else round(v, 4)  # noqa: E731
    for algo in curve.algos:
        for n in curve.budgets:
            row = curve.cell(algo, n)
            writer.writerow([algo, n, row.n if row else 0, num(row.mean if row else None), num(row.std if row else None),
                             num(curve.delta(algo, n))])
    return buf.getvalue()


def x_of(curve: Curve, n: int | str) -> float:
    """Where a budget sits on the x axis: its count; "all" at the target train size."""
    if n != "all":
        return float(n)
    numbers = [b for b in curve.budgets if b != "all"]
    return float(curve.tgt_train or max(2 * max(numbers, default=0), 1))  # size unrecorded: past the rest


def png(curve: Curve) -> bytes:
    """Line plot, one line per algorithm with std error bars, on a symlog x axis (0 is linear)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for algo in curve.algos:
        cells = [(x_of(curve, n), row) for n in curve.budgets if (row := curve.cell(algo, n))]
        if cells:
            ax.errorbar([x for x, _ in cells], [r.mean for _, r in cells], yerr=[r.std for _, r in cells],
                        marker="o", capsize=3, label=algo)
    ax.set_xscale("symlog", linthresh=1)
    ticks = sorted({x_of(curve, n): n for n in curve.budgets}.items())
    ax.set_xticks([x for x, _ in ticks], [f"all\n({x:.0f})" if n == "all" else str(n) for x, n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled target images")
    ax.set_ylabel(f"target-test {curve.metric_name} (%)")
    ax.set_title(f"{curve.src} → {curve.tgt}: {curve.metric_name}, selection {curve.method.name}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def write(curve: Curve, folder: str | Path, name: str) -> list[Path]:
    """``folder/name.md``, ``.csv`` and ``.png``, each written whole under a temporary name, then renamed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, data in ((".md", markdown(curve).encode()), (".csv", csv_text(curve).encode()), (".png", png(curve))):
        path = folder / f"{name}{suffix}"
        tmp = folder / f".{name}{suffix}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        written.append(path)
    return written
