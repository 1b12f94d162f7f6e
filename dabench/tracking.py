"""Experiment trackers a run also reports to (``--log``), beside the run folder, which stays the record.

``--log tensorboard``: scalars in TensorBoard event files under the run's ``tensorboard/`` (losses
under ``train/``, evaluations under ``<split>/``). ``--log mlflow``: an MLflow run per dabench run,
in ``$MLFLOW_TRACKING_URI`` when set, else a local store beside the run folders (``OUT/mlflow.db``,
artifacts in ``OUT/mlartifacts``; ``mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db`` shows
them): the config as parameters, every step's losses, every evaluation's scores, and at the end the
run folder's files (all but the resume checkpoint). A resumed run continues its MLflow run (its id
is kept in the run folder's ``mlflow.json``). A tracker that fails (a locked database, a server
gone) warns once and stops; the run goes on, since its folder holds everything.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from dabench.errors import DabenchError
from dabench.runfolder import CHECKPOINT, CONFIG, IDENTITY, MLFLOW, TENSORBOARD

TRACKERS = ("jsonl", "tensorboard", "mlflow")  # jsonl: the run folder's steps.jsonl alone
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # --log value -> (module to import, pip extra)


def check(log: str) -> None:
    """Refuse an unknown --log value or one whose package is missing, before anything is written."""
    if log not in TRACKERS:
        raise DabenchError(f"--log must be one of {', '.join(TRACKERS)}, got '{log}'.")
    if log in EXTRAS:
        try:
            __import__(EXTRAS[log])
        except ImportError:
            raise DabenchError(f"--log {log} needs the {log} package: pip install 'dabench[{log}]' (or drop --log; "
                               "every step's losses are in the run folder's steps.jsonl).") from None


def tracker(log: str, run_dir: Path, start: int):
    """The tracker ``--log`` asks for (None for jsonl alone)."""
    if log == "tensorboard":
        return TensorBoard(run_dir, start)
    if log == "mlflow":
        return MLflow(run_dir, start)
    return None


class TensorBoard:
    def __init__(self, run_dir: Path, start: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=start + 1 if start else None)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()


class MLflow:
    BATCH = 900  # metrics per log_batch call (MLflow takes at most 1,000)

    def __init__(self, run_dir: Path, start: int):
        from mlflow.tracking import MlflowClient

        self.run_dir, self.pending, self.broken = run_dir, [], False
        out = run_dir.parents[2]  # run folders are OUT/pair/algorithm/run (runfolder.run_dir_of)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        self.client = MlflowClient(uri)
        kept = run_dir / MLFLOW
        known = json.loads(kept.read_text()) if start and kept.is_file() else {}
        if known.get("tracking_uri") == uri:
            self.run_id = known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "dabench")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            name, artifact_location=(out / "mlartifacts").resolve().as_uri())
        config = json.loads((run_dir / CONFIG).read_text())
        tags = {"dabench.run_dir": str(run_dir.resolve()), **{f"dabench.{k}": str(config.get(k)) for k in
                                                             ("algo", "src", "tgt", "task", "seed")}}
        self.run_id = self.client.create_run(experiment_id, run_name=f"{config['algo']}/{run_dir.name}",
                                             tags=tags).info.run_id
        kept.write_text(json.dumps({"tracking_uri": uri, "run_id": self.run_id}) + "\n")
        self._call(self._params, config)

    def _params(self, config: dict) -> None:
        from mlflow.entities import Param

        values = {k: config.get(k) for k in IDENTITY if k != "hparams"}
        values |= {f"hparams.{k}": v for k, v in (config.get("hparams") or {}).items()}
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in values.items()]
        for i in range(0, len(params), 90):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i : i + 90])

    def _call(self, fn, *args) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as exc:  # the tracker's failure, not the run's: warn once and go on
            self.broken = True
            warnings.warn(f"MLflow stopped taking this run's logs ({type(exc).__name__}: {str(exc)[:200]}); the run "
                          f"goes on and its folder {self.run_dir} keeps every record.", stacklevel=3)

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in values.items()]
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        def send():
            while self.pending:
                batch, self.pending = self.pending[: self.BATCH], self.pending[self.BATCH :]
                self.client.log_batch(self.run_id, metrics=batch)
        self._call(send)

    def close(self, finished: bool) -> None:
        self.flush()
        if finished:
            files = [p for p in sorted(self.run_dir.rglob("*")) if p.is_file() and p.name != CHECKPOINT
                     and TENSORBOARD not in p.relative_to(self.run_dir).parts]
            for p in files:
                parent = p.parent.relative_to(self.run_dir)
                self._call(self.client.log_artifact, self.run_id, str(p), None if parent == Path(".") else str(parent))
        self._call(self.client.set_terminated, self.run_id, "FINISHED" if finished else "KILLED")
