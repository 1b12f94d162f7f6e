"""The segmentation data set plugins on tiny folders written in the published formats: GTA5
(palette label PNGs holding label ids), Cityscapes (train/val by city, *_gtFine_labelIds.png),
SYNTHIA-RAND-CITYSCAPES (16-bit, 3-channel label PNGs) and the user's own segfolder."""
from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dabench.cli import main
from dabench.data import ImagesOnly, in_memory, ordered_batches
from dabench.errors import DabenchError
from dabench.protocol import build_splits, load_domain
from dabench_plugins.datasets.cityscapes import CITYSCAPES_CLASSES, PALETTE, SYNTHIA_13, SYNTHIA_16
from dabench_plugins.datasets.cityscapes import cityscapes, gta5, synthia
from dabench.segdata.pairs import SegmentationFiles, header, read_first_channel, read_ids, scaled
from dabench_plugins.datasets.segfolder import segfolder

CAR16, CAR13 = SYNTHIA_16.index("car"), SYNTHIA_13.index("car")


def stripes(ids: list[int], w: int, h: int) -> np.ndarray:
    """Vertical stripes of equal width, one per id: nearest resizing keeps the first and last."""
    return np.repeat(np.asarray(ids), w // len(ids))[None].repeat(h, 0)


def photo(path: Path, w: int, h: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def palette_label(path: Path, ids: np.ndarray) -> None:
    """Like GTA5's labels: 'P' mode, index = Cityscapes label id, the palette holds colours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), "P")
    colours = list(PALETTE.values())
    img.putpalette([c for i in range(256) for c in colours[i % len(colours)]])
    img.save(path)


def grey_label(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), "L").save(path)


def png16(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit, 3-channel PNG (colour type 2, bit depth 16), as SYNTHIA's GT/LABELS. Written by
    hand: PIL, imageio and torchvision cannot write one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


GTA_IDS = [7, 26, 0, 24]  # road, car, unlabelled, person -> train ids 0, 13, 255, 11
CS_IDS = [7, 26, 22, 0]  # road, car, terrain, unlabelled
SYN_IDS = [3, 8, 21, 300]  # road, car, wall, and an id no 8-bit read could hold


def make_gta5(root: Path, n: int = 4) -> None:
    for i in range(1, n + 1):
        photo(root / "gta5" / "images" / f"{i:05d}.png", 40, 24, i)
        w, h = (48, 28) if i == 3 else (40, 24)  # frame 3: a label of another size, as in the real set
        palette_label(root / "gta5" / "labels" / f"{i:05d}.png", stripes(GTA_IDS, w, h))


def make_cityscapes(root: Path) -> None:
    for split, cities in (("train", ["aachen", "bremen"]), ("val", ["frankfurt", "lindau"])):
        for c, city in enumerate(cities):
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                photo(root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 64, 32, c * 2 + k)
                gt = root / "cityscapes" / "gtFine" / split / city
                grey_label(gt / f"{stem}_gtFine_labelIds.png", stripes(CS_IDS, 64, 32))
                grey_label(gt / f"{stem}_gtFine_instanceIds.png", np.full((32, 64), 99))  # must be skipped
                (gt / f"{stem}_gtFine_polygons.json").write_text("{}")


def make_synthia(root: Path, n: int = 3, folder: str = "synthia") -> None:
    for i in range(n):
        photo(root / folder / "RGB" / f"{i:07d}.png", 64, 38, i)
        label = np.zeros((38, 64, 3), dtype=np.uint16)
        label[..., 0] = stripes(SYN_IDS, 64, 38)
        label[..., 1] = 1000 + i  # the instance channel: not a class
        png16(root / folder / "GT" / "LABELS" / f"{i:07d}.png", label)


def test_synthia_is_found_where_its_archive_unpacks(tmp_path):
    make_synthia(tmp_path, 2, folder="synthia/RAND_CITYSCAPES")
    d = synthia(root=tmp_path, image_size=19)
    assert len(d.train) == 2 and d.info["path"] == str(tmp_path / "synthia" / "RAND_CITYSCAPES")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_gta5(root)
    make_cityscapes(root)
    make_synthia(root)
    return root


def load_gta5(root, **kw):
    with pytest.warns(UserWarning, match="label size|differ in size"):
        return gta5(root=root, **kw)


# --- GTA5 ---------------------------------------------------------------------------------------

def test_gta5_reads_palette_indices_as_label_ids_not_colours(root):
    label = root / "gta5" / "labels" / "00001.png"
    assert Image.open(label).mode == "P"
    d = load_gta5(root, image_size=24)
    assert d.task == "segmentation" and d.classes == CITYSCAPES_CLASSES and d.test is None
    ids = d.train.train_ids(str(label))
    assert ids.dtype == np.uint8 and ids.shape == (24, 40)
    assert ids[0, 0] == 0 and ids[0, 10] == 13 and ids[0, 20] == 255 and ids[0, 39] == 11  # 7, 26, 0, 24 by hand


def test_gta5_items_are_unit_images_and_int64_train_ids_at_the_training_size(root):
    d = load_gta5(root, image_size=24)
    assert d.image_size == (43, 24)  # 24 * 1280 / 720 = 42.7
    for i in range(len(d.train)):
        x, y = d.train[i]
        assert x.shape == (3, 24, 43) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1
        assert y.shape == (24, 43) and y.dtype == torch.int64
        assert set(y.unique().tolist()) == {0, 13, 255, 11}
        assert (y[:, 0] == 0).all() and (y[:, -1] == 11).all()
    assert torch.equal(d.train.image(1), d.train[1][0])
    assert not hasattr(d.train, "get_batch")  # file data goes through a DataLoader


def test_gta5_default_size_and_height_scaling():
    assert scaled((1280, 720), None, "gta5") == (1280, 720)
    assert scaled((1280, 720), 256, "gta5") == (455, 256)
    assert scaled((1024, 512), 256, "cityscapes") == (512, 256)
    with pytest.raises(DabenchError, match="image height"):
        scaled((1280, 720), -3, "gta5")


def test_gta5_warns_once_about_labels_of_another_size_and_counts_them(root):
    with pytest.warns(UserWarning, match=r"1 of 4 labels differ in size .*00003\.png: image 40x24, label 48x28") as rec:
        d = gta5(root=root, image_size=24)
    assert len([w for w in rec if "differ in size" in str(w.message)]) == 1
    assert d.info["label_size_differs"].startswith("1 of 4")
    assert d.info["label_format"] == "8-bit palette PNG (4)" and d.info["images"] == 4
    x, y = d.train[2]  # the odd frame comes out at the common size
    assert x.shape == (3, 24, 43) and y.shape == (24, 43) and (y[:, 0] == 0).all()


def test_gta5_missing_layout_names_the_expected_folder_and_where_to_get_it(tmp_path):
    with pytest.raises(DabenchError, match="no data root"):
        gta5()
    with pytest.raises(DabenchError) as e:
        gta5(root=tmp_path)
    assert str(tmp_path / "gta5" / "images") in str(e.value) and "download.visinf.tu-darmstadt.de" in str(e.value)


def test_gta5_unpaired_files_are_named_and_counted(tmp_path):
    make_gta5(tmp_path, n=6)
    (tmp_path / "gta5" / "labels" / "00002.png").unlink()
    (tmp_path / "gta5" / "labels" / "00005.png").unlink()
    photo(tmp_path / "gta5" / "labels" / "00009.png", 4, 4)
    with pytest.raises(DabenchError) as e:
        gta5(root=tmp_path)
    msg = str(e.value)
    assert "2 images without a label" in msg and "00002.png" in msg and "00005.png" in msg
    assert "1 labels without an image" in msg and "00009.png" in msg


def test_gta5_colour_labels_are_refused(tmp_path):
    photo(tmp_path / "gta5" / "images" / "00001.png", 8, 8)
    photo(tmp_path / "gta5" / "labels" / "00001.png", 8, 8)  # an RGB (colour) label
    with pytest.raises(DabenchError, match="8-bit RGB PNG"):
        gta5(root=tmp_path)


# --- Cityscapes ---------------------------------------------------------------------------------

def test_cityscapes_train_val_by_city_with_full_resolution_test_labels(root):
    d = cityscapes(root=root, image_size=16)
    assert d.image_size == (32, 16) and d.classes == CITYSCAPES_CLASSES
    assert len(d.train) == 4 and len(d.test) == 4
    assert {Path(p).parent.name for p, _ in d.train.pairs} == {"aachen", "bremen"}
    assert {Path(p).parent.name for p, _ in d.test.pairs} == {"frankfurt", "lindau"}
    x, y = d.train[0]
    assert x.shape == (3, 16, 32) and y.shape == (16, 32)
    x, y = d.test[0]
    assert x.shape == (3, 16, 32) and y.shape == (32, 64) and y.dtype == torch.int64  # stored 2048x1024 in the real set
    assert y[0].tolist() == [0] * 16 + [13] * 16 + [9] * 16 + [255] * 16  # 7 road, 26 car, 22 terrain, 0
    assert torch.equal(d.test.image(3), d.test[3][0])
    assert "64x32" in d.info["test_label_size"]
    batch = next(ordered_batches(d.test, 2))
    assert batch[0].shape == (2, 3, 16, 32) and batch[1].shape == (2, 32, 64)


@pytest.mark.parametrize("arg, classes, expected", [
    ("16", SYNTHIA_16, [0, CAR16, 255, 255]),  # terrain is not among the 16
    ("13", SYNTHIA_13, [0, CAR13, 255, 255]),
])
def test_cityscapes_synthia_subsets_renumber_the_ids(root, arg, classes, expected):
    d = cityscapes(arg, root=root, image_size=16)
    assert d.classes == classes and d.name == f"cityscapes:{arg}"
    y = d.test[0][1]
    assert y[0, ::16].tolist() == expected
    # the data set, not the core, says which class-subset means its tables add: mIoU13 on the 16 classes only
    assert d.class_subsets == ({"mIoU13": SYNTHIA_13} if arg == "16" else {})
    assert d.colours["car"] == PALETTE["car"] and set(d.colours) == set(classes)


def test_the_19_class_domains_add_no_subset_mean(root):
    assert load_gta5(root, image_size=24).class_subsets == {} and cityscapes(root=root, image_size=16).class_subsets == {}
    assert synthia(root=root, image_size=19).class_subsets == {"mIoU13": SYNTHIA_13}


def test_cityscapes_errors_name_the_expected_paths(tmp_path, root):
    with pytest.raises(DabenchError, match="16 or 13"):
        cityscapes("15", root=root)
    (tmp_path / "cityscapes" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(DabenchError) as e:
        cityscapes(root=tmp_path)
    assert str(tmp_path / "cityscapes" / "gtFine" / "train") in str(e.value)
    assert "cityscapes-dataset.com" in str(e.value) and "gtFine_trainvaltest.zip" in str(e.value)


# --- SYNTHIA ------------------------------------------------------------------------------------

def test_synthia_labels_are_read_at_16_bits(root):
    label = root / "synthia" / "GT" / "LABELS" / "0000000.png"
    assert header(label)[1] == "16-bit RGB PNG"
    stored = read_first_channel(label)
    assert stored.dtype == np.uint16 and stored[0, ::16].tolist() == SYN_IDS
    eight_bit = np.asarray(Image.open(label))[0, ::16, 0].tolist()
    assert eight_bit != SYN_IDS  # what a plain PIL open makes of it: the high bytes, [0, 0, 0, 1]
    d = synthia(root=root, image_size=19)
    assert d.classes == SYNTHIA_16 and d.image_size == (32, 19) and d.test is None
    ids = d.train.train_ids(str(label))
    assert ids[0, ::16].tolist() == [0, CAR16, SYNTHIA_16.index("wall"), 255]  # 3 road, 8 car, 21 wall, 300
    x, y = d.train[1]
    assert x.shape == (3, 19, 32) and y.shape == (19, 32) and y[:, 0].eq(0).all() and y[:, -1].eq(255).all()


def test_synthia_13_drops_wall(root):
    d = synthia("13", root=root)
    assert d.classes == SYNTHIA_13 and d.image_size == (1280, 760)
    assert d.train.train_ids(d.train.pairs[0][1])[0, ::16].tolist() == [0, CAR13, 255, 255]
    with pytest.raises(DabenchError, match="no 19-class version"):
        synthia("19", root=root)


def test_synthia_labels_resaved_at_8_bits_are_refused(tmp_path):
    photo(tmp_path / "synthia" / "RGB" / "0000000.png", 8, 8)
    photo(tmp_path / "synthia" / "GT" / "LABELS" / "0000000.png", 8, 8)
    with pytest.raises(DabenchError, match="16-bit RGB PNG.*8-bit RGB PNG"):
        synthia(root=tmp_path)
    with pytest.raises(DabenchError) as e:
        synthia(root=tmp_path / "elsewhere")
    assert str(tmp_path / "elsewhere" / "synthia" / "RGB") in str(e.value) and "synthia-dataset.net" in str(e.value)


# --- segfolder ----------------------------------------------------------------------------------

def make_segfolder(path: Path, classes=("road", "sky", "car"), test: bool = True) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "classes.txt").write_text("\n".join(classes) + "\n")
    photo(path / "images" / "a.png", 30, 20, 1)
    photo(path / "images" / "b.jpg", 45, 30, 2)
    grey_label(path / "labels" / "a.png", stripes([0, 1, 2], 30, 20))
    grey_label(path / "labels" / "b.png", stripes([2, 255, 0], 45, 30))
    if test:
        photo(path / "test" / "images" / "c.png", 60, 40, 3)
        grey_label(path / "test" / "labels" / "c.png", stripes([1, 1, 0], 60, 40))
        photo(path / "test" / "images" / "d.png", 30, 20, 4)
        grey_label(path / "test" / "labels" / "d.png", stripes([0, 2, 1], 30, 20))  # resized to the first's size


def test_segfolder_reads_images_labels_and_classes(tmp_path):
    make_segfolder(tmp_path / "mine")
    d = segfolder(str(tmp_path / "mine"))
    assert d.classes == ["road", "sky", "car"] and d.image_size == (30, 20)  # the first image's size
    assert len(d.train) == 2 and len(d.test) == 2
    x, y = d.train[1]  # the jpg, resized to the first image's size
    assert x.shape == (3, 20, 30) and y.shape == (20, 30) and set(y.unique().tolist()) == {2, 255, 0}
    x, y = d.test[0]
    assert x.shape == (3, 20, 30) and y.shape == (40, 60)  # test labels at their stored size
    y = d.test[1][1]  # a smaller test label: nearest to the first one's size, so that batches stack
    assert y.shape == (40, 60) and y[0, ::20].tolist() == [0, 2, 1]
    assert d.info["test_label_sizes"] == "60x40 (1), 30x20 (1)" and d.info["label_format"] == "8-bit grey PNG (2)"
    assert segfolder(str(tmp_path / "mine"), image_size=10).image_size == (15, 10)


def test_segfolder_relative_path_is_looked_up_in_the_data_root_first(tmp_path, monkeypatch):
    make_segfolder(tmp_path / "root" / "mine", test=False)
    make_segfolder(tmp_path / "cwd" / "mine", classes=("a", "b", "c", "d"), test=False)
    monkeypatch.chdir(tmp_path / "cwd")
    assert segfolder("mine", root=tmp_path / "root").classes == ["road", "sky", "car"]
    assert segfolder("mine", root=tmp_path / "nothing-here").classes == ["a", "b", "c", "d"]
    with pytest.raises(DabenchError, match="no folder .*nope"):
        segfolder("nope", root=tmp_path / "root")


def test_segfolder_errors(tmp_path):
    make_segfolder(tmp_path / "m", test=False)
    (tmp_path / "m" / "labels" / "b.png").unlink()
    with pytest.raises(DabenchError, match=r"1 images without a label \(.*b\.jpg\)"):
        segfolder(str(tmp_path / "m"))
    (tmp_path / "m" / "classes.txt").unlink()
    with pytest.raises(DabenchError, match="classes.txt. Write one class name per line"):
        segfolder(str(tmp_path / "m"))
    make_segfolder(tmp_path / "two", classes=("road", "sky"))  # labels use 0..2
    with pytest.raises(DabenchError, match=r"holds the values 2, but .*classes.txt lists 2 classes"):
        segfolder(str(tmp_path / "two"))
    with pytest.raises(DabenchError, match="needs a path"):
        segfolder()


def test_segfolder_unknown_values_met_while_training_are_ignored_with_one_warning(tmp_path):
    make_segfolder(tmp_path / "m", test=False)
    d = segfolder(str(tmp_path / "m"))
    grey_label(tmp_path / "m" / "labels" / "a.png", stripes([0, 7, 2], 30, 20))  # changed after the load-time check
    with pytest.warns(UserWarning, match="holds the values 7"):
        y = d.train[0][1]
    assert y[0, ::10].tolist() == [0, 255, 2]


def test_crop_and_flip_move_image_and_label_together(root):
    base = load_gta5(root, image_size=24).train
    ds = SegmentationFiles(base.pairs, (43, 24), (43, 24), base.lut[:-1], crop=(20, 12), flip=True)
    x, y = ds[0]
    assert x.shape == (3, 12, 20) and y.shape == (12, 20)
    with pytest.raises(ValueError, match="label_size == image_size"):
        SegmentationFiles(base.pairs, (43, 24), None, base.lut[:-1], flip=True)
    assert read_ids(base.pairs[0][1]).dtype == np.uint8


# --- the command line and the protocol ----------------------------------------------------------

def test_datasets_check_counts_and_reports(root, tmp_path):
    with pytest.warns(UserWarning, match="differ in size"):
        r = CliRunner().invoke(main, ["datasets", "check", "gta5", "--data-root", str(root)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert re.search(r"train\W+4\W", text) and re.search(r"test\W+none", text), text
    assert "1280 x 720 (width x height)" in text and "palette" in text and "1 of 4" in text and text.endswith("ok")
    r = CliRunner().invoke(main, ["datasets", "check", "gta5", "--data-root", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 2 and "gta5" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("name, counts, expected", [
    ("cityscapes", (r"train\W+4\W", r"test\W+4\W"), ["8-bit grey PNG", "2,975 train, 500 val", "19: road"]),
    ("cityscapes:16", (r"train\W+4\W", r"test\W+4\W"), ["16: road"]),
    ("synthia", (r"train\W+3\W", r"test\W+none"), ["16-bit RGB PNG", "9400", "16: road"]),
    ("synthia:13", (r"train\W+3\W", r"test\W+none"), ["13: road"]),
])
def test_datasets_check_cityscapes_and_synthia(root, tmp_path, name, counts, expected):
    r = CliRunner().invoke(main, ["datasets", "check", name, "--data-root", str(root)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert all(re.search(c, text) for c in counts), text
    assert all(e in text for e in expected) and text.endswith("ok"), text
    r = CliRunner().invoke(main, ["datasets", "check", name, "--data-root", str(tmp_path)], catch_exceptions=False)
    folder = "leftImg8bit" if name.startswith("cityscapes") else "RGB"
    assert r.exit_code == 2 and folder in r.stderr and "Traceback" not in r.output


def test_gta5_to_cityscapes_splits_give_the_target_images_only(root, monkeypatch):
    with pytest.warns(UserWarning):
        src = load_domain("gta5", root, 16)
    tgt = load_domain("cityscapes", root, 16)
    splits = build_splits(src, tgt, 0, 0)
    assert splits.image_size == (28, 16) and splits.tgt_labeled is None
    assert isinstance(splits.tgt_train, ImagesOnly) and not in_memory(splits.tgt_train)
    monkeypatch.setattr(SegmentationFiles, "train_ids", lambda *a: pytest.fail("a target label was read"))
    x = splits.tgt_train[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 16, 32)
    assert len(splits.tgt_test) == 4 and len(splits.tgt_train) + len(splits.tgt_val) == 4
