"""A run folder on disk: the names of its files, the fields that name the folder, and its records.

Every other module asks this one for a run folder's files (no literal file name elsewhere), and it
imports no torch, so the leaderboard can read a results folder copied from a cluster anywhere.

``<out>/<src>_to_<tgt>/<algo>/seed<N>-<hash of the identity fields>/`` holds:

- ``config.json``: the recorded config (values used, regime, data facts) and the environment;
- ``results.jsonl``: one evaluation per line; ``steps.jsonl``: one training step's losses per line;
- ``checkpoint.pt``: model, optimisers, random states, step and the number of records before it;
- ``selected.pt``: the weights at the step source-val selection chooses (the tables' model);
- ``timings.jsonl``: seconds per part of the run; ``done``: written last, when the run finished;
- ``failed``: the run stopped on a non-finite loss (a result of its config, kept even before the
  first checkpoint): the message, and the step; the leaderboard counts it against its row;
- ``error.log``: a sweep's failed run after its first checkpoint (a crash or kill before it removes the folder);
- ``tensorboard/``: TensorBoard event files, with ``--log tensorboard``.

Beside the run folders, ``<out>/.locks/`` holds one lock file per run (``files.RunLock``) and
``<out>/cache/`` derived images shared by runs (``cache.py``).

A record is written as one whole line, flushed and synced; reading checks every line, so a line a kill
cut (the last one, without its newline) or a damaged one is found, never silently taken for the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dabench.errors import DabenchError

CONFIG = "config.json"
RESULTS = "results.jsonl"
STEPS = "steps.jsonl"
CHECKPOINT = "checkpoint.pt"
SELECTED = "selected.pt"
TIMINGS = "timings.jsonl"
DONE = "done"
FAILED = "failed"
ERROR_LOG = "error.log"
EMBED = "embed"  # t-SNE pictures (``dabench embed``), shown by ``dabench report``
PREDICTIONS = "predictions"  # ``dabench predict``'s default --out; ``dabench report`` shows its overlays
TENSORBOARD = "tensorboard"  # a folder of event files, with --log tensorboard
MLFLOW = "mlflow.json"  # with --log mlflow: the tracking store and MLflow run id, so a resume continues it
LOCKS = ".locks"  # under --out
CACHE = "cache"  # under --out

# The fields that decide the numbers a run produces; their hash names the run folder.
IDENTITY = ("algo", "src", "tgt", "backbone", "tgt_labeled", "steps", "eval_every", "seed", "hparams",
            "precision", "image_size", "pretrained", "channels_last", "protocol", "setting", "swad")
DEFAULTS = {"protocol": "dabench", "setting": "uda", "swad": False}  # identity fields older configs lack, and their values


def slug(text: str) -> str:
    """``text`` as one path component: runs of other characters than letters, digits, ``.+-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The fields that decide a run's numbers (a config from before protocols or settings existed
    has the defaults: "dabench", "uda")."""
    return {k: config.get(k, DEFAULTS.get(k)) for k in IDENTITY}


def run_dir_of(config: dict[str, Any], out: str | Path) -> Path:
    """The folder of the run ``config`` describes, under ``out``."""
    fields = identity(config)
    for k, default in DEFAULTS.items():
        if fields[k] == default:
            del fields[k]  # so run folders made before protocols and settings existed keep their names
    identity_text = json.dumps(fields, sort_keys=True, default=str)
    digest = hashlib.sha1(identity_text.encode()).hexdigest()[:8]
    return Path(out) / f"{slug(config['src'])}_to_{slug(config['tgt'])}" / slug(config["algo"]) / f"seed{config['seed']}-{digest}"


def identity_differences(a: dict, b: dict) -> str:
    """How two configs' identities differ, field by field ("" when they name the same run)."""
    a, b = identity(a), identity(b)
    return "; ".join(f"{k}: {a[k]!r} in the folder vs {b[k]!r} now" for k in IDENTITY if a[k] != b[k])


def lock_path(run_dir: Path) -> Path:
    """The lock file of ``run_dir``: under ``<out>/.locks/``, named after the pair, algorithm and run."""
    name = "__".join(run_dir.parts[-3:])
    return run_dir.parents[2] / LOCKS / f"{name}.lock"


def is_started(run_dir: Path) -> bool:
    """``run_dir`` holds a run (its config was written)."""
    return (run_dir / CONFIG).exists()


def is_done(run_dir: Path) -> bool:
    """``run_dir``'s run finished."""
    return (run_dir / DONE).exists()


def mark_done(run_dir: Path) -> None:
    (run_dir / DONE).touch()


def mark_failed(run_dir: Path, step: int, message: str) -> None:
    """Record that ``run_dir``'s run stopped at ``step`` on a non-finite loss (``message``), whole or not at all."""
    write_records(run_dir / FAILED, [{"step": step, "message": message}])


def failure(run_dir: Path) -> dict | None:
    """``{"step", "message"}`` when ``run_dir``'s run stopped on a non-finite loss, else None (an
    unreadable file reads as a failure whose message says so)."""
    path = Path(run_dir) / FAILED
    if not path.exists():
        return None
    try:
        found = json.loads(path.read_text())
        return {"step": None if found["step"] is None else int(found["step"]), "message": str(found["message"])}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        return {"step": None, "message": f"{path} cannot be read ({type(exc).__name__})"}


def write_config(run_dir: Path, config: dict) -> None:
    (run_dir / CONFIG).write_text(json.dumps(config, indent=2, default=str))


def read_config(run_dir: Path) -> dict:
    """``run_dir``'s config.json, or a ``DabenchError`` naming the file when it is not a JSON object."""
    path = Path(run_dir) / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DabenchError(f"{path} cannot be read ({type(exc).__name__}: {exc}): the run folder was damaged. Run "
                           "that config again with --overwrite.") from None
    if not isinstance(config, dict):
        raise DabenchError(f"{path} is not a JSON object: the run folder was damaged. Run it again with --overwrite.")
    return config


def run_records(run_dir: Path, strict: bool = False) -> list[dict]:
    """The evaluation records of ``run_dir`` (``read_records`` of its results.jsonl)."""
    return read_records(Path(run_dir) / RESULTS, strict)


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:  # one write of one whole line, then flush to disk
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_records(path: Path, records: list[dict]) -> None:
    """Replace a record file by ``records`` atomically: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


@dataclass
class Scan:
    """The whole records of a file, in order, up to its first unreadable line (if any)."""

    records: list[dict] = field(default_factory=list)
    bad_line: int | None = None  # 1-based number of the first unreadable line
    why: str = ""
    torn: bool = False  # that line is the file's last and lacks its newline: a write a kill interrupted

    def problem(self, path: Path) -> str:
        what = "is cut off (a write interrupted by a kill or a full disk)" if self.torn else f"is not a record ({self.why})"
        return f"{path} line {self.bad_line} {what}"


def scan_records(path: Path) -> Scan:
    """Read a JSON-lines record file line by line; stop at the first line that is not a whole record
    (a JSON object with a "step")."""
    scan = Scan()
    if not path.exists():
        return scan
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    complete = text.endswith("\n") or not text
    if complete:
        lines = lines[:-1]
    for i, line in enumerate(lines, start=1):
        torn = i == len(lines) and not complete
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            scan.bad_line, scan.why, scan.torn = i, f"not JSON: {exc.msg}", torn
            return scan
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            scan.bad_line, scan.why, scan.torn = i, "no step", torn
            return scan
        if torn:  # valid JSON, but its newline never got written: the write was cut
            scan.bad_line, scan.why, scan.torn = i, "no newline", True
            return scan
        scan.records.append(record)
    return scan


def read_records(path: Path, strict: bool = False) -> list[dict]:
    """The records of ``path``. ``strict``: a file with an unreadable line is a ``DabenchError`` naming
    the line; otherwise the whole records before it (a run still writing its last line)."""
    scan = scan_records(path)
    if strict and scan.bad_line is not None:
        raise DabenchError(f"{scan.problem(path)}: the file was damaged after its run wrote it, and its records cannot "
                           "all be read. Run that config again (--overwrite).")
    return scan.records
