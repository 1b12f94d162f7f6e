"""``dabench report RUNS_DIR``: a folder of runs as one HTML page to look at, not read.

One self-contained file (no network: the plots are inline SVG drawn here, pictures inline PNG), so
it can be mailed or attached to a paper's supplement. Per pair of domains: the leaderboard under
every selection method (click a header to sort), each algorithm's training curves (its losses
from ``steps.jsonl``; source val, target val and test from ``results.jsonl``; the line is the mean
over seeds, the band their range), the per-class scores at the step source-val chose as a heatmap
(per-class accuracy or IoU), the t-SNE pictures ``dabench embed`` left and the overlays ``dabench
predict`` left in a run's folder. Then the DG tables, the selection-agreement table, and the runs
that did not count. Like every results reader, it never imports torch.
"""
from __future__ import annotations

import base64
import html
import json
import math
from collections import defaultdict
from pathlib import Path

from dabench.errors import DabenchError
from dabench.results.leaderboard import DGTable, Leaderboard, Table, board, run_folders
from dabench.results.records import FOOTNOTE, RunRecords, mean, read_runs, row_label, seeds_cell, variant, versus
from dabench.results.selection import TEST, get, protocol_methods, select_run
from dabench.runfolder import EMBED, PREDICTIONS, STEPS
from dabench.tasks import CLASS_ACC, task_of

SPLITS = (("src-val", "source val", "#1f77b4"), ("tgt-val", "target val", "#ff7f0e"), ("tgt-test", "target test", "#2ca02c"))
PALETTE = ("#1f77b4", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MAX_POINTS = 150  # a loss curve is averaged into at most this many points
SAMPLES = 4  # prediction overlays shown per run


def report(path: str | Path, out: str | Path = "report.html") -> Path:
    """Write the page for every run folder under ``path`` to ``out``; returns its path."""
    root, dirs = run_folders(path)
    runs, incomplete, skipped = read_runs(dirs)
    if not runs:
        raise DabenchError(f"{root} holds no finished run with target test results ({len(incomplete)} unfinished, "
                           f"{len(skipped)} unreadable), so there is nothing to report. Let a run finish "
                           "(`dabench run ...` writes `done` at its end), then run `dabench report` again.")
    text = page(board(root, runs, incomplete, skipped), runs)
    target = Path(out).expanduser()
    if target.is_dir():
        raise DabenchError(f"--out {target} is a folder; give the file to write, e.g. {target / 'report.html'}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)  # a reader never sees half a page
    return target


def page(lb: Leaderboard, runs: list[RunRecords]) -> str:
    e = html.escape
    body = [f"<h1>dabench report</h1><p>{e(str(lb.root))}: {len(runs)} finished runs"
            f"{f', {len(lb.incomplete)} unfinished' if lb.incomplete else ''}"
            f"{f', {len(lb.skipped)} not counted' if lb.skipped else ''}. {e(FOOTNOTE)}.</p>"]
    pairs: dict[tuple, list[Table]] = defaultdict(list)
    for t in lb.tables:
        pairs[(t.src, t.tgt, t.task, t.protocol)].append(t)
    groups: dict[tuple, list[RunRecords]] = defaultdict(list)
    for r in runs:
        c = r.config
        if c.get("setting") != "dg":
            groups[(str(c["src"]), str(c["tgt"]), str(c["task"]), str(c.get("protocol", "dabench")))].append(r)
    toc = [f'<li><a href="#pair{i}">{e(tables[0].pair)}</a></li>' for i, tables in enumerate(pairs.values())]
    if lb.dg:
        toc.append('<li><a href="#dg">Domain generalisation and multi-source tables</a></li>')
    if lb.agreement:
        toc.append('<li><a href="#agreement">Selection agreement</a></li>')
    body.append(f"<nav><ul>{''.join(toc)}</ul></nav>")
    for i, (key, tables) in enumerate(pairs.items()):
        body.append(f'<section id="pair{i}"><h2>{e(tables[0].pair)}</h2>')
        body += [_table(t, open_=j == 0) for j, t in enumerate(tables)]
        body.append(_heatmap(groups[key]))
        body.append(_curves(groups[key]))
        body.append(_pictures(groups[key], lb.root))
        body.append("</section>")
    dg_runs = [r for r in runs if r.config.get("setting") == "dg"]
    if lb.dg:
        body.append('<section id="dg"><h2>Domain generalisation and multi-source tables</h2>')
        body += [_dg_table(t, open_=j == 0) for j, t in enumerate(lb.dg)]
        if dg_runs:
            body.append("<h3>Training curves, one held-out domain at a time</h3>")
            held: dict[str, list[RunRecords]] = defaultdict(list)
            for r in dg_runs:
                held[str(r.config["tgt"])].append(r)
            body += [_curves(rs, f"<h4>{e(t)} held out</h4>") for t, rs in sorted(held.items())]
        body.append(_pictures(dg_runs, lb.root) + "</section>")
    if lb.agreement:
        body.append(_agreement(lb))
    body.append(_not_counted(lb))
    return TEMPLATE.replace("{body}", "\n".join(b for b in body if b))


def _cell(mean_: float, std: float, n: int) -> str:
    if math.isnan(mean_):
        return '<td data-v="NaN">–</td>'
    spread = f" ± {std:.1f}" if n > 1 else ""
    return f'<td data-v="{mean_:.4f}">{mean_:.1f}{spread}</td>'


def _sortable(caption: str, header: list[str], rows: list[str], open_: bool, summary: str) -> str:
    head = "".join(f'<th title="click to sort">{html.escape(h)}</th>' for h in header)
    return (f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>"
            f'<table class="sortable"><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></details>")


def _table(t: Table, open_: bool) -> str:
    rows = [f"<tr><td>{html.escape(r.label)}</td><td data-v='{r.n}'>{html.escape(seeds_cell(r))}</td>{_cell(r.mean, r.std, r.n)}"
            f"{_cell(r.src_val, 0.0, 1)}<td>{html.escape(versus(r, t.rows))}</td></tr>" for r in t.rows]
    oracle = " (oracle: uses target labels)" if t.method.oracle else ""
    return _sortable(f"Selection: {t.method.title}{oracle}. Target test {t.metric} (%) at the chosen step; vs erm: "
                     "the difference to ERM, beyond or inside twice the larger std.",
                     ["algorithm", "seeds", f"target test {t.metric}", f"source val {t.metric}", "vs erm"], rows, open_,
                     f"{t.method.name}{oracle}")


def _dg_table(t: DGTable, open_: bool) -> str:
    ranks = t.ranks()
    rows = []
    for (label, cells), rank in zip(t.rows, ranks):
        tds = "".join(_cell(c.mean, c.std, c.n) if c else '<td data-v="NaN">–</td>' for c in cells)
        rows.append(f"<tr><td>{html.escape(label)}</td>{tds}{_cell(t.average(cells), 0.0, 1)}"
                    f"{_cell(rank, 0.0, 1)}<td>{html.escape(t.against_erm(cells))}</td></tr>")
    return _sortable(t.caption, ["algorithm", *t.columns, "avg", "rank", "vs erm"], rows, open_, t.title)


def _agreement(lb: Leaderboard) -> str:
    rows = [f"<tr><td>{html.escape(a.pair)}</td><td>{html.escape(a.algo)}</td><td>{html.escape(a.method)}</td>"
            f"<td data-v='{a.runs}'>{a.runs}</td><td data-v='{a.rho:.4f}'>{'–' if math.isnan(a.rho) else f'{a.rho:.2f}'}</td>"
            f"{_cell(a.picked, 0.0, 1)}{_cell(a.oracle, 0.0, 1)}{_cell(a.lost, 0.0, 1)}</tr>" for a in lb.agreement]
    caption = ("How each label-free or source selection method ranks an algorithm's runs against target-oracle-best: "
               "Spearman's rho over the runs, the target test (%) of the run and step it picks, the oracle's, and the "
               "points lost.")
    return ('<section id="agreement"><h2>Selection agreement</h2>'
            + _sortable(caption, ["pair", "algorithm", "method", "runs", "rho", "picked", "oracle", "lost"], rows,
                        True, "agreement with the oracle") + "</section>")


def _not_counted(lb: Leaderboard) -> str:
    items = [f"<li>{html.escape(str(p.relative_to(lb.root)))}: unfinished"
             f"{'' if step is None else f', last evaluated at step {step}'}</li>" for p, step in lb.incomplete]
    items += [f"<li>{html.escape(str(p.relative_to(lb.root)))}: {html.escape(why)}</li>" for p, why in lb.skipped]
    items += [f"<li>{html.escape(str(p.relative_to(lb.root)))}: failed at step {step} (counted in its row's n): "
              f"{html.escape(why)}</li>" for p, step, why in lb.failed]
    if not items:
        return ""
    return f"<section><h2>Runs not in the tables</h2><ul>{''.join(items)}</ul></section>"


def _label(run: RunRecords, group: list[RunRecords]) -> str:
    return row_label(str(run.config["algo"]), run.config.get("tgt_labeled", 0), variant(run, group))


def _by_label(runs: list[RunRecords]) -> dict[str, list[RunRecords]]:
    out: dict[str, list[RunRecords]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (str(r.config["algo"]), str(r.path))):
        out[_label(r, runs)].append(r)
    return out


def per_class(runs: list[RunRecords]) -> tuple[list[str], str, dict[str, list[float]]]:
    """(class names, what the score is, {row label: per-class target-test score (%) at the step
    source-val chose, mean over seeds}) for runs of one pair."""
    config = runs[0].config
    task, classes = task_of(str(config["task"])), list(config.get("classes") or [])
    key = task.per_class or CLASS_ACC
    methods = [m for m in protocol_methods(str(config.get("protocol", "dabench"))) if not m.oracle]
    method = get("source-val") if any(m.name == "source-val" for m in methods) else methods[0]
    out = {}
    for label, rows in _by_label(runs).items():
        seeds: dict[int, list[RunRecords]] = defaultdict(list)
        for r in rows:
            seeds[r.config["seed"]].append(r)
        values = []
        for candidates in seeds.values():
            r, i = select_run(method, [c.records for c in candidates], config["metric"])
            scores = (candidates[r].records[i].get(TEST) or {}).get(key)
            if isinstance(scores, list) and len(scores) == len(classes):
                values.append([math.nan if v is None else 100 * v for v in scores])
        if values:
            out[label] = [mean([v[c] for v in values if not math.isnan(v[c])]) for c in range(len(classes))]
    return classes, f"{'IoU' if task.per_class else 'accuracy'} per class at the step {method.name} chose", out


def _heatmap(runs: list[RunRecords]) -> str:
    classes, what, scores = per_class(runs)
    if not scores:
        return ""  # records from before dabench kept per-class accuracy
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = []
    for label, values in scores.items():
        tds = "".join('<td class="heat" data-v="NaN">–</td>' if math.isnan(v) else
                      f'<td class="heat" data-v="{v:.2f}" style="background:{_heat(v)}">{v:.0f}</td>' for v in values)
        rows.append(f"<tr><td>{html.escape(label)}</td>{tds}</tr>")
    return (f'<h3>Per-class target test</h3><table class="sortable heatmap"><caption>{html.escape(what)} (%), mean '
            f"over seeds.</caption><thead><tr><th>algorithm</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _heat(v: float) -> str:
    """0 % red, 50 % white-ish yellow, 100 % green."""
    t = max(0.0, min(1.0, v / 100))
    r, g = (255, int(80 + 175 * 2 * t)) if t < 0.5 else (int(255 - 175 * 2 * (t - 0.5)), 255)
    return f"rgb({r},{g},{120})"


def _curves(runs: list[RunRecords], heading: str = "<h3>Training curves</h3>") -> str:
    cards = []
    for label, rows in _by_label(runs).items():
        metric = str(rows[0].config["metric"])
        evals = [_series(name, colour, [_eval_points(r, split, metric) for r in rows], scale=100)
                 for split, name, colour in SPLITS]
        evals = [s for s in evals if s]
        losses = _loss_series([_loss_points(r.path / STEPS) for r in rows])
        seeds = len({r.config["seed"] for r in rows})
        cards.append(f'<div class="card"><h4>{html.escape(label)} <small>({seeds} seed{"s" * (seeds != 1)})</small></h4>'
                     f"{chart(f'{metric} (%) by step', evals)}{chart('logged losses by step (log scale)', losses, log=True)}</div>")
    return f'{heading}<div class="cards">{"".join(cards)}</div>' if cards else ""


def _staged(items: list[tuple[str, int, float]]) -> list[tuple[float, float]]:
    """(stage, step, value) in file order -> (x, value), each stage's steps after the previous
    stage's last (multi-stage methods restart their step count)."""
    out, offset, stage, last = [], 0, None, 0
    for st, step, v in items:
        if stage is not None and st != stage:
            offset += last
        stage, last = st, step
        out.append((offset + step, v))
    return out


def _eval_points(run: RunRecords, split: str, metric: str) -> list[tuple[float, float]]:
    items = [(str(rec.get("stage", "train")), int(rec["step"]), (rec.get(split) or {}).get(metric))
             for rec in run.records if rec.get("stage") != "swad"]
    return [(x, v) for x, v in _staged(items) if isinstance(v, (int, float)) and math.isfinite(v)]


def _loss_points(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Every loss of steps.jsonl as (x, value) per name; a torn or foreign line is passed over."""
    items: dict[str, list] = defaultdict(list)
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            rec = json.loads(line)
            step, stage = int(rec["step"]), str(rec.get("stage", "train"))
        except (ValueError, KeyError, TypeError):
            continue
        for k, v in rec.items():
            if k not in ("step", "stage") and isinstance(v, (int, float)):
                items[k].append((stage, step, float(v)))
    return {k: _staged(v) for k, v in items.items()}


def _series(name: str, colour: str, per_seed: list[list[tuple[float, float]]], scale: float = 1.0):
    """Mean over seeds at each x, with the seeds' min and max as its band."""
    at: dict[float, list[float]] = defaultdict(list)
    for points in per_seed:
        for x, v in points:
            at[x].append(scale * v)
    if not at:
        return None
    xs = sorted(at)
    return (name, colour, xs, [mean(at[x]) for x in xs], [min(at[x]) for x in xs], [max(at[x]) for x in xs])


def _loss_series(per_seed: list[dict[str, list[tuple[float, float]]]]) -> list:
    """Each loss averaged into at most MAX_POINTS bins along x (per seed, then over seeds)."""
    names = sorted({k for seed in per_seed for k in seed})
    end = max((x for seed in per_seed for pts in seed.values() for x, _ in pts), default=0)
    width = max(1.0, math.ceil(end / MAX_POINTS))
    out = []
    for i, name in enumerate(names):
        binned = []
        for seed in per_seed:
            bins: dict[float, list[float]] = defaultdict(list)
            for x, v in seed.get(name, []):
                if math.isfinite(v) and v > 0:
                    bins[(math.ceil(x / width)) * width].append(v)
            binned.append([(x, mean(vs)) for x, vs in bins.items()])
        s = _series(name, PALETTE[i % len(PALETTE)], binned)
        if s:
            out.append(s)
    return out


def _pictures(runs: list[RunRecords], root: Path) -> str:
    figures = []
    for r in sorted(runs, key=lambda r: str(r.path)):
        where = html.escape(str(r.path.relative_to(root)))
        for png in sorted((r.path / EMBED).glob("*.png")):
            figures.append(_figure(png, f"{where}: {png.stem.replace('_', ' ')}"))
        for png in sorted((r.path / PREDICTIONS).glob("*_overlay.png"))[:SAMPLES]:
            figures.append(_figure(png, f"{where}: {png.stem}"))
    if not figures:
        return ""
    return f'<h3>Features and predictions</h3><div class="cards">{"".join(figures)}</div>'


def _figure(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def chart(title: str, series: list, log: bool = False, w: int = 420, h: int = 220) -> str:
    """An inline SVG line chart: each series (name, colour, xs, mean, lo, hi) a line over its band."""
    if not series:
        return f'<svg class="chart" width="{w}" height="{h}"><text x="10" y="20">{html.escape(title)}: no data</text></svg>'
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    xs = [x for s in series for x in s[2]]
    ys = [f(v) for s in series for v in s[4] + s[5]]
    x0, x1 = 0.0, max(max(xs), 1.0)  # steps from the start of training
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad
    L, R, T, B = 46, 10, 22, 20
    px = lambda x: L + (x - x0) / (x1 - x0) * (w - L - R)  # noqa: E731
    py = lambda y: T + (y1 - y) / (y1 - y0) * (h - T - B)  # noqa: E731
    parts = [f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">',
             f'<text x="{L}" y="14" class="title">{html.escape(title)}</text>']
    for t in _ticks(y0, y1):
        label = f"{10 ** t:.3g}" if log else f"{t:g}"
        parts.append(f'<line x1="{L}" x2="{w - R}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                     f'<text x="{L - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{label}</text>')
    for t in _ticks(x0, x1):
        parts.append(f'<text x="{px(t):.1f}" y="{h - B + 14}" text-anchor="middle">{t:g}</text>')
    right = w - R
    for name, colour, sx, m, lo, hi in series:
        band = " ".join(f"{px(x):.1f},{py(f(v)):.1f}" for x, v in list(zip(sx, hi)) + list(zip(sx, lo))[::-1])
        line = " ".join(f"{px(x):.1f},{py(f(v)):.1f}" for x, v in zip(sx, m))
        parts.append(f'<polygon points="{band}" fill="{colour}" fill-opacity="0.18" stroke="none"/>'
                     f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.6">'
                     f"<title>{html.escape(name)}: last {m[-1]:.3g}</title></polyline>"
                     f'<text x="{right:.0f}" y="14" text-anchor="end" fill="{colour}">{html.escape(name)}</text>')
        if len(sx) <= 30:  # few points: each is shown
            parts += [f'<circle cx="{px(x):.1f}" cy="{py(f(v)):.1f}" r="2" fill="{colour}"/>' for x, v in zip(sx, m)]
        right -= 6 * len(name) + 12  # the legend runs leftwards along the top margin
    parts.append(f'<rect x="{L}" y="{T}" width="{w - L - R}" height="{h - T - B}" class="frame"/></svg>')
    return "".join(parts)


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dabench report</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2;cursor:pointer}caption{text-align:left;color:#555;
caption-side:bottom;max-width:60em;font-size:12px}summary{cursor:pointer;font-weight:600;margin:.4em 0}
.heatmap td.heat{min-width:2.2em;text-align:center}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;padding:6px;border-radius:4px}.card h4{margin:0 0 4px}svg.chart{display:block;font-size:10px}
svg .grid{stroke:#eee}svg .frame{fill:none;stroke:#999}svg .title{font-weight:600;font-size:11px}
figure{margin:0;max-width:880px}figure img{max-width:100%}figcaption{font-size:12px;color:#555}
</style></head><body>
{body}
<script>
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var up = th.getAttribute("data-dir") !== "up";
      th.setAttribute("data-dir", up ? "up" : "down");
      var key = function (row) {
        var cell = row.cells[col], v = cell.getAttribute("data-v");
        return v === null ? cell.textContent : parseFloat(v);
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), c;
        if (typeof x === "number") { c = isNaN(x) ? 1 : isNaN(y) ? -1 : x - y; if (isNaN(x) || isNaN(y)) return c; }
        else { c = String(x).localeCompare(String(y)); }
        return up ? c : -c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
document.body.setAttribute("data-ready", "1");
</script></body></html>
"""
