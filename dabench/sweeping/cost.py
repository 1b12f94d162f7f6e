"""What a sweep will cost before it runs: ``dabench sweep --dry-run``.

The cost of each algorithm's runs is measured, never guessed: from the ``timings.jsonl`` of the
sweep's finished runs of that algorithm, or, where none has finished, from a short probe run of
its first config (10 steps and one evaluation) in a temporary folder on this machine's device.
Training (preparation and steps) scales with ``--steps``; evaluation with the number of
evaluations, ``ceil(steps / eval_every)`` per stage, each reading source val, target val and
target test. The plan shows the share of the time that evaluation takes.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dabench.runfolder import CONFIG, TIMINGS


PROBE_STEPS = 10


@dataclass
class Cost:
    """What one measured run cost, split as ``timings.jsonl`` splits it."""

    steps: int  # the run's --steps
    evaluations_per_stage: int  # ceil(steps / eval_every): a stage evaluates that often
    work_s: float  # preparation and training steps
    eval_s: float | None  # its evaluations (None: an older run whose training time includes them)
    evaluations: int
    task: str | None

    def project(self, steps: int, eval_every: int) -> tuple[float, float]:
        """(training, evaluation) seconds of a run of ``steps`` evaluating every ``eval_every``:
        training scales with the steps, evaluation with the number of evaluations."""
        work = self.work_s * steps / max(1, self.steps)
        if not self.eval_s or not self.evaluations:
            return work, 0.0
        stages = self.evaluations / max(1, self.evaluations_per_stage)  # stages that evaluate
        return work, self.eval_s / self.evaluations * stages * -(-steps // eval_every)


@dataclass
class Row:
    algo: str
    todo: int
    done: int
    seconds_per_step: float  # preparation and training, evaluations excluded
    seconds_per_eval: float | None  # one evaluation of every split (None: not measured apart)
    eval_share: float | None  # the fraction of the runs' time spent evaluating
    source: str  # where the rates were measured
    hours: float  # device-hours of the runs to do


@dataclass
class Estimate:
    rows: list[Row]
    done: int
    device: str

    @property
    def hours(self) -> float:
        return sum(r.hours for r in self.rows)


def cost(run_dir: Path) -> Cost:
    """A finished run's cost from its ``timings.jsonl`` and ``config.json``."""
    config = json.loads((run_dir / CONFIG).read_text())
    work, eval_s, evaluations, split = 0.0, 0.0, 0, False
    path = run_dir / TIMINGS
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            t = json.loads(line)
            if t["part"] == "evaluate":
                eval_s, evaluations, split = eval_s + float(t["seconds"]), evaluations + int(t["evaluations"]), True
            else:
                work += float(t["seconds"])
        except (ValueError, KeyError, TypeError):
            break  # a line cut by a crash, and nothing after it
    steps, every = int(config["steps"]), int(config["eval_every"])
    return Cost(steps, -(-steps // every), work, eval_s if split else None, evaluations, config.get("task"))


def _probe(cfg) -> Cost:
    from dabench.runner import run

    with tempfile.TemporaryDirectory(prefix="dabench-probe-") as tmp:
        steps = min(PROBE_STEPS, cfg.steps)
        probe = dataclasses.replace(cfg, steps=steps, eval_every=steps, out=tmp, resume=False, overwrite=False)
        return cost(run(probe).run_dir)


def estimate(configs: list) -> Estimate:
    from dabench.sweeping.launchers import split_finished
    from dabench.runner import eval_every_for, resolve_device

    todo, done = split_finished(configs)
    measured: dict[str, list[Cost]] = defaultdict(list)
    for o in done:
        measured[o.config.algo].append(cost(Path(o.run_dir)))
    rows = []
    for algo in dict.fromkeys(c.algo for c in configs):
        mine = [c for c in todo if c.algo == algo]
        costs = measured[algo]
        if costs:
            source = f"{len(costs)} finished run{'s' if len(costs) > 1 else ''}"
        elif mine:
            costs, source = [_probe(mine[0])], f"a {min(PROBE_STEPS, mine[0].steps)}-step probe"
        else:
            rows.append(Row(algo, 0, 0, 0.0, None, None, "-", 0.0))
            continue
        work = evals = 0.0
        for c in mine:  # each run projected from the mean of the measured ones
            parts = [m.project(c.steps, eval_every_for(m.task, c.steps, c.eval_every)) for m in costs]
            work += sum(p[0] for p in parts) / len(parts)
            evals += sum(p[1] for p in parts) / len(parts)
        split = [m for m in costs if m.eval_s is not None and m.evaluations]
        per_eval = sum(m.eval_s / m.evaluations for m in split) / len(split) if split else None
        per_step = sum(m.work_s / m.steps for m in costs) / len(costs)
        share = evals / (work + evals) if split and work + evals > 0 else None
        done_n = sum(o.config.algo == algo for o in done)
        rows.append(Row(algo, len(mine), done_n, per_step, per_eval, share, source, (work + evals) / 3600))
    device = str(resolve_device(configs[0].device)) if configs else "cpu"
    return Estimate(rows, len(done), device)
