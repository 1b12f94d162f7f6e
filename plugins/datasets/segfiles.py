"""Segmentation data read from files: (image, label map) pairs, and the user's own ``segfolder:PATH``.

``SegmentationFiles`` is the dataset behind every file-backed segmentation domain (GTA5, Cityscapes,
SYNTHIA, segfolder). The helpers next to it pair files by name, read sizes from file headers without
decoding, and turn a requested height into a (W, H) size.
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

from dabench.data import SEGMENTATION, Domain, to_unit_range
from dabench.errors import DabenchError
from dabench.registry import plugin
from dabench.segmentation import IGNORE_INDEX

Size = tuple[int, int]  # (W, H), as PIL and Domain.image_size
Pair = tuple[str, str]  # image file, label file; plain strings: 25k pathlib.Paths cost seconds to build
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LABEL_MODES = ("P", "L", "I;16", "I")  # single-channel PNGs whose values are ids


# --- reading one file ---------------------------------------------------------------------------

def read_rgb(path: str | Path) -> torch.Tensor:
    """An image file as uint8 (3, H, W), RGB."""
    try:
        with Image.open(path) as img:
            pixels = np.array(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports broken files in all three
        raise DabenchError(f"Cannot read the image {path} ({type(exc).__name__}: {exc}). "
                           "Replace or delete the file (and its label) and run again.") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


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
        w, h = self.image_size
        steps = [v2.Resize((h, w), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
        if crop:
            steps.append(v2.RandomCrop((crop[1], crop[0])))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.pairs[i]
        img = tv_tensors.Image(read_rgb(image_path))
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
        return _unit(self.transform(tv_tensors.Image(read_rgb(self.pairs[i][0]))))

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


def _common(counts: Counter, fmt: Callable = str) -> str:
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
        out = {f"{prefix}image_sizes": _common(self.image_sizes, _size),
               f"{prefix}label_sizes": _common(self.label_sizes, _size),
               f"{prefix}label_format": _common(self.label_formats)}
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

LABEL_SAMPLE = 8  # labels decoded at load to check their values; the rest are checked as they are read


def _resolve(arg: str, root: Path | None) -> Path:
    path = Path(arg).expanduser()
    if path.is_absolute():
        tried = [path]
    else:
        tried = ([Path(root).expanduser() / path] if root is not None else []) + [Path.cwd() / path]
    for p in tried:
        if p.is_dir():
            return p
    raise DabenchError(f"segfolder:{arg}: no folder {' nor '.join(str(p) for p in tried)}. A relative PATH is looked "
                       "up in the data root first, then in the current folder. Expected PATH/images/*.png|jpg, "
                       "PATH/labels/*.png and PATH/classes.txt.")


def _folder_pairs(path: Path, name: str) -> list[Pair]:
    for sub in ("images", "labels"):
        if not (path / sub).is_dir():
            raise DabenchError(f"{name}: no folder {path / sub}. Expected {path}/images/*.png (or .jpg) and "
                               f"{path}/labels/*.png with the same file names (stems), one label per image.")
    pairs = pair_up(listing(path / "images", IMAGE_EXTENSIONS), listing(path / "labels", (".png",)), name,
                    f"Each {path}/images/NAME.png|jpg needs {path}/labels/NAME.png.")
    if not pairs:
        raise DabenchError(f"{name}: {path}/images holds no .png or .jpg images. Put the images there and their "
                           f"label maps in {path}/labels (same names, .png).")
    return pairs


def _read_classes(path: Path, name: str) -> list[str]:
    file = path / "classes.txt"
    if not file.is_file():
        raise DabenchError(f"{name}: no {file}. Write one class name per line, in the order of the label values "
                           "(line 1 = value 0, line 2 = value 1, ...); the value 255 means 'ignore'.")
    classes = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not classes:
        raise DabenchError(f"{name}: {file} is empty. Write one class name per line, in the order of the label values.")
    if len(classes) > 255:
        raise DabenchError(f"{name}: {file} lists {len(classes)} classes; at most 255 fit (255 means 'ignore').")
    if len(set(classes)) != len(classes):
        twice = sorted(c for c, n in Counter(classes).items() if n > 1)
        raise DabenchError(f"{name}: {file} lists these classes more than once: {', '.join(twice)}.")
    return classes


def _check_values(ds: SegmentationFiles, k: int, name: str, classes_file: Path) -> int:
    """Decode a few labels spread over the set; refuse values that are no class and not 255 (usually
    a classes.txt that does not match the labels). Returns how many were decoded."""
    picks = np.unique(np.linspace(0, len(ds) - 1, min(LABEL_SAMPLE, len(ds))).round().astype(int))
    for i in picks:
        label_path = ds.pairs[i][1]
        values = np.unique(ds.read_label(label_path))
        bad = values[(values >= k) & (values != IGNORE_INDEX)]
        if len(bad):
            raise DabenchError(
                f"{name}: {label_path} holds the values {', '.join(map(str, bad[:10]))}, but {classes_file} lists "
                f"{k} classes (values 0..{k - 1}; 255 = ignore). Add the missing class names to classes.txt, or "
                "write the labels with values in that range.")
    return len(picks)


@plugin(task=SEGMENTATION, description="your own segmentation data: segfolder:PATH with images/, labels/, classes.txt")
def segfolder(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """Images with label maps: PATH/images/NAME.png|jpg, PATH/labels/NAME.png (pixel value = class
    index in the order of PATH/classes.txt, 255 = ignore). PATH/test/images and PATH/test/labels,
    when present, are the official test split (labels kept at their stored size). Training size:
    the first image's size, or --image-size as its height with that aspect ratio.

    Label values: a few labels are decoded at load and a value that is no class is an error; in
    the rest, such values are ignored (treated as 255) with one warning."""
    if not arg:
        raise DabenchError("The segfolder data set needs a path: write segfolder:PATH (e.g. --tgt segfolder:/data/"
                           "streets), where PATH holds images/, labels/ and classes.txt.")
    name = f"segfolder:{arg}"
    path = _resolve(arg, root)
    classes = _read_classes(path, name)
    k = len(classes)
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[:k] = np.arange(k)
    pairs = _folder_pairs(path, name)
    s = survey(pairs)
    formats = s.label_formats
    test_pairs = _folder_pairs(path / "test", f"{name} (test)") if (path / "test").is_dir() else []
    ts = survey(test_pairs)
    if any(" RGB" in f or "alpha" in f for f in formats + ts.label_formats):
        raise DabenchError(f"{name}: the labels must be single-channel PNGs (grey or palette) whose values are class "
                           f"indices; found {_common(formats + ts.label_formats)}. Convert colour masks to index maps.")
    warn_mismatch(s, name)
    size = scaled(header(pairs[0][0])[0], image_size, name)
    train = SegmentationFiles(pairs, size, size, lut, warn_unmapped=True, name=name)
    checked = _check_values(train, k, name, path / "classes.txt")
    info = {"path": str(path), "train_pairs": len(pairs), **s.info()}
    test = None
    if test_pairs:
        label_size = header(test_pairs[0][1])[0]  # scored at the stored size; one size so test batches stack
        test = SegmentationFiles(test_pairs, size, label_size, lut, warn_unmapped=True, name=f"{name} (test)")
        checked += _check_values(test, k, f"{name} (test)", path / "classes.txt")
        info |= {"test_pairs": len(test_pairs), **ts.info("test_", pairs_resized=False)}
    info["label_values"] = (f"{checked} labels decoded at load, values within 0..{k - 1} or 255; the others are "
                            "checked as they are read (a value that is no class is ignored, with one warning)")
    return Domain(name, SEGMENTATION, classes, train, test, size, info)
