"""Domains, the protocol's splits and the batches an algorithm sees.

A dataset plugin returns a ``Domain``: a task, class names and labelled splits. The protocol
(``dabench.protocol``) cuts those into source train/val and target train/val/test. Target
images reach ``update()`` through ``Batch.tgt_x``, a plain tensor: in unsupervised DA the
batch has no target label field at all, so no plugin can read one.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dabench.errors import DabenchError
from dabench.tasks import CLASSIFICATION, SEGMENTATION, task_of  # noqa: F401 - the task names, importable from here


@dataclass
class Domain:
    """A named domain. ``train`` is labelled; ``test`` is the official test split if there is one
    (otherwise the protocol holds one out of ``train``, with a fixed seed)."""

    name: str
    task: str
    classes: list[str]
    train: Dataset
    test: Dataset | None = None
    image_size: int | tuple[int, int] = 28
    info: dict[str, Any] = field(default_factory=dict)  # anything worth recording in config.json
    labeled: bool = True  # False: images without labels (a target given as arrays X alone)
    # Facts about the label space that a run records (config.json) for the tables and predictions:
    # named class subsets whose mean the tables show beside the full one (SYNTHIA -> Cityscapes:
    # {"mIoU13": [13 class names]}), and each class's colour in predicted masks (name -> RGB).
    class_subsets: dict[str, list[str]] = field(default_factory=dict)
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def image_count(name: str, arg: str | None, default: int, minimum: int = 10) -> int:
    """The image count of a generated data set's argument (``syndigits:20000``): ``default`` when
    there is none; anything but a whole number >= ``minimum`` is a clear error."""
    try:
        n = int(arg) if arg else default
    except ValueError:
        n = 0
    if n < minimum:
        raise DabenchError(f"{name}:{arg} - the argument is the number of images, a whole number of at least {minimum} "
                           f"(e.g. {name}:{2 * default}; default {default}).")
    return n


def read_image(path) -> torch.Tensor:
    """An image file as uint8 (3, H, W), RGB, or a DabenchError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            pixels = np.array(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports broken files in all three
        raise DabenchError(f"Cannot read the image {path} ({type(exc).__name__}: {exc}). "
                           "Replace or delete the file and run again.") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def resize_images(pixels: torch.Tensor, size, resample: str) -> torch.Tensor:
    """(..., 3, H, W) images (uint8 or float) at ``size`` (W, H), antialiased ``resample``
    (``Task.resample``: bilinear for classification, bicubic for segmentation); as they are when
    already that size. The one resize of images on their way into a network: the file loaders
    (``decode_image``, ``segfiles``), ``dabench predict`` and the notebook API all call it."""
    from torchvision.transforms import v2

    if tuple(pixels.shape[-2:]) == (size[1], size[0]):
        return pixels
    return v2.functional.resize(pixels, [size[1], size[0]], interpolation=v2.InterpolationMode(resample),
                                antialias=True)


def image_tensor(path, size, task: str) -> torch.Tensor:
    """An image file as a network reads it: float32 (3, H, W) in [-1, 1] at ``size`` (W, H), read
    and resized as the ``task``'s loaders read their files."""
    return to_unit_range(resize_images(read_image(path), size, task_of(task).resample))


def decode_image(path, size: int) -> np.ndarray:
    """An image file as classification data reads it: uint8 (size, size, 3), RGB, resized with
    ``resize_images``. The folder loaders and ``dabench predict`` both read files with it."""
    return resize_images(read_image(path), (size, size), task_of(CLASSIFICATION).resample).permute(1, 2, 0).numpy()


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels 0-255 (uint8, or floats) -> float32 in [-1, 1]: the one conversion every loader uses.
    The input is never modified."""
    return pixels.to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def _tensor(values, what: str, expected: str) -> torch.Tensor:
    """User data (numpy, torch, nested lists) as a CPU tensor, or a DabenchError saying why not."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    try:
        array = np.asarray(values)
    except ValueError as exc:  # a ragged list: items of different shapes
        raise DabenchError(f"{what}: expected {expected}, but the items differ in shape ({exc}).") from None
    if array.dtype.kind not in "biuf":
        raise DabenchError(f"{what}: expected numbers ({expected}), got {array.dtype} values"
                           f"{' (class names? map them to ids 0..K-1 and pass the names as classes=)' if array.dtype.kind in 'USO' else ''}.")
    return torch.as_tensor(array)


def _labels(labels, n: int) -> torch.Tensor:
    """Class ids or label maps as int64; floats must be whole numbers (never truncated)."""
    y = _tensor(labels, "labels", f"{n} integer class ids or label maps")
    if y.is_floating_point():
        bad = ~torch.isfinite(y) | (y != y.round())
        if bool(bad.any()):
            raise DabenchError(f"labels: expected integer class ids, got {int(bad.sum())} values that are not whole "
                               f"numbers (e.g. {y[bad].flatten()[0].item()}). Pass ints (0..K-1).")
    elif y.dtype == torch.bool:
        raise DabenchError("labels: expected integer class ids, got booleans. Pass ints (0..K-1).")
    return y.long()


def as_uint8_images(images, what: str = "images") -> torch.Tensor:
    """User arrays -> uint8 (N, 3, H, W): numpy or torch, (N, H, W), (N, C, H, W) or (N, H, W, C)
    with C 1 or 3, uint8 0-255 or floats in [0, 1]; one channel is replicated to three."""
    x = _tensor(images, what, "images of one size")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or (x.shape[1] not in (1, 3) and x.shape[-1] not in (1, 3)):
        raise DabenchError(f"{what}: expected images shaped (N, H, W), (N, C, H, W) or (N, H, W, C) with 1 or 3 "
                           f"channels, got shape {tuple(x.shape)}.")
    if x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise DabenchError(f"{what}: expected uint8 (0-255) or float (0-1) pixels, got {x.dtype}.")
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise DabenchError(f"{what}: {bad} pixel values are NaN or infinite. Replace them (e.g. np.nan_to_num) "
                               "before training: dabench does not guess what they stood for.")
        if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
            raise DabenchError(f"{what}: float pixels must lie in [0, 1] (got {float(x.min()):.3g} to "
                               f"{float(x.max()):.3g}); divide by the maximum or pass uint8 0-255.")
        x = (x.float() * 255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous()


def from_arrays(images, labels=None, *, classes: list[str] | None = None, name: str | None = None,
                task: str = CLASSIFICATION) -> Domain:
    """A domain from arrays, as skada and ADAPT take data: ``images`` as ``as_uint8_images`` reads
    them; ``labels`` (N,) class ids for classification, (N, H, W) label maps for segmentation (255:
    ignore), or None for unlabelled target images (of ``task``). ``classes`` defaults to "0", "1", ... up to
    the largest label. The name (the run folder's) is a hash of the content unless given, so the
    same arrays give the same run."""
    x = as_uint8_images(images)
    digest = hashlib.sha1(x.numpy().tobytes())
    if labels is None:
        y = torch.full((len(x),), -1, dtype=torch.long)  # placeholders, never served: the domain is unlabelled
        classes = classes or ["0"]
    else:
        y = _labels(labels, len(x))
        if y.ndim not in (1, 3) or len(y) != len(x) or (y.ndim == 3 and y.shape[1:] != x.shape[2:]):
            raise DabenchError(f"labels: expected (N,) class ids or (N, H, W) label maps matching the {len(x)} images "
                               f"of size {tuple(x.shape[2:])}, got shape {tuple(y.shape)}.")
        task = CLASSIFICATION if y.ndim == 1 else SEGMENTATION
        digest.update(y.numpy().tobytes())
        ignore = task_of(task).ignore_index
        known = y[y != ignore] if ignore is not None else y
        if len(known) and (int(known.min()) < 0 or (classes is not None and int(known.max()) >= len(classes))):
            raise DabenchError(f"labels must be class ids 0..{len(classes) - 1 if classes else 'K-1'}"
                               f"{f' ({ignore}: ignore)' if ignore is not None else ''}, got {int(known.min())}..{int(known.max())}.")
        if classes is None:
            classes = [str(c) for c in range(int(known.max()) + 1 if len(known) else 1)]
    h, w = x.shape[2:]
    if task_of(task).one_size and h != w:
        raise DabenchError(f"Classification images must be square (all of one size), got {w}x{h}. Crop or resize them.")
    name = name or f"arrays-{digest.hexdigest()[:10]}"
    return Domain(name, task, list(classes), TensorImages(x, y), image_size=h if task_of(task).one_size else (w, h),
                  info={"arrays": len(x)}, labeled=labels is not None)


class TensorImages(Dataset):
    """Images kept in memory as uint8 (N, C, H, W) with integer labels; served as floats in [-1, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"TensorImages wants uint8 images (N, C, H, W) and N labels; got {images.dtype} "
                             f"{tuple(images.shape)} and {len(labels)} labels")
        self.images, self.targets = images, labels.long()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get_batch([i])[0][0], self.targets[i]

    def get_batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return to_unit_range(self.images[idx]), self.targets[idx]

    def labels(self) -> np.ndarray:
        return self.targets.numpy()

    def images_only(self) -> "ImageTensor":
        return ImageTensor(self.images)


class Subset(Dataset):
    """A view on some indices of a dataset; keeps the fast batch path and the label listing."""

    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]

    def get_batch(self, idx: Sequence[int]):
        return get_batch(self.base, self.indices[np.asarray(idx, dtype=np.int64)].tolist())

    def image(self, i: int) -> torch.Tensor:
        return image_of(self.base, int(self.indices[i]))

    def labels(self) -> np.ndarray:
        return labels_of(self.base)[self.indices]


class ImageTensor(Dataset):
    """Images kept in memory as uint8 (N, C, H, W), no labels: ``TensorImages.images_only()``."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.image(i)

    def image(self, i: int) -> torch.Tensor:
        return to_unit_range(self.images[i])

    def get_batch(self, idx: Sequence[int]) -> torch.Tensor:
        return to_unit_range(self.images[torch.as_tensor(idx, dtype=torch.long)])


class SourceDomains(Dataset):
    """Several labelled source domains (``--src a,b,c``) as one dataset: evaluation reads them
    pooled (DomainBed's training-domain validation), and training draws one minibatch from each
    domain per step (``source_stream``). ``domains`` holds each domain's own dataset."""

    def __init__(self, domains: Sequence[Dataset]):
        self.domains = list(domains)
        self.offsets = np.cumsum([0] + [len(d) for d in self.domains])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        d = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return d, int(i - self.offsets[d])

    def __getitem__(self, i: int):
        d, j = self._locate(int(i))
        return self.domains[d][j]

    def image(self, i: int) -> torch.Tensor:
        d, j = self._locate(int(i))
        return image_of(self.domains[d], j)

    def get_batch(self, idx: Sequence[int]):
        """The items ``idx``, in order; each run of consecutive items of one domain in one read."""
        if not in_memory(self):
            return torch.utils.data.default_collate([self[i] for i in idx])
        parts = [get_batch(self.domains[d], [j for _, j in run])
                 for d, run in itertools.groupby(map(self._locate, idx), key=lambda t: t[0])]
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    def labels(self) -> np.ndarray:
        return np.concatenate([labels_of(d) for d in self.domains])


def domains_of(ds: Dataset) -> list[Dataset]:
    """The source domains a training dataset holds: its ``domains`` (``SourceDomains``), or itself."""
    return ds.domains if isinstance(ds, SourceDomains) else [ds]


def unlabeled(ds: Dataset) -> Dataset:
    """A view of ``ds`` from which no label can be reached: the dataset's own ``images_only()``
    (TensorImages, the folder and segmentation-file readers have one), through Subsets. A dataset
    without one is used as it is; give yours an ``images_only()`` to keep its labels sealed."""
    if isinstance(ds, Subset):
        return Subset(unlabeled(ds.base), ds.indices)
    if hasattr(ds, "images_only"):
        return ds.images_only()
    return ds


class ImagesOnly(Dataset):
    """The unlabelled view of a labelled dataset: yields images and nothing else. It holds only
    the dataset's label-free view (``unlabeled``), so no attribute path leads to a label."""

    def __init__(self, base: Dataset):
        self._images = unlabeled(base)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return image_of(self._images, i)

    def get_batch(self, idx: Sequence[int]) -> torch.Tensor:
        if not in_memory(self._images):
            return torch.stack([self[i] for i in idx])
        out = get_batch(self._images, idx)
        return out[0] if isinstance(out, (tuple, list)) else out


def image_of(ds: Dataset, i: int) -> torch.Tensor:
    """Item ``i``'s image alone: through ``ds.image(i)`` when the dataset has one (file-backed
    segmentation data then skips decoding the label), else ``ds[i][0]``."""
    return ds.image(i) if hasattr(ds, "image") else ds[i][0]


def in_memory(ds: Dataset) -> bool:
    """Whether ``ds`` serves whole batches by indexing (no DataLoader worth its start-up): true for
    ``TensorImages``, for views on one, and for any dataset of its own with a ``get_batch``."""
    if isinstance(ds, Subset):
        return in_memory(ds.base)
    if isinstance(ds, ImagesOnly):
        return in_memory(ds._images)
    if isinstance(ds, SourceDomains):
        return all(in_memory(d) for d in ds.domains)
    return hasattr(ds, "get_batch")


def get_batch(ds: Dataset, idx: Sequence[int]):
    """Fetch several items at once: through ``ds.get_batch`` when it has one, else item by item."""
    if hasattr(ds, "get_batch"):
        return ds.get_batch(idx)
    return torch.utils.data.default_collate([ds[i] for i in idx])


def labels_of(ds: Dataset) -> np.ndarray:
    """Class labels of a classification dataset without decoding its images (``labels()``), or by
    reading every item as a fallback."""
    if hasattr(ds, "labels"):
        return np.asarray(ds.labels())
    return np.asarray([int(ds[i][1]) for i in range(len(ds))])


@dataclass
class Labeled:
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Batch:
    """What ``Algorithm.update`` receives each step.

    ``tgt_x`` holds unlabelled target images; it is None in domain generalisation (``--setting
    dg``), where no target image is seen in training. ``tgt_labeled`` is None unless the run was
    given a labelled-target budget (``--tgt-labeled N``) or the algorithm is the target-trained
    oracle. ``tgt_pseudo`` holds labels the algorithm's own model made for ``tgt_x`` (a
    self-training stage asked for them); it is never ground truth. With several source domains
    (``--src a,b,c``), ``src_x`` holds one minibatch of each, in order, and ``src_domain`` each
    image's domain index (0, 1, ...); None with one source.
    """

    src_x: torch.Tensor
    src_y: torch.Tensor
    tgt_x: torch.Tensor | None
    tgt_labeled: Labeled | None = None
    tgt_pseudo: torch.Tensor | None = None
    src_domain: torch.Tensor | None = None

    def to(self, device: torch.device, channels_last: bool = False) -> "Batch":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            t = t.to(device, non_blocking=True)
            return t.contiguous(memory_format=torch.channels_last) if channels_last and t.ndim == 4 and t.is_floating_point() else t

        lab = Labeled(move(self.tgt_labeled.x), move(self.tgt_labeled.y)) if self.tgt_labeled else None
        return Batch(move(self.src_x), move(self.src_y), move(self.tgt_x), lab, move(self.tgt_pseudo),
                     move(self.src_domain))

    def source_domains(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) of each source domain: one group with a single source."""
        return list(zip(by_domain(self.src_x, self.src_domain), by_domain(self.src_y, self.src_domain)))

    def labeled_parts(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Labelled (images, labels) groups, source first. Segmentation domains differ in image
        size, so labelled target images are a second group rather than concatenated."""
        parts = [(self.src_x, self.src_y)]
        if self.tgt_labeled is not None:
            parts.append((self.tgt_labeled.x, self.tgt_labeled.y))
        return parts

    def labeled_sources(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Source images and labels, plus the labelled target samples when there are any, as one
        batch (classification images share one size)."""
        return concat(self.labeled_parts())

    def with_target(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` followed by the unlabelled target images (none in domain generalisation)."""
        return x if self.tgt_x is None else torch.cat([x, self.tgt_x])

    def aligned_groups(self, activations: torch.Tensor) -> list[torch.Tensor]:
        """The groups a discrepancy term (CORAL, MMD) aligns, cut from ``activations`` of
        ``labeled_sources()`` followed by ``tgt_x``: [source, target] in DA (labelled target rows
        left out); each source domain's rows in domain generalisation (no target), where the term
        is averaged over every pair of domains, as DomainBed's CORAL and MMD do."""
        n_src = len(self.src_x)
        if self.tgt_x is not None:
            return [activations[:n_src], activations[len(activations) - len(self.tgt_x):]]
        return by_domain(activations[:n_src], self.src_domain)


def concat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled (images, labels) groups as one batch (a single group as it is, uncopied)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def by_domain(rows: torch.Tensor, domain: torch.Tensor | None) -> list[torch.Tensor]:
    """``rows`` cut by source-domain index (``Batch.src_domain``), in index order; one group when
    ``domain`` is None (a single source)."""
    if domain is None:
        return [rows]
    return [rows[domain == d] for d in domain.unique(sorted=True).tolist()]


def step_indices(n: int, batch_size: int, seed: int, stream: int, step: int) -> list[int]:
    """The indices of batch ``step`` of an endless shuffled stream over ``n`` items.

    Stateless: each epoch's permutation comes from (seed, stream, epoch), so batch k is the same
    whether the run started at 0 or resumed at k. This is what makes resume exact.
    """
    if n == 0:
        raise ValueError("cannot draw batches from an empty split")
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, stream, epoch]).permutation(n)
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(take.tolist())
        pos += len(take)
    return out


class _StepSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, batch_size: int, seed: int, stream: int, start: int, stop: int):
        self.args = (n, batch_size, seed, stream)
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[list[int]]:
        from dabench.distributed import shard

        for step in range(self.start, self.stop):
            yield shard(step_indices(*self.args, step))  # under torchrun, this rank's slice of the global batch

    def __len__(self) -> int:
        return self.stop - self.start


def stream(ds: Dataset, batch_size: int, seed: int, stream_id: int, start: int, stop: int, workers: int = 0) -> Iterator:
    """Batches ``start .. stop-1`` of a seeded endless stream. In-memory datasets are indexed
    directly; file-backed ones go through a DataLoader with ``workers`` processes."""
    sampler = _StepSampler(len(ds), batch_size, seed, stream_id, start, stop)
    if in_memory(ds):
        return (ds.get_batch(idx) for idx in sampler)
    return iter(DataLoader(ds, batch_sampler=sampler, num_workers=workers, pin_memory=torch.cuda.is_available(),
                           persistent_workers=False))


SOURCE_STREAM = 0  # the stream ids of (seed, stream, epoch): source, target, labelled target,
TARGET_STREAM, LABELED_STREAM = 1, 2
EXTRA_SOURCE_STREAM = 10  # and the second, third, ... source domain (10, 11, ...)


def source_stream(ds: Dataset, batch_size: int, seed: int, start: int, stop: int, workers: int = 0) -> Iterator:
    """(images, labels, domain index or None) for steps ``start .. stop-1``: a single source's
    stream, or, for ``SourceDomains``, one minibatch of ``batch_size`` from each domain per step
    (as DomainBed draws them), concatenated in domain order. The first domain keeps the single
    source's stream, so its batches do not change when domains are added."""
    parts = domains_of(ds)
    ids = [SOURCE_STREAM] + [EXTRA_SOURCE_STREAM + i for i in range(len(parts) - 1)]
    streams = [stream(p, batch_size, seed, k, start, stop, workers) for p, k in zip(parts, ids)]
    if len(streams) == 1:
        return ((x, y, None) for x, y in streams[0])
    return _interleave(streams)


def _interleave(streams: list[Iterator]) -> Iterator:
    for batches in zip(*streams):
        index = torch.cat([torch.full((len(y),), d, dtype=torch.long) for d, (_, y) in enumerate(batches)])
        yield torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), index


def ordered_batches(ds: Dataset, batch_size: int, workers: int = 0) -> Iterator:
    """Every item once, in order: for evaluation."""
    n = len(ds)
    if in_memory(ds):
        return (ds.get_batch(list(range(i, min(i + batch_size, n)))) for i in range(0, n, batch_size))
    return iter(DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers))
