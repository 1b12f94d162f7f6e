"""Folders of derived images (translated source images, pseudo-labels) keyed by the config that
made them, so later runs or a resumed run reuse them and nothing else does.

A folder holds ``key.json`` (the config), one PNG per item and, written last, ``done``. A folder
without ``done`` was cut off while it was written: it is rebuilt, never read. A folder whose
``key.json`` is not the expected config is refused with an error, never silently reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torch.utils.data import Dataset

from dabench.data import to_unit_range
from dabench.errors import DabenchError
from dabench.runfolder import DONE  # a finished cache folder is marked as a finished run folder is


def key_hash(key: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


class KeyedFolder:
    """A cache folder and the config it must have been made from."""

    def __init__(self, path: Path, key: dict[str, Any]):
        self.path, self.key = Path(path), json.loads(json.dumps(key, sort_keys=True, default=str))

    @property
    def complete(self) -> bool:
        """True when the folder was finished from this very config; raises if it holds another's."""
        key_file = self.path / "key.json"
        if not key_file.exists():
            return False
        saved = json.loads(key_file.read_text())
        if saved != self.key:
            diff = sorted(k for k in set(saved) | set(self.key) if saved.get(k) != self.key.get(k))
            raise DabenchError(
                f"The cache folder {self.path} was made by a different config (differs in: {', '.join(diff)}). "
                "It is not reused. Delete the folder (or use another --out) and run again.")
        return (self.path / DONE).exists()

    @contextlib.contextmanager
    def lock(self):
        """Hold an exclusive lock on the folder while checking or building it, so parallel runs
        (sweep --jobs) needing the same cache build it once and never read it half-written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.parent / f".{self.path.name}.lock"):  # filelock: Unix and Windows alike
            yield self

    def start(self) -> None:
        """Empty the folder (a half-written one included) and record the key."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        (self.path / "key.json").write_text(json.dumps(self.key, indent=1, sort_keys=True))

    def finish(self) -> None:
        (self.path / DONE).touch()

    def file(self, i: int) -> Path:
        return self.path / f"{i:06d}.png"

    def write(self, first: int, arrays: Sequence[np.ndarray]) -> None:
        """Items ``first, first + 1, ...`` as PNGs: uint8 (H, W, 3) images or (H, W) label maps."""
        for k, a in enumerate(arrays):
            Image.fromarray(np.ascontiguousarray(a)).save(self.file(first + k), compress_level=1)

    def read(self, i: int) -> np.ndarray:
        with Image.open(self.file(i)) as im:
            return np.asarray(im)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float images (N, 3, H, W) -> uint8 (N, H, W, 3)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(a: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> a [-1, 1] float image (3, H, W)."""
    return to_unit_range(torch.from_numpy(np.array(a)).permute(2, 0, 1))


class CachedImages(Dataset):
    """A labelled set whose images come from a cache folder and labels from ``base`` (the images
    ``base`` would give, translated): item i = (cached image i, label of base item i)."""

    def __init__(self, base: Dataset, folder: KeyedFolder):
        self.base, self.folder = base, folder

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(i), self.base[i][1]

    def image(self, i: int) -> torch.Tensor:
        return from_uint8(self.folder.read(i))


class CachedLabels(Dataset):
    """Unlabelled images (an ``ImagesOnly``) with labels from a cache folder: item i = (image i,
    cached label map i). Used for pseudo-labels, which the algorithm's own model made."""

    def __init__(self, images: Dataset, folder: KeyedFolder):
        self.images, self.folder = images, folder

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], torch.from_numpy(self.folder.read(i).astype(np.int64))
