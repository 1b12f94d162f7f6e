"""What a sweep will cost before it runs: ``dabench sweep --dry-run``.

The seconds per step of each algorithm are measured, never guessed: from the ``timings.jsonl``
of the sweep's finished runs of that algorithm (training, preparation and evaluation, divided
by ``--steps``), or, where none has finished, from a short probe run of its first config in a
temporary folder on this machine's device. A run of N steps is then N times that.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


PROBE_STEPS = 10


@dataclass
class Row:
    algo: str
    todo: int
    done: int
    seconds_per_step: float
    source: str  # where the rate was measured
    hours: float  # device-hours of the runs to do


@dataclass
class Estimate:
    rows: list[Row]
    done: int
    device: str

    @property
    def hours(self) -> float:
        return sum(r.hours for r in self.rows)


def seconds_per_step(run_dir: Path, steps: int) -> float:
    """A finished run's wall time (every stage's preparation, training and evaluation) per --step."""
    lines = (run_dir / "timings.jsonl").read_text().splitlines() if (run_dir / "timings.jsonl").exists() else []
    total = 0.0
    for line in lines:
        try:
            total += float(json.loads(line)["seconds"])
        except (ValueError, KeyError, TypeError):
            break  # a line cut by a crash, and nothing after it
    return total / max(1, steps)


def _probe(cfg) -> float:
    from dabench.runner import run

    with tempfile.TemporaryDirectory(prefix="dabench-probe-") as tmp:
        steps = min(PROBE_STEPS, cfg.steps)
        probe = dataclasses.replace(cfg, steps=steps, eval_every=steps, out=tmp, resume=False, overwrite=False)
        return seconds_per_step(run(probe).run_dir, steps)


def estimate(configs: list) -> Estimate:
    from dabench.launchers import split_finished
    from dabench.runner import resolve_device

    todo, done = split_finished(configs)
    rates: dict[str, list[float]] = defaultdict(list)
    for o in done:
        rates[o.config.algo].append(seconds_per_step(Path(o.run_dir), o.config.steps))
    rows = []
    for algo in dict.fromkeys(c.algo for c in configs):
        mine = [c for c in todo if c.algo == algo]
        if rates[algo]:
            rate, source = sum(rates[algo]) / len(rates[algo]), f"{len(rates[algo])} finished run(s)"
        elif mine:
            rate, source = _probe(mine[0]), f"a {min(PROBE_STEPS, mine[0].steps)}-step probe"
        else:
            rate, source = 0.0, "-"
        hours = sum(c.steps for c in mine) * rate / 3600
        rows.append(Row(algo, len(mine), sum(o.config.algo == algo for o in done), rate, source, hours))
    device = str(resolve_device(configs[0].device)) if configs else "cpu"
    return Estimate(rows, len(done), device)
