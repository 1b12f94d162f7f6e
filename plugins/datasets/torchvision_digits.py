"""MNIST, USPS and SVHN from the user's own copies, read in their published formats.

dabench never downloads them. Each loader names the exact files it expects under the data root
and where the data set is published. The official test splits are used as ``test``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dabench.data import CLASSIFICATION, Domain, TensorImages
from dabench.errors import DabenchError
from dabench.registry import plugin

from .digits import CLASSES, DEFAULT_SIZE, to_rgb_uint8

MNIST_FILES = [f"mnist/MNIST/raw/{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
USPS_FILES = ["usps/usps.bz2", "usps/usps.t.bz2"]
SVHN_FILES = ["svhn/train_32x32.mat", "svhn/test_32x32.mat"]
WHERE = {
    "mnist": "MNIST (LeCun et al., 1998) is published at http://yann.lecun.com/exdb/mnist/ ; unpack the four "
             ".gz files (gunzip) into that folder.",
    "usps": "USPS (Hull, 1994) is published on the LIBSVM data sets page, "
            "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps (keep the files bz2-compressed).",
    "svhn": "SVHN (Netzer et al., 2011) is published at http://ufldl.stanford.edu/housenumbers/ "
            "(format 2, cropped digits).",
}
Split = tuple[torch.Tensor, torch.Tensor]  # images (N, C, H, W) with values 0-255, labels (N,)


def _files(name: str, root: Path | None, expected: list[str]) -> list[Path]:
    """The expected files under the data root, or a DabenchError saying which are missing."""
    tail = f"{WHERE[name]} dabench never downloads: put the files there and set --data-root or DABENCH_DATA."
    if root is None:
        raise DabenchError(f"{name} reads {', '.join('<data root>/' + e for e in expected)}, but no data root is set. {tail}")
    paths = [Path(root).expanduser() / e for e in expected]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DabenchError(f"{name}: missing {', '.join(missing)}. {tail}")
    return paths


def _read(name: str, paths: list[Path], load) -> tuple[Split, Split]:
    try:
        return load(True), load(False)
    except Exception as exc:  # the parsers report bad files with anything from OSError to AssertionError
        raise DabenchError(f"{name}: could not read {', '.join(map(str, paths))} ({type(exc).__name__}: {exc}). "
                           f"The files look damaged or are not in the published format. {WHERE[name]}") from None


def _domain(name: str, splits: tuple[Split, Split], image_size: int | None, paths: list[Path]) -> Domain:
    size = image_size or DEFAULT_SIZE
    (xs, ys), (xt, yt) = splits
    if not all(len(y) and 0 <= y.min() and y.max() <= 9 for y in (ys, yt)):
        raise DabenchError(f"{name}: the files hold no images or labels outside 0-9; they are not in the published "
                           f"format. {WHERE[name]}")
    return Domain(name, CLASSIFICATION, CLASSES, TensorImages(to_rgb_uint8(xs, size), ys),
                  TensorImages(to_rgb_uint8(xt, size), yt), size,
                  info={"train_images": len(ys), "test_images": len(yt), "files": [str(p) for p in paths]})


@plugin("mnist", task=CLASSIFICATION, description="MNIST from ROOT/mnist/MNIST/raw (60k/10k, official test split)")
def mnist(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """MNIST handwritten digits (LeCun et al., 1998), read by torchvision's MNIST class."""
    from torchvision.datasets import MNIST

    paths = _files("mnist", root, MNIST_FILES)

    def load(train: bool) -> Split:
        ds = MNIST(str(paths[0].parents[2]), train=train, download=False)
        return ds.data.unsqueeze(1), ds.targets.long()

    return _domain("mnist", _read("mnist", paths, load), image_size, paths)


@plugin("usps", task=CLASSIFICATION, description="USPS from ROOT/usps/usps.bz2, usps.t.bz2 (7,291/2,007 16x16, official test split)")
def usps(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """USPS handwritten zip-code digits (Hull, 1994), LIBSVM files read by torchvision's USPS class."""
    from torchvision.datasets import USPS

    paths = _files("usps", root, USPS_FILES)

    def load(train: bool) -> Split:
        ds = USPS(str(paths[0].parent), train=train, download=False)
        return torch.from_numpy(ds.data).unsqueeze(1), torch.as_tensor(ds.targets, dtype=torch.long)

    return _domain("usps", _read("usps", paths, load), image_size, paths)


@plugin("svhn", task=CLASSIFICATION, description="SVHN from ROOT/svhn/{train,test}_32x32.mat (73,257/26,032, official test split)")
def svhn(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """SVHN cropped house numbers (Netzer et al., 2011). Read with scipy as torchvision's SVHN does
    (X is (32, 32, 3, N), label 10 means digit 0), but without its MD5 check of the whole file."""
    from scipy.io import loadmat

    paths = _files("svhn", root, SVHN_FILES)

    def load(train: bool) -> Split:
        mat = loadmat(str(paths[0 if train else 1]))
        labels = mat["y"].astype(np.int64).reshape(-1)
        labels[labels == 10] = 0
        return torch.from_numpy(mat["X"]).permute(3, 2, 0, 1), torch.from_numpy(labels)

    return _domain("svhn", _read("svhn", paths, load), image_size, paths)
