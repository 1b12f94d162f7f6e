"""The user's own images in ImageFolder layout: ``PATH/<class>/*.png`` (one sub-folder per class)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dabench.data import CLASSIFICATION, Domain, TensorImages, decode_image as decode, to_unit_range
from dabench.errors import DabenchError
from dabench.registry import plugin

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_SIZE = 64
MEMORY_LIMIT_MB = 1024  # a folder that decodes to at most this is decoded once and held in memory
MEMORY_LIMIT_VAR = "DABENCH_FOLDER_MEMORY_MB"


class ImageFiles(Dataset):
    """Labelled image files, decoded on demand: RGB, bilinear to (size, size), floats in [-1, 1]."""

    def __init__(self, files: list[Path], labels: list[int], size: int):
        self.files, self.targets, self.size = list(files), np.asarray(labels, dtype=np.int64), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = to_unit_range(torch.from_numpy(decode(self.files[i], self.size)).permute(2, 0, 1))
        return x, int(self.targets[i])

    def labels(self) -> np.ndarray:
        return self.targets

    def images_only(self) -> "ImageFiles":
        """The same files with no labels (-1 in their place): what an unlabelled target view holds."""
        return ImageFiles(self.files, [-1] * len(self.files), self.size)


class _Pixels:
    """Image files decoded once, on first use, into uint8 (N, 3, size, size); no labels."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size
        self._images: torch.Tensor | None = None

    def tensor(self) -> torch.Tensor:
        if self._images is None:
            images = torch.empty((len(self.files), 3, self.size, self.size), dtype=torch.uint8)
            for i, path in enumerate(self.files):
                images[i] = torch.from_numpy(decode(path, self.size)).permute(2, 0, 1)
            self._images = images
        return self._images


class DecodedImages(Dataset):
    """The unlabelled view of ``DecodedFiles``: shares its decoded pixels, holds no label."""

    def __init__(self, pixels: _Pixels):
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.image(i)

    def image(self, i: int) -> torch.Tensor:
        return to_unit_range(self.pixels.tensor()[i])

    def get_batch(self, idx: Sequence[int]) -> torch.Tensor:
        return to_unit_range(self.pixels.tensor()[torch.as_tensor(idx, dtype=torch.long)])


class DecodedFiles(Dataset):
    """The same image files decoded once, on first use, into uint8 (N, 3, size, size) and then served
    by ``TensorImages``: whole batches by indexing, no file read per step. Decoding on first use, not
    at construction, keeps ``dabench datasets check`` and a run that is already done instant."""

    def __init__(self, files: ImageFiles):
        self.source = files
        self.pixels = _Pixels(files.files, files.size)
        self._memory: TensorImages | None = None

    @property
    def files(self) -> list[Path]:
        return self.source.files

    def __len__(self) -> int:
        return len(self.source)

    def memory(self) -> TensorImages:
        if self._memory is None:
            self._memory = TensorImages(self.pixels.tensor(), torch.from_numpy(self.source.targets))
        return self._memory

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.memory()[i]

    def get_batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.memory().get_batch(idx)

    def labels(self) -> np.ndarray:
        return self.source.targets

    def images_only(self) -> DecodedImages:
        return DecodedImages(self.pixels)


def memory_limit_mb() -> float:
    """The decoded size (MB) up to which a folder is held in memory: ``DABENCH_FOLDER_MEMORY_MB`` if
    set, else ``MEMORY_LIMIT_MB``."""
    text = os.environ.get(MEMORY_LIMIT_VAR)
    if text is None:
        return MEMORY_LIMIT_MB
    try:
        limit = float(text)
    except ValueError:
        limit = -1.0
    if not limit >= 0:
        raise DabenchError(f"{MEMORY_LIMIT_VAR}={text!r}: expected a number of megabytes, 0 or more (e.g. "
                           f"{MEMORY_LIMIT_VAR}=4096; 0 decodes every folder image at every step). Fix or unset it.")
    return limit


def _class_dirs(path: Path) -> list[Path]:
    """The class folders of ``path``; a link back to ``path`` or above it (``ln -s . self``) is no class."""
    here = path.resolve()
    return sorted((d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and not here.is_relative_to(d.resolve())), key=lambda d: d.name)


def scan(path: Path, what: str) -> tuple[list[str], list[Path], list[int]]:
    """Class names (sorted folder names), image files and labels of an ImageFolder tree at ``path``
    (images anywhere below each class folder). ``what`` names the data in error messages."""
    if not path.exists():
        raise DabenchError(f"{what}: {path} does not exist. Expected a folder with one sub-folder of images "
                           "per class (PATH/<class>/*.png, .jpg, ...). Check the path.")
    if not path.is_dir():
        raise DabenchError(f"{what}: {path} is a file, not a folder. Give the folder that holds one "
                           "sub-folder per class.")
    dirs = _class_dirs(path)
    if not dirs:
        raise DabenchError(f"{what}: {path} has no sub-folders. Expected one sub-folder of images per class "
                           f"(e.g. {path}/cat/1.png, {path}/dog/1.png).")
    files: list[Path] = []
    labels: list[int] = []
    empty = []
    for label, d in enumerate(dirs):
        found = sorted(f for f in _walk(d) if f.suffix.lower() in EXTENSIONS)
        empty += [] if found else [d.name]
        files += found
        labels += [label] * len(found)
    if empty:
        raise DabenchError(f"{what}: these class folders under {path} hold no images: {', '.join(empty)}. "
                           f"Images must end in {', '.join(EXTENSIONS)}. Add images or remove the folders.")
    return [d.name for d in dirs], files, labels


def _walk(folder: Path) -> list[Path]:
    """Every file under ``folder``, following directory links but entering each real directory
    once, so a link that loops (``ln -s . self``) cannot list the same images again."""
    files, seen = [], set()
    for here, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        files += [Path(here) / n for n in names if (Path(here) / n).is_file()]
    return files


def _has_split(path: Path) -> bool:
    return all((path / s).is_dir() and _class_dirs(path / s) for s in ("train", "test"))


@plugin("folder", task=CLASSIFICATION, description="your own images: folder:PATH with PATH/<class>/*.jpg (or PATH/train, PATH/test)",
        path_arg=True)
def folder(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """Images in ImageFolder layout, one sub-folder per class, classes sorted by name. When PATH
    holds ``train/`` and ``test/`` (each with the class folders) they are the official splits;
    otherwise all images form one pool and the protocol holds out a test split.

    A folder whose images decode to at most 1 GiB (N * 3 * size * size bytes, train and test
    together; ``DABENCH_FOLDER_MEMORY_MB`` changes the limit) is decoded once and held in memory
    as uint8, since decoding every file at every step made training two to three times slower;
    a larger one is decoded batch by batch. Both give the same numbers."""
    if not arg:
        raise DabenchError("The folder data set needs a path: write folder:PATH (e.g. --tgt folder:/data/mine), "
                           "where PATH holds one sub-folder of images per class.")
    path, size = Path(arg).expanduser(), image_size or DEFAULT_SIZE
    limit = memory_limit_mb()
    info: dict = {"path": str(path.resolve())}
    test_files: list[Path] = []
    if _has_split(path):
        classes, files, labels = scan(path / "train", f"folder:{arg} (train)")
        test_classes, test_files, test_labels = scan(path / "test", f"folder:{arg} (test)")
        if classes != test_classes:
            only_train, only_test = sorted(set(classes) - set(test_classes)), sorted(set(test_classes) - set(classes))
            raise DabenchError(f"folder:{arg}: train/ and test/ must hold the same class folders. Only in train: "
                               f"{only_train or 'none'}; only in test: {only_test or 'none'}. "
                               "Rename or add folders so they match.")
        info |= {"train_images": len(files), "test_images": len(test_files)}
    else:
        classes, files, labels = scan(path, f"folder:{arg}")
        info |= {"images": len(files)}
    decoded_mb = (len(files) + len(test_files)) * 3 * size * size / 2**20
    held = decoded_mb <= limit

    def dataset(paths: list[Path], targets: list[int]) -> Dataset:
        on_demand = ImageFiles(paths, targets, size)
        return DecodedFiles(on_demand) if held else on_demand

    test = dataset(test_files, test_labels) if test_files else None
    info |= {"classes": len(classes), "decoded_mb": round(decoded_mb, 1), "in_memory": held}
    return Domain(f"folder:{arg}", CLASSIFICATION, classes, dataset(files, labels), test, size, info)
