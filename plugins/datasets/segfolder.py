"""The user's own segmentation data: ``segfolder:PATH`` with images/, labels/ and classes.txt."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from dabench.data import SEGMENTATION, Domain
from dabench.errors import DabenchError
from dabench.registry import plugin
from dabench.segdata.pairs import (IMAGE_EXTENSIONS, Pair, SegmentationFiles, header, listing, most_common, pair_up, scaled,
                              survey, warn_mismatch)
from dabench.tasks import IGNORE_INDEX

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


@plugin("segfolder", task=SEGMENTATION, description="your own segmentation data: segfolder:PATH with images/, labels/, classes.txt")
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
                           f"indices; found {most_common(formats + ts.label_formats)}. Convert colour masks to index maps.")
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
