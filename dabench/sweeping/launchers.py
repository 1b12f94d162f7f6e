"""Where a sweep's runs execute: local processes, Slurm jobs (submitit) or a Ray cluster.

A launcher only calls ``dabench.sweep.run_one(config)`` (the same ``run`` as ``dabench run``) and
holds no state of its own: a run's folder and ``done`` marker are the state, so a re-submitted
sweep skips finished runs, whatever launched them. Finished runs are found before anything is
submitted (``dabench.runner.finished_run``: no data loaded, no network built).

    outcomes = launch(configs, Launcher("submitit", slurm={"partition": "gpu", "gpus_per_node": 1}))

submitit and ray are extras (``pip install 'dabench[slurm]'``, ``'dabench[ray]'``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dabench.errors import DabenchError
from dabench.runfolder import run_records
from dabench.runner import RunConfig, finished_run
from dabench.sweeping.sweep import Outcome, run_one, sweep

LAUNCHERS = ("local", "submitit", "ray")
EXTRAS = {"submitit": ("submitit", "slurm"), "ray": ("ray", "ray")}


@dataclass
class Launcher:
    """How to launch: ``name`` one of LAUNCHERS; ``jobs`` local processes; ``slurm``: submitit's
    executor parameters (any ``slurm_*`` one sbatch takes, written without the prefix, e.g.
    ``partition``, ``gpus_per_node``, ``timeout_min``, ``account``, ``array_parallelism``;
    ``cluster=local`` runs the jobs as local processes, to try a sweep without a cluster);
    ``ray_address`` (None: a local Ray instance), ``gpus_per_run`` (None: 1 where the Ray cluster
    has GPUs, else 0) and ``cpus_per_run``."""

    name: str = "local"
    jobs: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)
    ray_address: str | None = None
    gpus_per_run: float | None = None
    cpus_per_run: int = 1


def require(name: str):
    """The launcher's package, or a DabenchError with the pip command for its extra."""
    if name not in LAUNCHERS:
        raise DabenchError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got '{name}'.")
    if name == "local":
        return None
    module, extra = EXTRAS[name]
    try:
        return __import__(module)
    except ImportError:
        raise DabenchError(f"--launcher {name} needs the {module} package: pip install 'dabench[{extra}]'.") from None


def split_finished(configs: list[RunConfig]) -> tuple[list[RunConfig], list[Outcome]]:
    """(configs still to run, outcomes of the finished ones), without building anything."""
    todo, done = [], []
    for cfg in configs:
        run_dir = finished_run(cfg)
        if run_dir is None:
            todo.append(cfg)
        else:
            records = run_records(run_dir)
            done.append(Outcome(cfg, "skipped", run_dir=str(run_dir), final=records[-1] if records else {}))
    return todo, done


def launch(configs: list[RunConfig], launcher: Launcher,
           on_outcome: Callable[[Outcome, int, int], None] | None = None, progress: bool = False) -> list[Outcome]:
    """Run every config with ``launcher``; finished ones are reported as skipped, not submitted.
    ``progress``: local runs show their progress (Slurm and Ray runs log to their own files)."""
    module = require(launcher.name)
    todo, done = split_finished(configs)
    outcomes: list[Outcome] = []

    def record(o: Outcome) -> None:
        outcomes.append(o)
        if on_outcome:
            on_outcome(o, len(outcomes), len(configs))

    for o in done:
        record(o)
    if not todo:
        return outcomes
    if launcher.name == "local":
        sweep(todo, jobs=launcher.jobs, on_outcome=lambda o, i, n: record(o), progress=progress)
    elif launcher.name == "submitit":
        _submitit(module, todo, launcher, record)
    else:
        _ray(module, todo, launcher, record)
    return outcomes


def _submitit(submitit, configs: list[RunConfig], launcher: Launcher, record) -> None:
    params = dict(launcher.slurm)
    cluster = params.pop("cluster", None)
    folder = Path(configs[0].out) / "slurm"
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    params.setdefault("timeout_min", 24 * 60)
    try:
        executor.update_parameters(**{_slurm_key(executor, k): v for k, v in params.items()})
    except (TypeError, ValueError) as exc:
        raise DabenchError(f"--slurm: {exc}. Keys are submitit's (and sbatch's) parameters, e.g. partition, "
                           "gpus_per_node, cpus_per_task, timeout_min, account, array_parallelism.") from None
    jobs = executor.map_array(run_one, configs)
    for cfg, job in zip(configs, jobs):
        try:
            record(job.result())
        except Exception as exc:  # noqa: BLE001 - the job died outside run_one (killed, timed out, node lost)
            record(Outcome(cfg, "failed", f"job {job.job_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                           log=str(job.paths.stderr)))


def _slurm_key(executor, key: str) -> str:
    """``partition`` -> ``slurm_partition`` where the executor is Slurm's (AutoExecutor's own keys,
    timeout_min, gpus_per_node..., pass as they are)."""
    generic = {"timeout_min", "gpus_per_node", "cpus_per_task", "tasks_per_node", "nodes", "mem_gb", "name",
               "stderr_to_stdout"}
    if key in generic or key.startswith(("slurm_", "local_")) or executor.cluster != "slurm":
        return key
    return f"slurm_{key}"


def _ray(ray, configs: list[RunConfig], launcher: Launcher, record) -> None:
    started = not ray.is_initialized()
    if started:
        ray.init(address=launcher.ray_address, include_dashboard=False, log_to_driver=False,
                 **({} if launcher.ray_address else {"num_cpus": max(launcher.cpus_per_run, os.cpu_count() or 1)}))
    try:
        gpus = launcher.gpus_per_run
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(num_cpus=launcher.cpus_per_run, num_gpus=gpus, max_retries=0)(run_one)
        refs = [task.remote(cfg, launcher.cpus_per_run) for cfg in configs]
        for cfg, ref in zip(configs, refs):
            try:
                record(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - the task died outside run_one (worker lost)
                record(Outcome(cfg, "failed", f"ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"))
    finally:
        if started:
            ray.shutdown()
