"""Run folders -> tables: target-test results per pair and model-selection method.

Reads only what ``dabench run`` / ``dabench sweep`` leave on disk (``config.json``,
``results.jsonl``, ``done``) and never imports training code, so a results folder copied from a
cluster can be tabulated anywhere.

    print(render(leaderboard("runs"), "markdown"))   # or "latex", "csv"

A cell is the target-test metric at the step each selection method chose from validation
records only (see ``dabench.results.selection``), as mean ± sample std (ddof=1) over seeds, in percent.
With several hyperparameter samples per seed, the same method also picks the sample.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from dabench.errors import DabenchError
from dabench.results.records import (FOOTNOTE, Row, RunRecords, aggregate, load_run, mean, read_runs, row_label,
                                     run_options, seeds_cell, variant, variant_order, variant_text, versus)
from dabench.runfolder import CONFIG, failure, identity
from dabench.tasks import task_of
from dabench.results.selection import AGREEMENT_ORACLE, DG_METHODS, DG_TITLES, LODO_VAL, Method, get, protocol_methods


@dataclass
class Table:
    src: str
    tgt: str
    task: str
    metric: str
    method: Method
    classes: list[str]
    eval_sizes: list[str]  # more than one: runs of this pair were evaluated at different sizes
    rows: list[Row]
    protocol: str = "dabench"  # tables never pool runs of two protocols
    class_subsets: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # as the data set records them
    machines: list[str] = dataclasses.field(default_factory=list)  # the CPU or GPU models its runs trained on

    @property
    def pair(self) -> str:
        return f"{self.src} -> {self.tgt}" + ("" if self.protocol == "dabench" else f" ({self.protocol} protocol)")

    @property
    def per_class(self) -> bool:
        """The task's records hold a per-class score (IoU), shown in a table of its own."""
        return task_of(self.task).per_class is not None

    @property
    def title(self) -> str:
        return f"{self.pair} · {self.method.name}" + (" (oracle: uses target labels)" if self.method.oracle else "")

    @property
    def iou_caption(self) -> str:
        size = ", ".join(self.eval_sizes) or "not recorded"
        extra = "".join(f"; {name} = mean IoU over the {len(names)}-class subset" for name, names in self.subsets.items())
        return (f"Per-class target-test IoU (%), {len(self.classes)} classes, eval size {size} (input; scored at the "
                f"labels' full resolution); mIoU as in the table above{extra}")

    @property
    def subsets(self) -> dict[str, list[int]]:
        """The class subsets a paper reports beside the full mIoU, as the target data set recorded them
        (``Domain.class_subsets``: mIoU13 on the SYNTHIA 16-class tables), by class index."""
        return {name: [self.classes.index(c) for c in names] for name, names in self.class_subsets.items()
                if all(c in self.classes for c in names)}

    def subset_means(self, row: "Row") -> list[float]:
        return [mean([row.iou[i] for i in idx if not math.isnan(row.iou[i])]) for idx in self.subsets.values()]


@dataclass
class Agreement:
    """How one selection method ranks an algorithm's runs of a pair against the oracle that also
    chooses a step (``selection.AGREEMENT_ORACLE``: target-oracle-best)."""

    algo: str
    method: str
    runs: int
    rho: float  # Spearman correlation of the method's score and the oracle's (tgt-val) over the runs
    picked: float  # tgt-test (%) of the run and step the method picks among all of them
    oracle: float  # tgt-test (%) of the run and step target-oracle-best picks
    pair: str = ""

    @property
    def lost(self) -> float:
        return self.oracle - self.picked


@dataclass
class DGTable:
    """Domain generalisation, one selection method: a row per algorithm, a column per held-out
    domain (trained on the others), and their average, as DomainBed prints them."""

    domains: list[str]  # the group: every domain a column holds out
    task: str
    metric: str
    method: Method
    rows: list[tuple[str, list[Row | None]]]  # (label, one cell per column; None: not run)
    columns: list[str]  # the domains some run held out
    protocol: str = "dabench"
    setting: str = "dg"  # "uda": multi-source DA, each column's domain the target (its unlabelled images seen)

    @property
    def title(self) -> str:
        oracle = " (oracle: uses target labels)" if self.method.oracle else ""
        kind = "Domain generalisation" if self.setting == "dg" else "Multi-source DA"
        return f"{kind}, {', '.join(self.domains)} · {self.method.name}{oracle}"

    @property
    def caption(self) -> str:
        return (f"Selection: {DG_TITLES.get(self.method.name, self.method.title)}. Each column: target-test {self.metric} "
                "(%) of the domain held out, trained on the others, mean ± std over seeds (n); avg: the mean of the "
                "columns (– where a column is missing); rank: the mean over columns of each algorithm's rank in the "
                "column (1 the best, ties sharing their ranks), DomainBed's average rank; vs erm: in how many "
                "columns the algorithm is above ERM by more than twice the larger std (↑), inside that spread (=), "
                "or below it (↓); a one-seed cell has no spread of its own, so ERM's alone counts.")

    @staticmethod
    def average(cells: list[Row | None]) -> float:
        values = [c.mean if c else math.nan for c in cells]
        return math.nan if any(math.isnan(v) for v in values) else mean(values)

    def ranks(self) -> list[float]:
        """Each row's mean rank over the columns it has a value in (1: the best mean in the column;
        tied means share the mean of their ranks)."""
        per_row: list[list[float]] = [[] for _ in self.rows]
        for col in range(len(self.columns)):
            scored = [(cells[col].mean, i) for i, (_, cells) in enumerate(self.rows)
                      if cells[col] is not None and not math.isnan(cells[col].mean)]
            for value, i in scored:
                better = sum(1 for v, _ in scored if v > value)
                tied = sum(1 for v, _ in scored if v == value)
                per_row[i].append(better + (tied + 1) / 2)
        return [mean(r) if r else math.nan for r in per_row]

    def against_erm(self, cells: list[Row | None]) -> str:
        """``↑a =b ↓c``: columns above ERM beyond twice the larger std, inside it, below it; empty for
        ERM itself or where the table has no ERM row (without -H variants, at the same run options)."""
        def key(row_cells):
            first = next((c for c in row_cells if c is not None), None)
            return first and (first.algo, first.variant)
        mine = key(cells)
        erm = next((c for _, c in self.rows if mine and key(c) == ("erm", run_options(mine[1]))), None)
        if erm is None or cells is erm:
            return ""
        counts = {"↑": 0, "=": 0, "↓": 0}
        for mine, base in zip(cells, erm):
            if mine is None or base is None or math.isnan(mine.mean) or math.isnan(base.mean):
                continue
            diff, spread = mine.mean - base.mean, 2 * max(mine.std, base.std)
            counts["↑" if diff > spread else "↓" if diff < -spread else "="] += 1
        return " ".join(f"{k}{v}" for k, v in counts.items())


@dataclass
class Leaderboard:
    root: Path
    tables: list[Table]
    incomplete: list[tuple[Path, int | None]]  # (run folder, last step evaluated)
    skipped: list[tuple[Path, str]]  # (run folder, why it could not be read)
    agreement: list[Agreement] = field(default_factory=list)  # algorithms with 3 or more runs of a pair
    dg: list[DGTable] = field(default_factory=list)  # domain generalisation: per held-out domain
    failed: list[tuple[Path, int | None, str]] = field(default_factory=list)  # (run folder, step, message): non-finite loss


def agreement(runs: list[RunRecords], min_runs: int = 3) -> list[Agreement]:
    """For each pair and algorithm with at least ``min_runs`` finished runs (seeds, hyperparameter
    samples): each selection method's pick in every run, its score there and the oracle's at the
    oracle's own pick, their Spearman correlation over the runs, and the target-test value of the
    run and step it would report against the one the oracle would. The oracle is target-oracle-best
    (the best target-validation step of the best run): the methods compared choose a step, and
    DomainBed's target-oracle (the last step) does not."""
    from scipy.stats import spearmanr

    from dabench.results.selection import TEST, get, select, value

    groups: dict[tuple, list[RunRecords]] = defaultdict(list)
    for run in runs:
        c = run.config
        if c.get("protocol", "dabench") == "dabench" and run.records and not is_dg(run):
            groups[(f"{c['src']} -> {c['tgt']}", str(c["algo"]))].append(run)
    def picks(method, group, metric) -> tuple[list[float], list[float], float]:
        """Per run: the method's score at the step it picks, and that step's tgt-test; and the
        tgt-test of the run it ranks first."""
        chosen = [run.records[select(method, run.records, metric)] for run in group]
        scores = [method.score(rec, metric) for rec in chosen]
        tests = [value(rec, TEST, metric) for rec in chosen]
        return scores, tests, tests[max(range(len(group)), key=lambda i: scores[i])]

    out = []
    for (pair, algo), group in sorted(groups.items()):
        if len(group) < min_runs:
            continue
        metric = group[0].config["metric"]
        every = [r for run in group for r in run.records]
        o_scores, _, best_oracle = picks(get(AGREEMENT_ORACLE), group, metric)
        for m in protocol_methods("dabench"):
            if m.oracle or not m.applies(every):
                continue
            scores, _, picked = picks(m, group, metric)
            finite = all(math.isfinite(v) for v in scores + o_scores)
            varied = len(set(scores)) > 1 and len(set(o_scores)) > 1
            rho = float(spearmanr(scores, o_scores).statistic) if finite and varied else math.nan
            out.append(Agreement(algo, m.name, len(group), rho, 100 * picked, 100 * best_oracle, pair))
    return out


def leaderboard(path: str | Path) -> Leaderboard:
    """Every run folder under ``path``: finished ones as tables, the rest listed with why."""
    root, dirs = run_folders(path)
    return board(root, *read_runs(dirs))


def run_folders(path: str | Path) -> tuple[Path, list[Path]]:
    """``path`` and every run folder under it (a folder with a config.json), or a DabenchError
    saying what was expected."""
    root = Path(path).expanduser()
    hint = "run folders (each with a config.json) as written by `dabench run` or `dabench sweep`"
    if not root.is_dir():
        raise DabenchError(f"{root} does not exist or is not a folder. Expected a folder of {hint}, e.g. runs/.")
    configs = sorted(root.rglob(CONFIG))
    if not configs:
        raise DabenchError(f"{root} holds no runs: found no config.json under it. Expected {hint}.")
    return root, [cfg.parent for cfg in configs]


def board(root: Path, runs: list[RunRecords], incomplete: list, skipped: list) -> Leaderboard:
    """The tables of runs already read (``read_runs``): ``leaderboard`` and ``dabench report`` share them."""
    da = [r for r in runs if not is_dg(r)]
    multi = [r for r in da if len(sources(r)) > 1]  # also in their pair's table
    why = {p: failure(p) for p, _ in incomplete}
    stopped = [(load_run(p), why[p]) for p, _ in incomplete if why[p]]  # config read before: readable
    unfinished = [(p, s) for p, s in incomplete if not why[p]]
    return Leaderboard(root, _tables(da, [r for r, _ in stopped if not is_dg(r)]), unfinished, skipped, agreement(da),
                       dg_tables([r for r in runs if is_dg(r)]) + dg_tables(multi, setting="uda"),
                       [(r.path, why["step"], why["message"]) for r, why in stopped])


def is_dg(run: RunRecords) -> bool:
    return run.config.get("setting") == "dg"


def sources(run: RunRecords) -> list[str]:
    return list(run.config.get("sources") or [run.config["src"]])


def _training_key(config: dict) -> str:
    """What a run trained with, apart from its domains: runs that agree on it are one
    configuration held out differently (leave-one-domain-out pairs them)."""
    fields = identity(config)
    for domains in ("src", "tgt", "tgt_labeled", "setting"):
        del fields[domains]
    return json.dumps(fields, sort_keys=True, default=str)


def with_lodo(run: RunRecords, pool: list[RunRecords]) -> RunRecords | None:
    """``run`` (held out t, trained on S) with each record's ``lodo-val``: the mean target-val
    metric, at that step, of the runs of the same configuration that held out each v in S and
    trained on the rest of S (DomainBed's leave-one-domain-out); None when one is missing."""
    metric, key, held = run.config["metric"], _training_key(run.config), set(sources(run))
    validators = []
    for v in sorted(held):
        rest = held - {v}
        found = [r for r in pool if r.config["tgt"] == v and _training_key(r.config) == key and set(sources(r)) <= rest]
        if not rest or not found:
            return None
        validators.append({rec["step"]: rec for rec in max(found, key=lambda r: len(sources(r))).records})
    records = []
    for rec in run.records:
        seen = [(v.get(rec["step"]) or {}).get("tgt-val", {}).get(metric) for v in validators]
        extra = {LODO_VAL: {metric: mean(seen)}} if all(isinstance(s, (int, float)) for s in seen) else {}
        records.append(rec | extra)
    return dataclasses.replace(run, records=records)


def dg_tables(runs: list[RunRecords], setting: str = "dg") -> list[DGTable]:
    """One table per domain group and selection method (``setting`` "uda": multi-source DA runs,
    each column a target trained towards from the other domains). A group is the set of domains of a run
    (its sources and its held-out target) not contained in another run's set: runs trained on
    fewer domains of a group are the validation runs of leave-one-domain-out selection."""
    sets: dict[tuple, list[RunRecords]] = defaultdict(list)
    for run in runs:
        sets[(frozenset(sources(run) + [run.config["tgt"]]), str(run.config.get("protocol", "dabench")))].append(run)
    tables = []
    for (domains, protocol), group in sorted(sets.items(), key=lambda kv: sorted(kv[0][0])):
        if any(domains < other and protocol == p for other, p in sets):
            continue  # validation runs of a larger group
        columns = sorted({r.config["tgt"] for r in group})
        metric, task = group[0].config["metric"], str(group[0].config["task"])
        pool = [r for r in runs if str(r.config.get("protocol", "dabench")) == protocol]
        cells: dict[tuple, list[RunRecords]] = defaultdict(list)  # (algorithm, variant, held out) -> its runs (seeds)
        for r in group:
            cells[(str(r.config["algo"]), variant(r, group), r.config["tgt"])].append(r)
        lodo = {k: [v for r in rs if (v := with_lodo(r, pool))] for k, rs in cells.items()}  # with lodo-val records
        keys = sorted({k[:2] for k in cells}, key=lambda k: (k[0], variant_order(k[1])))
        for method in (get(m) for m in DG_METHODS):
            these = lodo if method.split == LODO_VAL else cells
            rows = [(row_label(algo, 0, var), [aggregate(method, (algo, 0, var), these[(algo, var, t)], metric, False, 0)
                                               if these.get((algo, var, t)) else None for t in columns])
                    for algo, var in keys]
            if any(c for _, row in rows for c in row):
                tables.append(DGTable(sorted(domains), task, metric, method, rows, columns, protocol, setting))
    return tables


def trained_on(config: dict) -> str:
    """The model of the device a run trained on (its GPU, else its CPU), as its config records it."""
    m = config["machine"]
    return str(m.get("device") if m.get("device") not in (None, "cpu") else m.get("cpu"))


def _budget_order(n: int | str) -> tuple:
    return (0, n, "") if isinstance(n, int) else (1, 0, str(n))


def _tables(runs: list[RunRecords], failed: list[RunRecords] = ()) -> list[Table]:
    """A table per pair and selection method; ``failed``: runs that stopped on a non-finite loss, counted
    in their row (its ``failed``) and never averaged."""
    pairs: dict[tuple, list[RunRecords]] = defaultdict(list)
    for run in [*runs, *failed]:
        c = run.config
        pairs[(str(c["src"]), str(c["tgt"]), str(c["task"]), str(c.get("protocol", "dabench")))].append(run)
    tables = []
    for (src, tgt, task, protocol), group in sorted(pairs.items()):
        rows: dict[tuple, list[RunRecords]] = defaultdict(list)
        stopped: dict[tuple, int] = defaultdict(int)
        for run in group:  # the failed runs too, so a row's -H label is the same with or without them
            key = (str(run.config["algo"]), run.config.get("tgt_labeled", 0), variant(run, group))
            if run.done:
                rows[key].append(run)
            else:
                stopped[key] += 1
        finished = [run for run in group if run.done]
        if not finished:
            continue  # every run of the pair failed: they are listed under the tables
        order = sorted({*rows, *stopped}, key=lambda k: (k[0], _budget_order(k[1]), variant_order(k[2])))
        metric, classes = finished[0].config["metric"], list(finished[0].config.get("classes") or [])
        sizes = sorted({str(r.config["eval_size"]) for r in finished if r.config.get("eval_size")})
        every = [r for run in finished for r in run.records]
        seg = task_of(task).per_class is not None
        machines = sorted({trained_on(r.config) for r in finished if isinstance(r.config.get("machine"), dict)})
        for method in protocol_methods(protocol):
            if not method.applies(every):
                continue
            body = [dataclasses.replace(aggregate(method, k, rows[k], metric, seg, len(classes)) if rows.get(k) else
                                        Row(k[0], k[1], 0, math.nan, math.nan, math.nan,
                                            [math.nan] * len(classes) if seg else None, k[2]), failed=stopped[k])
                    for k in order]
            subsets = group[0].config.get("class_subsets") or {}
            tables.append(Table(src, tgt, task, metric, method, classes, sizes, body, protocol, subsets, machines))
    return tables


def _f(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.1f}"


def render(board: Leaderboard, fmt: str, reference: str = "erm", per_seed: bool = False) -> str:
    """The board as ``markdown`` (GitHub tables), ``latex`` (booktabs) or ``csv`` (long format).
    ``reference``: the algorithm each row is compared with (``records.versus``: the difference and
    twice the larger std), in a column of its own where the table has that algorithm. ``per_seed``
    (markdown): each seed's value beside each mean, and a per-seed table under each DG table; the
    csv always has them (``per_seed``: "seed:value" pairs)."""
    renderers = {"markdown": _markdown, "latex": _latex, "csv": _csv}
    if fmt not in renderers:
        raise DabenchError(f"Unknown leaderboard format '{fmt}'. Choose one of: {', '.join(renderers)}.")
    if per_seed and fmt == "latex":
        raise DabenchError("--per-seed is for markdown (a column per table) and csv (always there); latex tables "
                           "keep mean ± std. Use --format markdown or csv.")
    return renderers[fmt](board, reference, per_seed)


def _rank(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.2f}"


def _rel(board: Leaderboard, path: Path) -> str:
    return str(path.relative_to(board.root)) if path != board.root else "."


def _cell(row: Row | None, pm: str = "±") -> str:
    """A DG cell: mean ± std over seeds (n), or – where the held-out domain was not run."""
    if row is None or math.isnan(row.mean):
        return "–"
    if row.n == 1:  # one seed has no spread to show
        return f"{_f(row.mean)} (1)"
    return f"{_f(row.mean)} {pm} {_f(row.std)} ({row.n})"


def _da_cell(row: Row) -> str:
    return _f(row.mean) if row.n <= 1 else f"{_f(row.mean)} ± {_f(row.std)}"  # one seed has no spread, none no value


def _seeds(row: Row | None, sep: str = ", ") -> str:
    """Each seed's value, in seed order: ``0: 46.9, 1: 48.2``."""
    return "–" if row is None else sep.join(f"{seed}: {_f(v)}" for seed, v in row.per_seed)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _markdown(board: Leaderboard, reference: str = "erm", per_seed: bool = False) -> str:
    out = [f"# Leaderboard: {board.root}", "", f"Cells: target-test metric at the step chosen by each model-selection "
           f"method from validation records only; {FOOTNOTE}.", ""]
    if not board.tables and not board.dg:
        out += ["No finished runs yet.", ""]
    for t in board.tables:
        out += [f"## {t.title}", "", f"Selection: {t.method.title}. Metric: {t.metric} ({t.task}).", ""]
        if len(t.machines) > 1:
            out += [f"Runs from {len(t.machines)} machines ({', '.join(t.machines)}): the same seed gives other numbers "
                    "on each, so compare rows made on one.", ""]
        vs = [versus(r, t.rows, reference) for r in t.rows]
        extra = [f"vs {reference} (twice the larger std)"] if any(vs) else []
        seeds = ["per seed"] if per_seed else []
        out += [_md_row(["algorithm", f"tgt-test {t.metric} (%)", "n", f"src-val {t.metric} (%)", *extra, *seeds]),
                "|---|---:|---:|---:|" + "---|" * (len(extra) + len(seeds))]
        out += [_md_row([r.label, _da_cell(r), seeds_cell(r), _f(r.src_val), *([v] if extra else []),
                         *([_seeds(r)] if per_seed else [])]) for r, v in zip(t.rows, vs)]
        if t.per_class:
            out += ["", f"{t.title}. {t.iou_caption}.", "", _md_row(["algorithm", *t.classes, "mIoU", *t.subsets]),
                    "|---|" + "---:|" * (len(t.classes) + 1 + len(t.subsets))]
            out += [_md_row([r.label, *map(_f, r.iou or []), _f(r.mean), *map(_f, t.subset_means(r))]) for r in t.rows]
        out.append("")
    for t in board.dg:
        out += [f"## {t.title}", "", t.caption, "", _md_row(["algorithm", *t.columns, "avg", "rank", "vs erm"]),
                "|---|" + "---:|" * (len(t.columns) + 2) + "---|"]
        out += [_md_row([label, *(_cell(c) for c in cells), _f(t.average(cells)), _rank(rank), t.against_erm(cells)])
                for (label, cells), rank in zip(t.rows, t.ranks())] + [""]
        if per_seed:
            out += [f"{t.title}, per seed (seed: value):", "", _md_row(["algorithm", *t.columns]),
                    "|---|" + "---|" * len(t.columns)]
            out += [_md_row([label, *(_seeds(c) for c in cells)]) for label, cells in t.rows] + [""]
    if board.agreement:
        out += [f"## Model selection against {AGREEMENT_ORACLE}", "",
                "Over each algorithm's runs of a pair (seeds, hyperparameter samples): the Spearman correlation of "
                f"each method's score at its chosen step with {AGREEMENT_ORACLE}'s (the best target-validation step "
                "of each run), and the target-test value of the run and step the method picks against the one "
                f"{AGREEMENT_ORACLE} picks (an oracle that chooses the step, as these methods do; target-oracle, "
                "DomainBed's, keeps the last step).", "",
                _md_row(["pair", "algorithm", "selection", "runs", "Spearman", "tgt-test picked (%)",
                         "tgt-test oracle (%)", "lost"]), "|---|---|---|---:|---:|---:|---:|---:|"]
        out += [_md_row([a.pair, a.algo, a.method, str(a.runs), "–" if math.isnan(a.rho) else f"{a.rho:.2f}",
                         _f(a.picked), _f(a.oracle), _f(a.lost)]) for a in board.agreement] + [""]
    if board.failed:
        out += ["## Failed runs (a non-finite loss; counted in their row's n, not averaged)", "",
                "| run folder | step | message |", "|---|---:|---|"]
        out += [_md_row([_rel(board, p), "?" if s is None else str(s), why]) for p, s, why in board.failed] + [""]
    if board.incomplete:
        out += ["## Incomplete runs (no `done`; not averaged)", "", "| run folder | last step |", "|---|---:|"]
        out += [_md_row([_rel(board, p), "none" if s is None else str(s)]) for p, s in board.incomplete] + [""]
    if board.skipped:
        out += ["## Skipped", "", "| run folder | reason |", "|---|---|"]
        out += [_md_row([_rel(board, p), why]) for p, why in board.skipped] + [""]
    return "\n".join(out)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_f(v: float) -> str:
    return "--" if math.isnan(v) else f"{v:.1f}"


def _tex_table(caption: str, label: str, header: list[str], rows: list[list[str]], wide: bool = False) -> list[str]:
    tabular = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule", " & ".join(header) + r" \\",
               r"\midrule", *(" & ".join(r) + r" \\" for r in rows), r"\bottomrule", r"\end{tabular}"]
    if wide:  # many classes: scale to the text width (needs \usepackage{graphicx})
        tabular = [r"\resizebox{\linewidth}{!}{%", *tabular, "}"]
    return [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}", *tabular,
            r"\end{table}", ""]


def _latex(board: Leaderboard, reference: str = "erm", per_seed: bool = False) -> str:  # per_seed: refused above
    out = ["% dabench leaderboard: " + tex(board.root), r"% needs \usepackage{booktabs} (and graphicx for per-class tables)", ""]
    footnote = tex(FOOTNOTE).replace("±", r"$\pm$")
    for t in board.tables:
        pair = rf"{tex(t.src)} $\rightarrow$ {tex(t.tgt)}" + ("" if t.protocol == "dabench" else f" ({tex(t.protocol)} protocol)")
        oracle = f" (oracle: uses target labels; {tex(t.method.title)})" if t.method.oracle else ""
        label = "tab:" + "".join(ch if ch.isalnum() else "-" for ch in f"{t.src}-{t.tgt}-{t.protocol}-{t.method.name}")
        caption = (f"{pair}, model selection: {tex(t.method.name)}{oracle}. Target-test {tex(t.metric)} (\\%) at the "
                   f"step chosen from validation records only; {footnote}.")
        rows = [[tex(r.label), f"{_tex_f(r.mean)} $\\pm$ {_tex_f(r.std)}", tex(seeds_cell(r)), _tex_f(r.src_val)] for r in t.rows]
        out += _tex_table(caption, label, ["Algorithm", f"tgt-test {tex(t.metric)} (\\%)", "$n$",
                                           f"src-val {tex(t.metric)} (\\%)"], rows)
        if t.per_class:
            rows = [[tex(r.label), *map(_tex_f, r.iou or []), _tex_f(r.mean), *map(_tex_f, t.subset_means(r))]
                    for r in t.rows]
            out += _tex_table(f"{pair}, model selection: {tex(t.method.name)}{oracle}. {tex(t.iou_caption)}.",
                              label + "-iou", ["Algorithm", *map(tex, t.classes), "mIoU", *t.subsets], rows, wide=True)
    for t in board.dg:
        label = "tab:dg-" + "".join(ch if ch.isalnum() else "-" for ch in f"{'-'.join(t.domains)}-{t.method.name}")
        rows = [[tex(lab), *(_cell(c, "$\\pm$").replace("–", "--") for c in cells), _tex_f(t.average(cells)), _rank(rank).replace("–", "--"),
                 tex(t.against_erm(cells)).replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")]
                for (lab, cells), rank in zip(t.rows, t.ranks())]
        out += _tex_table(f"{tex(t.title)}. {tex(t.caption)}".replace("±", r"$\pm$"), label,
                          ["Algorithm", *map(tex, t.columns), "Avg", "Rank", "vs ERM"], rows)
    if board.agreement:
        rows = [[tex(a.pair).replace("->", r"$\rightarrow$"), tex(a.algo), tex(a.method), str(a.runs),
                 "--" if math.isnan(a.rho) else f"{a.rho:.2f}", _tex_f(a.picked), _tex_f(a.oracle), _tex_f(a.lost)]
                for a in board.agreement]
        out += _tex_table(f"Model selection against {tex(AGREEMENT_ORACLE)} (the best target-validation step) over "
                          "each algorithm's runs of a pair: Spearman correlation of each method's score with "
                          f"{tex(AGREEMENT_ORACLE)}'s, and the target-test value (\\%) of the run and step each picks "
                          f"against {tex(AGREEMENT_ORACLE)}'s pick.", "tab:selection-agreement",
                          ["Pair", "Algorithm", "Selection", "Runs", "Spearman", "Picked", "Oracle", "Lost"], rows)
    for p, step, why in board.failed:
        out.append(f"% failed (non-finite loss at step {step}; counted in its row's n, not averaged): {tex(_rel(board, p))}")
    for p, step in board.incomplete:
        out.append(f"% incomplete (not averaged): {tex(_rel(board, p))}, last step {step}")
    for p, why in board.skipped:
        out.append(f"% skipped: {tex(_rel(board, p))}: {tex(why)}")
    return "\n".join(out) + "\n"


def _csv_seeds(row: Row) -> str:
    return " ".join(f"{seed}:{round(v, 4)}" for seed, v in row.per_seed)


def _csv(board: Leaderboard, reference: str = "erm", per_seed: bool = False) -> str:
    """One long table, values in percent; per-class IoU columns (iou_<class>) for segmentation pairs;
    every row's per_seed values whatever ``per_seed`` says."""
    classes = list(dict.fromkeys(c for t in board.tables if t.per_class for c in t.classes))
    fields = ["pair", "src", "tgt", "task", "protocol", "metric", "selection", "oracle", "algorithm", "variant", "tgt_labeled", "n",
              "mean", "std", "src_val", "per_seed", "failed", *(f"iou_{c}" for c in classes)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, restval="", lineterminator="\n")
    writer.writeheader()
    num = lambda v: "" if math.isnan(v) else round(v, 4)  # noqa: E731
    for t in board.tables:
        for r in t.rows:
            row = dict(pair=t.pair, src=t.src, tgt=t.tgt, task=t.task, protocol=t.protocol, metric=t.metric,
                       selection=t.method.name,
                       oracle=t.method.oracle, algorithm=r.algo, variant=variant_text(r.variant, "; "),
                       tgt_labeled=r.tgt_labeled, n=r.n, mean=num(r.mean),
                       std=num(r.std), src_val=num(r.src_val), per_seed=_csv_seeds(r), failed=r.failed)
            writer.writerow(row | {f"iou_{c}": num(v) for c, v in zip(t.classes, r.iou or [])})
    for t in board.dg:
        for label, cells in t.rows:
            for tgt, r in zip(t.columns, cells):
                if r is None:
                    continue
                src = ",".join(d for d in t.domains if d != tgt)
                writer.writerow(dict(pair=f"{src} -> {tgt} (dg)", src=src, tgt=tgt, task=t.task, protocol=t.protocol,
                                     metric=t.metric, selection=t.method.name, oracle=t.method.oracle, algorithm=r.algo,
                                     variant=variant_text(r.variant, "; "), tgt_labeled=0, n=r.n,
                                     mean=num(r.mean), std=num(r.std), src_val=num(r.src_val), per_seed=_csv_seeds(r)))
    return buf.getvalue()
