"""Files a run folder holds, treated as if a stranger sent them.

``load_pt``: every ``.pt`` file dabench reads (checkpoints, selected weights, ``Run.save`` files)
goes through ``torch.load(weights_only=True)``: tensors and plain data (dicts, lists, tuples,
numbers, strings) only, so a crafted pickle cannot run code. ``RunLock``: one process writes a
run folder; a second one is refused, naming the holder.
"""
from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from dabench.errors import DabenchError
from dabench.runfolder import lock_path

# Checkpoints written before dabench 0.1's safe loading kept NumPy's RNG state as an array; these
# globals rebuild an array and nothing else, so they are allowed for those files.
_NUMPY_ARRAY = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]


def load_pt(path: Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; anything else than a readable file of tensors and
    plain data is a ``DabenchError`` that names the file: a pickle that would import or call other
    Python objects (whose loading could run code) is refused without running it."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "global" in str(exc).lower():
            raise DabenchError(
                f"{path} is refused: besides tensors and plain data it asks to run Python objects ({first[:160]}), "
                f"and loading it could run someone else's code. A {what} dabench wrote holds none; only load files "
                "you made, or that come from someone you trust, and re-create this one with dabench.") from None
        raise DabenchError(f"{path} cannot be read as a {what} ({first[:160]}): it is truncated or not a {what}. "
                           "Re-create it (for a run folder: run it again with --overwrite).") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, IndexError, TypeError) as exc:
        raise DabenchError(f"{path} cannot be read as a {what} ({type(exc).__name__}: {str(exc)[:160]}): it is truncated "
                           f"or not a {what}. Re-create it (for a run folder: run it again with --overwrite).") from None


class RunHeld(DabenchError):
    """Another live process trains this run folder."""


class RunLock:
    """An exclusive lock on a run folder, held by the one process that trains it.

    An OS lock (``filelock``) on a file under ``--out``'s ``.locks`` folder (run folders sit three
    levels below ``--out``: pair, algorithm, run), so it exists before the run folder does and
    outlives an ``--overwrite``; it goes with the process: a holder that dies (killed, crashed)
    releases it, and the next process takes it over. The holder's pid and host are written beside
    it (``.owner``) for the message a second process gets. The lock file itself stays: deleting it
    while another process has it open would let two processes each lock a file of that name."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self.owner = self.path.with_suffix(".owner")
        self._lock = FileLock(self.path)

    def holder(self) -> str:
        try:
            return self.owner.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def acquire(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunHeld(
                f"{self.run_dir} is being trained by {self.holder()}: one process writes a run folder. Wait for it to "
                "finish (its results then show here), or stop it first; a second writer would interleave its "
                "records.") from None
        except OSError as exc:
            raise DabenchError(f"Cannot write under {self.path.parents[1]} ({exc.strerror or exc}). Choose an --out "
                               "folder you can write.") from None
        self.owner.write_text(f"process {os.getpid()} on {socket.gethostname()}\n")
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self.owner.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def writable_folder(path: Path, option: str) -> None:
    """Refuse ``path`` as an output folder when it is a file or cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise DabenchError(f"{option} {path} is a file; give a folder (it is created if missing).")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise DabenchError(f"{option} {path}: {existing} is a file, so the folder cannot be created there.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DabenchError(f"{option} {path}: {existing} is not writable by you. Choose a folder you can write.")
