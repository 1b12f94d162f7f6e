"""Prepared copies of file-backed segmentation data: decoded and resized once, read fast after.

Decoding a 1914x1052 GTA5 PNG and resizing it to 1280x720 costs more than its share of a GPU
step. ``dabench datasets prepare gta5 --data-root ~/data`` writes each image at the training size
(the resize of ``segfiles.resize_step``, stored as a lossless PNG, uncompressed by default:
decoding one takes half the time of a compressed one, for about 1.4 times the disk) and each label as its stored
ids, resized nearest to the size the split reads it at, into ``<data root>/prepared/gta5@1280x720``.
Every later run with that data root and size reads the copy instead of the originals and records
so in its config. An item read from the copy is bit for bit the item read from the originals:
the copy holds the resize's uint8 output (a resize to the size an image already has returns it
unchanged), and resizing ids nearest before the lookup table maps them equals mapping first.

The copy is used only while its manifest matches the originals: the same files (paths relative
to the data root, and their sizes), the same sizes. A copy that no longer matches is ignored
with a warning that says to prepare again.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from dabench.data import Domain
from dabench.errors import DabenchError
from dabench.data import read_image
from dabench.segdata.pairs import SegmentationFiles, read_ids, resize_step

FORMAT = 1  # bump when the layout changes: older copies are then prepared again
SPLITS = ("train", "test")


def folder_of(root: Path, name: str, image_size) -> Path:
    """``<root>/prepared/<name>@WxH``; characters a folder name cannot hold (``segfolder:/a/b``)
    become a short hash."""
    key = name if re.fullmatch(r"[\w.:-]+", name) else f"{name.split(':')[0]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return Path(root) / "prepared" / f"{key.replace(':', '_')}@{image_size[0]}x{image_size[1]}"


def _files(folder: Path, split: str, i: int) -> tuple[Path, Path]:
    """The prepared copy's image and label file of item ``i`` of ``split``."""
    return folder / split / f"{i:06d}.png", folder / split / f"{i:06d}_label.png"


def _file_splits(domain: Domain) -> dict[str, SegmentationFiles]:
    return {s: ds for s in SPLITS if isinstance(ds := getattr(domain, s), SegmentationFiles)}


def fingerprint(ds: SegmentationFiles, root: Path) -> str:
    """A hash of the split's files (paths relative to ``root`` where they lie under it, and byte
    sizes: one stat per file), its sizes, and the label reader."""
    h = hashlib.sha256(json.dumps([FORMAT, ds.image_size, ds.label_size, getattr(ds.read_label, "__name__", "")]).encode())
    root_text = os.fspath(Path(root).resolve()) + os.sep
    for pair in ds.pairs:
        for p in pair:
            full = os.path.realpath(p)
            rel = full[len(root_text):] if full.startswith(root_text) else full
            h.update(f"{rel}\0{os.stat(full).st_size}\0".encode())
    return h.hexdigest()


def _write_one(job: tuple) -> None:
    """One pair: the image at the training size, the label's ids at the split's label size."""
    image_path, label_path, read_label, image_size, label_size, out_image, out_label, level = job
    torch.set_num_threads(1)
    img = resize_step(image_size)(tv_tensors.Image(read_image(image_path)))
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(out_image, compress_level=level)
    ids = np.asarray(read_label(label_path))
    if label_size is not None and (ids.shape[1], ids.shape[0]) != tuple(label_size):
        mask = tv_tensors.Mask(torch.from_numpy(ids.astype(np.int32))[None])
        ids = v2.functional.resize(mask, [label_size[1], label_size[0]]).as_subclass(torch.Tensor)[0].numpy()
    dtype = np.uint8 if ids.max(initial=0) < 256 else np.uint16
    Image.fromarray(ids.astype(dtype)).save(out_label, compress_level=1)


def prepare(domain: Domain, root: Path, workers: int, progress=None, compression: int = 0) -> Path:
    """Write the prepared copy of ``domain`` under ``root``; return its folder. ``compression``:
    the images' PNG level (0 stored, fastest to read; 9 smallest). Written into a temporary folder
    and renamed at the end: an interrupted run leaves no half-made copy."""
    splits = _file_splits(domain)
    if not splits:
        raise DabenchError(f"{domain.name} is not read from image files (its images are generated or held in memory), "
                           "so there is nothing to prepare. Prepared copies are for file-backed segmentation data "
                           "(gta5, cityscapes, synthia, segfolder:PATH).")
    target = folder_of(root, domain.name, domain.image_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):  # one prepare of a copy at a time
        for left in target.parent.glob(f".{target.name}.*"):  # what killed prepares of this copy left
            if left.is_dir():
                shutil.rmtree(left, ignore_errors=True)
        return _write_copy(domain, splits, target, root, workers, progress, compression)


def _write_copy(domain: Domain, splits: dict, target: Path, root: Path, workers: int, progress, compression: int) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        manifest = {"format": FORMAT, "name": domain.name, "image_size": list(domain.image_size),
                    "png_compression": compression, "splits": {}}
        jobs = []
        for split, ds in splits.items():
            (tmp / split).mkdir()
            manifest["splits"][split] = {"images": len(ds), "label_size": ds.label_size and list(ds.label_size),
                                         "fingerprint": fingerprint(ds, root)}
            for i, (image_path, label_path) in enumerate(ds.pairs):
                jobs.append((image_path, label_path, ds.read_label, ds.image_size, ds.label_size,
                             *_files(tmp, split, i), compression))
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_write_one, jobs, chunksize=8):
                    progress and progress()
        else:
            for job in jobs:
                _write_one(job)
                progress and progress()
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def count(domain: Domain) -> int:
    return sum(len(ds) for ds in _file_splits(domain).values())


def use_prepared(domain: Domain, root: Path | None) -> Domain:
    """``domain`` reading its prepared copy when one under ``root`` matches it; as it is otherwise."""
    splits = _file_splits(domain) if root is not None else {}
    if not splits:
        return domain
    # cityscapes:16 reads the files of cityscapes: a copy of either serves both (the fingerprint decides)
    names = dict.fromkeys([domain.name, domain.name.split(":")[0]])
    folder = next((f for n in names if (f := folder_of(root, n, domain.image_size)).joinpath("manifest.json").exists()), None)
    if folder is None:
        return domain
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        stale = manifest.get("format") != FORMAT or set(manifest["splits"]) != set(splits) or any(
            manifest["splits"][s]["fingerprint"] != fingerprint(ds, root) for s, ds in splits.items())
    except (ValueError, KeyError, TypeError, OSError):
        stale = True
    if stale:
        warnings.warn(f"{domain.name}: the prepared copy {folder} no longer matches the original files or sizes, so "
                      f"the originals are read. Prepare it again: dabench datasets prepare {domain.name} --data-root "
                      f"{root}" + (f" --image-size {domain.image_size[1]}" if domain.image_size else ""), stacklevel=2)
        return domain
    swapped = {}
    for split, ds in splits.items():
        view = copy.copy(ds)
        view.pairs = [tuple(map(os.fspath, _files(folder, split, i))) for i in range(len(ds))]
        view.read_label = read_ids
        swapped[split] = view
    return replace(domain, **swapped, info={**domain.info, "prepared_copy": str(folder)})
