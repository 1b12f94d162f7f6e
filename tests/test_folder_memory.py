"""folder:PATH holds a small folder in memory, decoded once, and serves the same numbers as
decoding every file on demand; a folder over the limit is still decoded batch by batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dabench.data import in_memory, labels_of, ordered_batches, stream
from dabench.errors import DabenchError
from dabench.protocol import build_splits
from dabench_plugins.datasets.folder import DecodedFiles, ImageFiles, folder


def make_noise_folder(root, classes=("a", "b"), per_class=5, seed=0):
    """Random-pixel PNGs of varied sizes, so the bilinear resize has real work to do."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(9, 40, size=2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def on_demand_batch(ds, idx):
    return torch.utils.data.default_collate([ds[i] for i in idx])


def test_a_small_folder_is_held_in_memory_and_gives_the_numbers_of_decoding_on_demand(tmp_path, monkeypatch):
    root = make_noise_folder(tmp_path / "d")
    monkeypatch.delenv("DABENCH_FOLDER_MEMORY_MB", raising=False)
    held = folder(str(root), image_size=16)
    monkeypatch.setenv("DABENCH_FOLDER_MEMORY_MB", "0")
    on_disk = folder(str(root), image_size=16)
    assert isinstance(held.train, DecodedFiles) and in_memory(held.train) and held.info["in_memory"]
    assert type(on_disk.train) is ImageFiles and not in_memory(on_disk.train) and not on_disk.info["in_memory"]

    idx = list(range(len(held.train)))[::-1]
    x, y = held.train.get_batch(idx)
    x_ref, y_ref = on_demand_batch(on_disk.train, idx)
    assert x.shape == (10, 3, 16, 16) and x.dtype == torch.float32 and torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert held.train.memory().images.dtype == torch.uint8 and (labels_of(held.train) == labels_of(on_disk.train)).all()
    assert torch.equal(held.train[3][0], on_disk.train[3][0]) and int(held.train[3][1]) == on_disk.train[3][1]
    # what the trainer and the evaluation read: the seeded stream and the ordered batches
    a, b = list(stream(held.train, 4, 0, 1, 0, 5)), list(stream(on_disk.train, 4, 0, 1, 0, 5))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    a, b = list(ordered_batches(held.train, 3)), list(ordered_batches(on_disk.train, 3))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_the_protocol_splits_of_a_held_folder_are_served_from_memory(tmp_path, monkeypatch):
    monkeypatch.delenv("DABENCH_FOLDER_MEMORY_MB", raising=False)
    src = folder(str(make_noise_folder(tmp_path / "s", per_class=10)), image_size=8)
    tgt = folder(str(make_noise_folder(tmp_path / "t", per_class=10, seed=1)), image_size=8)
    splits = build_splits(src, tgt, 0, seed=0)
    assert in_memory(splits.src_train) and in_memory(splits.tgt_train) and in_memory(splits.tgt_test)


def test_both_official_splits_get_the_same_treatment(tmp_path, monkeypatch):
    make_noise_folder(tmp_path / "d" / "train")
    make_noise_folder(tmp_path / "d" / "test", per_class=2, seed=1)
    monkeypatch.delenv("DABENCH_FOLDER_MEMORY_MB", raising=False)
    held = folder(str(tmp_path / "d"), image_size=8)
    assert isinstance(held.train, DecodedFiles) and isinstance(held.test, DecodedFiles)
    assert held.info["decoded_mb"] == round(14 * 3 * 8 * 8 / 2**20, 1)
    x, y = held.test.get_batch([0, 1, 2, 3])
    x_ref, y_ref = on_demand_batch(ImageFiles(held.test.files, labels_of(held.test).tolist(), 8), [0, 1, 2, 3])
    assert torch.equal(x, x_ref) and y.tolist() == [0, 0, 1, 1] and torch.equal(y, y_ref)
    # 14 images of 3 x 8 x 8 bytes: train and test together decide, so a limit that one split fits
    # under but the pair does not keeps both on disk
    monkeypatch.setenv("DABENCH_FOLDER_MEMORY_MB", str(12 * 3 * 8 * 8 / 2**20))
    on_disk = folder(str(tmp_path / "d"), image_size=8)
    assert type(on_disk.train) is ImageFiles and type(on_disk.test) is ImageFiles


def test_the_limit_is_in_megabytes_of_decoded_images(tmp_path, monkeypatch):
    root = make_noise_folder(tmp_path / "d")  # 10 images: 10 * 3 * 32 * 32 bytes = 0.029 MB at size 32
    monkeypatch.setenv("DABENCH_FOLDER_MEMORY_MB", "0.03")
    assert isinstance(folder(str(root), image_size=32).train, DecodedFiles)
    assert type(folder(str(root), image_size=33).train) is ImageFiles
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("DABENCH_FOLDER_MEMORY_MB", bad)
        with pytest.raises(DabenchError, match="DABENCH_FOLDER_MEMORY_MB.*megabytes"):
            folder(str(root))


def test_a_held_folder_decodes_on_first_use_not_when_loaded(tmp_path, monkeypatch):
    root = make_noise_folder(tmp_path / "d")
    (root / "b" / "2.png").write_bytes(b"not a png")
    monkeypatch.delenv("DABENCH_FOLDER_MEMORY_MB", raising=False)
    d = folder(str(root))  # what `dabench datasets check` and an already-done run do: no decoding
    assert d.train._memory is None and len(d.train) == 10 and labels_of(d.train).tolist() == [0] * 5 + [1] * 5
    with pytest.raises(DabenchError, match=r"Cannot read the image .*b/2\.png.*Replace or delete the file"):
        next(stream(d.train, 4, 0, 0, 0, 1))
    with pytest.raises(DabenchError, match=r"b/2\.png"):
        d.train[0]
