"""Many runs: algorithms x labelled-target budgets x seeds x hyperparameter samples.

Each run is an ordinary ``run()``; finished ones (with ``done``) are skipped, so a sweep can be
started again after a crash. One failing run does not stop the others.
"""
from __future__ import annotations

import dataclasses
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable

from dabench.errors import DabenchError
from dabench.files import RunHeld
from dabench.registry import algorithms, groups, shared_images
from dabench.runfolder import ERROR_LOG
from dabench.runner import RunConfig, existing_run, run


@dataclass
class Outcome:
    config: RunConfig
    status: str  # "done" | "skipped" (already done) | "held" (another process trains it) | "failed" | "invalid"
    message: str = ""  # one line: what went wrong
    run_dir: str | None = None
    detail: str = ""  # a failed run's full traceback (shown with --debug)
    log: str | None = None  # a failed run's log file (its traceback), when it has one
    final: dict = field(default_factory=dict)


def plan(algos: list[str], seeds: list[int], tgt_labeled: list[int | str], hparam_samples: int, base: RunConfig) -> tuple[list[RunConfig], list[str]]:
    """The configs to run, and notes about combinations left out (and why)."""
    configs, notes = [], []
    known = {algo: _hparam_names(algorithms.get(algo)) for algo in algos}
    unused = sorted(set(base.overrides) - set().union(*known.values()))
    if unused:
        raise DabenchError(f"-H {', '.join(unused)}: no algorithm of this sweep ({', '.join(algos)}) has such a "
                           "hyperparameter. See 'dabench list algorithms'.")
    for algo in algos:
        cls = algorithms.get(algo)
        overrides = {k: v for k, v in base.overrides.items() if k in known[algo]}  # -H applies where it exists
        budgets = tgt_labeled
        if cls.target_labels == "all":  # the oracle: budget 0 means every label, as "all" does
            budgets = list(dict.fromkeys("all" if n in (0, "all") else n for n in tgt_labeled))
        elif cls.target_labels == "required":
            budgets = [n for n in tgt_labeled if n != 0]
            if not budgets:
                notes.append(f"{algo}: left out, it needs labelled target samples; add a budget, e.g. --tgt-labeled 0,100.")
        for n in budgets:
            for seed in seeds:
                for k in range(hparam_samples):
                    configs.append(dataclasses.replace(base, algo=algo, seed=seed, tgt_labeled=n, hparam_index=k,
                                                       overrides=overrides,
                                                       resume="auto", overwrite=False))
    return configs, notes


def group_members(text: str) -> tuple[str, ...]:
    """The domains of ``--dg``: a registered group's (``digits4``, ``pacs``) or a list "a,b,c"."""
    if "," in text:
        members = tuple(m.strip() for m in text.split(","))
    else:
        members = groups.get(text.strip()).members
    if len(members) < 2 or not all(members) or len(set(members)) != len(members):
        raise DabenchError(f"--dg '{text}': a domain group needs at least two different domains (a registered group, "
                           "see 'dabench list groups', or a list a,b,c).")
    return members


def plan_dg(algos: list[str], seeds: list[int], hparam_samples: int, base: RunConfig, members: tuple[str, ...],
            lodo: bool = False, setting: str = "dg") -> tuple[list[RunConfig], list[str]]:
    """Leave-one-domain-out: each member held out in turn (``--setting dg``; ``setting="uda"``:
    multi-source DA, the held-out member the target whose unlabelled images train), training on the
    others. ``lodo``: also the runs DomainBed's leave-one-domain-out selection validates with:
    for held-out t and each other domain v, a run trained on the rest and tested on v. Sources
    that hold a held-out domain's images (``registry.shared_images``) are left out of its runs."""
    held_out = [(t, [m for m in members if m != t]) for t in members]
    if lodo:
        held_out += [(v, [m for m in members if m not in (t, v)]) for t in members for v in members if v != t]
    configs, notes, seen = [], [], set()
    for tgt, sources in held_out:
        if same := shared_images(sources, tgt):
            notes.append(f"held out {tgt}: {', '.join(same)} left out of the sources, it holds {tgt}'s images.")
            sources = [s for s in sources if s not in same]
        if not sources:
            notes.append(f"held out {tgt}: no source left, so no run holds it out.")
            continue
        if (tuple(sources), tgt) in seen:
            continue
        seen.add((tuple(sources), tgt))
        cfg = dataclasses.replace(base, src=",".join(sources), tgt=tgt, setting=setting)
        more, more_notes = plan(algos, seeds, [0], hparam_samples, cfg)
        configs += more
        notes += more_notes
    return configs, list(dict.fromkeys(notes))


def _hparam_names(cls) -> set[str]:
    return set(cls.space("classification")) | set(cls.space("segmentation"))


def run_one(cfg: RunConfig, threads: int | None = None, progress: str | None = None) -> Outcome:
    """One run of a sweep, whatever launches it; never raises. A failed run's traceback is also
    written to ``error.log`` in its run folder (when the run got that far). ``progress``: "live" (a
    bar on a terminal, else lines) or "lines" (plain lines, for processes sharing a terminal)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    reporter = None
    if progress:
        from dabench.progress import make_reporter

        reporter = make_reporter(title=f"{cfg.algo} seed {cfg.seed}", plain=progress == "lines")
    try:
        result = run(cfg, reporter=reporter)
    except RunHeld as exc:
        return Outcome(cfg, "held", str(exc))
    except DabenchError as exc:
        return Outcome(cfg, "invalid", str(exc))
    except Exception as exc:  # noqa: BLE001 - a sweep survives any one run failing
        detail = "".join(traceback.format_exception(exc))
        log = None
        run_dir = existing_run(cfg)
        if run_dir is not None:
            log = run_dir / ERROR_LOG
            log.write_text(detail)
        return Outcome(cfg, "failed", f"{type(exc).__name__}: {exc}", detail=detail, log=str(log) if log else None)
    status = "skipped" if result.already_done else "done"
    return Outcome(cfg, status, run_dir=str(result.run_dir), final=result.final)


def sweep(configs: list[RunConfig], jobs: int = 1, on_outcome: Callable[[Outcome, int, int], None] | None = None,
          progress: bool = False) -> list[Outcome]:
    """Run every config, ``jobs`` at a time in separate processes (1: in this process, in order);
    ``progress``: each run shows its progress (a live bar, or with several jobs plain lines)."""
    outcomes: list[Outcome] = []

    def record(o: Outcome) -> None:
        outcomes.append(o)
        if on_outcome:
            on_outcome(o, len(outcomes), len(configs))

    if jobs <= 1:
        for cfg in configs:
            record(run_one(cfg, progress="live" if progress else None))
        return outcomes
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, cfg, threads, "lines" if progress else None) for cfg in configs]
        for fut in as_completed(futures):
            record(fut.result())
    return outcomes
