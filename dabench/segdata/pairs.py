"""Segmentation data read from files: (image, label map) pairs, for dataset plugins.

``SegmentationFiles`` is the dataset behind every file-backed segmentation domain (GTA5, Cityscapes,
SYNTHIA, segfolder, and yours). The helpers next to it pair files by name, read sizes from file
headers without decoding, survey a set's label formats, and turn a requested height into a
(W, H) size. Core, not a plugin: third-party dataset plugins read their files with it too.
"""
from __future__ import annotations

import copy
import os
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_png
from torchvision.transforms import v2

from dabench.data import read_image, to_unit_range
from dabench.errors import DabenchError
from dabench.tasks import IGNORE_INDEX, SEGMENTATION, task_of

Size = tuple[int, int]  # (W, H), as PIL and Domain.image_size
Pair = tuple[str, str]  # image file, label file; plain strings: 25k pathlib.Paths cost seconds to build
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LABEL_MODES = ("P", "L", "I;16", "I")  # single-channel PNGs whose values are ids


# --- reading one file ---------------------------------------------------------------------------

def read_ids(path: str | Path) -> np.ndarray:
    """The stored values of a single-channel label PNG (8-bit grey, palette or 16-bit grey).

    Palette images give their indices, not their colours: GTA5's labels are palette PNGs whose
    indices are Cityscapes label ids, and converting them to RGB would lose the ids."""
    try:
        with Image.open(path) as img:
            if img.mode not in LABEL_MODES:
                raise DabenchError(
                    f"The label {path} is a {img.mode} image; labels must be single-channel PNGs (grey or "
                    "palette) whose pixel values are ids. A colour-coded mask has to be converted to ids first.")
            return np.asarray(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DabenchError(f"Cannot read the label {path} ({type(exc).__name__}: {exc}). "
                           "Replace or delete the file (and its image) and run again.") from None


def read_first_channel(path: str | Path) -> np.ndarray:
    """Channel 0 of a PNG at its stored bit depth: SYNTHIA's GT/LABELS are 16-bit, 3-channel PNGs
    with the class id in the first channel. PIL, and imageio and scikit-image (which read PNGs
    through PIL), keep only the high byte of each 16-bit value; torchvision's libpng decoder keeps
    all 16 bits. torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec: the
    pinned version has them; silenced here until dabench moves."""
    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_png(data, mode=ImageReadMode.UNCHANGED)[0].numpy()
    except (RuntimeError, OSError, ValueError) as exc:
        raise DabenchError(f"Cannot read the label {path} as a PNG ({type(exc).__name__}: {exc}). "
                           "Replace or delete the file (and its image) and run again.") from None


def lookup_table(id_to_train: dict[int, int], size: int = 256) -> np.ndarray:
    """A uint8 table ``lut[label_id] = train_id`` (255 for ids not in the map), for ``lut[label]``."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in id_to_train.items():
        lut[src] = dst
    return lut


def resize_step(size: Size) -> v2.Resize:
    """``dabench.data.resize_images`` at (W, H) for segmentation (the same resize, the task's
    ``resample``), as a transform that composes with crop and flip and resizes a label mask along
    with its image (masks: nearest)."""
    return v2.Resize((size[1], size[0]), interpolation=v2.InterpolationMode(task_of(SEGMENTATION).resample),
                     antialias=True)


def _unit(img: torch.Tensor) -> torch.Tensor:
    return to_unit_range(img.as_subclass(torch.Tensor))


# --- the dataset --------------------------------------------------------------------------------

class SegmentationFiles(Dataset):
    """(image, label) file pairs decoded on demand.

    An item is a float32 (3, H, W) image in [-1, 1] and an int64 (h, w) map of train ids (255 =
    ignore). The stored label values go through ``lut`` (a uint8 table, stored id -> train id; ids
    beyond its end are ignored). Images are resized bicubic with antialiasing to ``image_size``;
    labels nearest to ``label_size``, or kept at their stored resolution when it is None (a test
    split scored at full resolution). Image and mask pass through one torchvision v2 transform, so
    the optional ``crop`` (W, H) and ``flip`` cut and mirror both alike; both need labels at the
    image size. With ``warn_unmapped``, stored values that map to nothing (other than 255) are
    ignored with a warning, once per dataset (and worker process).
    """

    def __init__(self, pairs: Sequence[tuple[str | Path, str | Path]], image_size: Size, label_size: Size | None,
                 lut: np.ndarray, read_label: Callable[[str], np.ndarray] = read_ids, *,
                 crop: Size | None = None, flip: bool = False, warn_unmapped: bool = False, name: str = "labels"):
        self.image_size, self.label_size = tuple(image_size), (tuple(label_size) if label_size else None)
        if (crop or flip) and self.label_size != self.image_size:
            raise ValueError("crop and flip move image and label together: they need label_size == image_size")
        self.pairs: list[Pair] = [(os.fspath(a), os.fspath(b)) for a, b in pairs]
        self.lut = np.append(np.asarray(lut, dtype=np.uint8), np.uint8(IGNORE_INDEX))  # clip target for large ids
        self.read_label, self.warn_unmapped, self.name = read_label, warn_unmapped, name
        self._warned = False
        steps = [resize_step(self.image_size)]
        if crop:
            steps.append(v2.RandomCrop((crop[1], crop[0])))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.pairs[i]
        img = tv_tensors.Image(read_image(image_path))
        mask = tv_tensors.Mask(torch.from_numpy(self.train_ids(label_path))[None])
        if self.label_size == self.image_size:
            img, mask = self.transform(img, mask)
        else:
            img = self.transform(img)
            if self.label_size is not None and tuple(mask.shape[:0:-1]) != self.label_size:
                mask = v2.functional.resize(mask, [self.label_size[1], self.label_size[0]])  # masks: nearest
        return _unit(img), mask.as_subclass(torch.Tensor)[0].long()

    def image(self, i: int) -> torch.Tensor:
        """Item ``i``'s image alone; the label file is not opened."""
        return _unit(self.transform(tv_tensors.Image(read_image(self.pairs[i][0]))))

    def images_only(self) -> "SegmentationFiles":
        """The same images with no label files: what an unlabelled target view holds (``image(i)``
        reads an image; there is no label path left to read)."""
        view = copy.copy(self)
        view.pairs = [(image, "") for image, _ in self.pairs]
        view.read_label = _no_labels
        return view

    def train_ids(self, label_path: str) -> np.ndarray:
        """A label file's train ids at its stored resolution, uint8 (h, w)."""
        stored = self.read_label(label_path)
        if stored.ndim != 2:
            raise DabenchError(f"The label {label_path} has {stored.ndim} dimensions ({stored.shape}); "
                               "expected a single-channel map of ids.")
        ids = np.take(self.lut, stored, mode="clip")
        if self.warn_unmapped and not self._warned:
            bad = (ids == IGNORE_INDEX) & (stored != IGNORE_INDEX)
            if bad.any():
                self._warned = True
                values = np.unique(stored[bad])
                warnings.warn(f"{self.name}: {label_path} holds the values {', '.join(map(str, values[:10]))}, which "
                              "are no class index and not 255; those pixels are ignored like 255. Said once per "
                              "data set: check the other labels and classes.txt.", stacklevel=2)
        return ids


def _no_labels(path: str) -> np.ndarray:
    raise TypeError("this is the unlabelled view of a segmentation data set: it has no labels")


# --- finding and pairing files ------------------------------------------------------------------

def listing(folder: Path, suffixes: Iterable[str], strip: str = "") -> dict[str, str]:
    """Files directly in ``folder`` with one of ``suffixes`` (case-insensitive), keyed by name less
    ``strip`` (or less the extension when ``strip`` is empty). os.scandir: no stat per file."""
    suffixes = tuple(s.lower() for s in suffixes)
    out: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for e in entries:
            low = e.name.lower()
            if e.name.startswith(".") or not low.endswith(suffixes):
                continue
            key = e.name[: -len(strip)] if strip and e.name.endswith(strip) else os.path.splitext(e.name)[0]
            if key in out:
                raise DabenchError(f"{folder} holds two files for '{key}': {os.path.basename(out[key])} and {e.name}. "
                                   "Keep one.")
            out[key] = e.path
    return out


def pair_up(images: dict[str, str], labels: dict[str, str], what: str, rule: str) -> list[Pair]:
    """(image, label) pairs with matching keys, in key order. Unpaired files are an error naming
    the first few: training on half-matched folders would silently use a different set."""
    lonely_images = sorted(images.keys() - labels.keys())
    lonely_labels = sorted(labels.keys() - images.keys())
    if lonely_images or lonely_labels:
        parts = []
        for files, keys, kind in ((images, lonely_images, "images without a label"),
                                  (labels, lonely_labels, "labels without an image")):
            if keys:
                shown = ", ".join(files[k] for k in keys[:3])
                parts.append(f"{len(keys)} {kind} ({shown}{', ...' if len(keys) > 3 else ''})")
        raise DabenchError(f"{what}: {' and '.join(parts)}. {rule} Add the missing files or remove the unpaired "
                           "ones (an incomplete download or unpacking is the usual cause).")
    return [(images[k], labels[k]) for k in sorted(images)]


# --- headers, without decoding ------------------------------------------------------------------

PNG_COLOURS = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


def header(path: str | Path) -> tuple[Size, str]:
    """(W, H) and a pixel-format word of an image file, from its first bytes: the IHDR chunk of a
    PNG (26 bytes), otherwise PIL, which also stops after the header."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
        if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return (w, h), f"{head[24]}-bit {PNG_COLOURS.get(head[25], 'unknown')} PNG"
        with Image.open(path) as img:
            return img.size, f"{img.format} {img.mode}"
    except (OSError, SyntaxError, ValueError) as exc:
        raise DabenchError(f"Cannot read the header of {path} ({type(exc).__name__}: {exc}). Replace or delete "
                           "the file and its partner.") from None


def _size(wh: Size) -> str:
    return f"{wh[0]}x{wh[1]}"


def most_common(counts: Counter, fmt: Callable = str) -> str:
    """The three most common values with their counts: '1914x1052 (24950), 1914x1054 (16)'."""
    text = ", ".join(f"{fmt(k)} ({n})" for k, n in counts.most_common(3))
    return text + (f", {len(counts) - 3} more" if len(counts) > 3 else "")


@dataclass
class Survey:
    """What the headers of a set of pairs say: formats and sizes, and pairs whose sizes differ."""

    pairs: int = 0
    image_sizes: Counter = field(default_factory=Counter)
    label_sizes: Counter = field(default_factory=Counter)
    label_formats: Counter = field(default_factory=Counter)
    mismatched: list[tuple[str, Size, Size]] = field(default_factory=list)  # label path, image size, label size

    def info(self, prefix: str = "", pairs_resized: bool = True) -> dict[str, str]:
        """``Domain.info`` items; ``pairs_resized``: whether labels follow the image size (train),
        so that a label of another size than its image is worth a line."""
        out = {f"{prefix}image_sizes": most_common(self.image_sizes, _size),
               f"{prefix}label_sizes": most_common(self.label_sizes, _size),
               f"{prefix}label_format": most_common(self.label_formats)}
        if pairs_resized:
            out[f"{prefix}label_size_differs"] = self.mismatch_text() or "none"
        return out

    def mismatch_text(self) -> str:
        if not self.mismatched:
            return ""
        path, isize, lsize = self.mismatched[0]
        return (f"{len(self.mismatched)} of {self.pairs} labels differ in size from their image (e.g. "
                f"{os.path.basename(path)}: image {_size(isize)}, label {_size(lsize)}); both are resized to the "
                "training size, labels nearest")


def survey(pairs: Sequence[Pair]) -> Survey:
    """Read every header (PNG: 26 bytes each; ~13 us per file with a warm cache, so 50k files,
    GTA5's images and labels, take under a second)."""
    s = Survey(pairs=len(pairs))
    for image_path, label_path in pairs:
        isize, _ = header(image_path)
        lsize, lformat = header(label_path)
        s.image_sizes[isize] += 1
        s.label_sizes[lsize] += 1
        s.label_formats[lformat] += 1
        if isize != lsize:
            s.mismatched.append((label_path, isize, lsize))
    return s


def warn_mismatch(s: Survey, name: str) -> None:
    if s.mismatched:
        warnings.warn(f"{name}: {s.mismatch_text()}.", stacklevel=3)


def scaled(default: Size, image_size: int | Sequence[int] | None, name: str) -> Size:
    """The training size (W, H): ``default`` for None; for an int, that height with the default's
    aspect ratio (GTA5 at 256 -> 455x256); a (W, H) pair as given."""
    if image_size is None:
        return tuple(default)
    if isinstance(image_size, int) and image_size > 0:
        return round(image_size * default[0] / default[1]), image_size
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(int(v) > 0 for v in image_size):
        return int(image_size[0]), int(image_size[1])
    raise DabenchError(f"{name}: --image-size is the image height in pixels (a positive whole number, e.g. 512), "
                       f"got {image_size!r}.")


# --- the user's own folder ----------------------------------------------------------------------
