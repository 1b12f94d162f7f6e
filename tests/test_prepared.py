"""``dabench datasets prepare``: a copy resized to the training size that runs read instead of the
originals, item for item equal, and only while it matches them."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from click.testing import CliRunner

from dabench.segdata import prepared
from dabench.cli import main
from dabench.protocol import load_domain
from test_seg_datasets import make_cityscapes, make_gta5, make_synthia, photo

pytestmark = pytest.mark.filterwarnings("ignore:gta5.*differ in size")


def originals(name, root, size):
    return load_domain(name, root, size, prepared=False)


def same_items(a, b) -> None:
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb), f"item {i} differs"


def prepare(root, name, *extra):
    return CliRunner().invoke(main, ["datasets", "prepare", name, "--data-root", str(root), "--workers", "2", *extra])


@pytest.fixture()
def root(tmp_path):
    make_gta5(tmp_path)
    make_cityscapes(tmp_path)
    make_synthia(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name, size, splits", [("gta5", 12, ["train"]), ("cityscapes", 16, ["train", "test"]),
                                                 ("synthia", 19, ["train"])])
def test_runs_read_the_prepared_copy_and_get_the_same_items(root, name, size, splits):
    r = prepare(root, name, "--image-size", str(size))
    assert r.exit_code == 0, r.output
    d = load_domain(name, root, size)
    folder = root / "prepared" / f"{name}@{d.image_size[0]}x{d.image_size[1]}"
    assert d.info["prepared_copy"] == str(folder) and str(folder) in r.output.replace("\n", "")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(manifest["splits"]) == sorted(splits)
    orig = originals(name, root, size)
    for split in splits:
        assert all(p.startswith(str(folder)) for pair in getattr(d, split).pairs for p in pair)
        same_items(getattr(orig, split), getattr(d, split))
    # the copy holds images at the training size: nothing left to resize when a run reads them
    from PIL import Image
    with Image.open(folder / "train" / "000000.png") as img:
        assert img.size == tuple(d.image_size)


def test_the_test_split_keeps_its_labels_at_full_resolution(root):
    assert prepare(root, "cityscapes", "--image-size", "16").exit_code == 0
    d = load_domain("cityscapes", root, 16)
    x, y = d.test[0]
    assert x.shape[1:] == (16, 32) and y.shape == (32, 64)  # images at the training size, labels as stored


def test_a_class_subset_reads_the_copy_of_its_files(root):
    assert prepare(root, "cityscapes", "--image-size", "16").exit_code == 0
    d = load_domain("cityscapes:16", root, 16)
    assert d.info["prepared_copy"].endswith("cityscapes@32x16")
    same_items(originals("cityscapes:16", root, 16).train, d.train)


def test_a_copy_of_another_size_or_of_changed_files_is_not_read(root):
    assert prepare(root, "gta5", "--image-size", "12").exit_code == 0
    assert "prepared_copy" not in load_domain("gta5", root, 24).info  # another training size: the originals
    photo(root / "gta5" / "images" / "00002.png", 40, 30, 7)  # an original changed after preparing
    with pytest.warns(UserWarning, match="no longer matches.*dabench datasets prepare gta5"):
        d = load_domain("gta5", root, 12)
    assert "prepared_copy" not in d.info
    same_items(originals("gta5", root, 12).train, d.train)


def test_an_interrupted_prepare_leaves_nothing_behind(root, monkeypatch):
    calls = []

    def fail_third(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    real = prepared._write_one
    monkeypatch.setattr(prepared, "_write_one", fail_third)
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared.prepare(originals("gta5", root, 12), root, workers=1)
    assert [p for p in (root / "prepared").iterdir() if p.suffix != ".lock"] == []  # the lock file stays
    assert "prepared_copy" not in load_domain("gta5", root, 12).info


def test_what_a_killed_prepare_left_is_removed_by_the_next(root):
    """SIGKILL skips the cleanup: its temporary folder stays, and the next prepare of that copy removes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = prepared.prepare(originals("gta5", root, 12), root, workers=1)
        left = target.parent / f".{target.name}.k1ll3d"
        (left / "train").mkdir(parents=True)
        (left / "train" / "000000.png").write_bytes(b"half")
        prepared.prepare(originals("gta5", root, 12), root, workers=1)
    assert not left.exists() and sorted(p.name for p in target.parent.iterdir() if p.is_dir()) == [target.name]


def test_bad_input_is_refused_with_a_message(root, tmp_path_factory):
    r = prepare(root, "streets-sim")
    assert r.exit_code == 2 and "nothing to prepare" in r.output and "Traceback" not in r.output
    r = CliRunner(env={"DABENCH_DATA": ""}).invoke(main, ["datasets", "prepare", "gta5"])
    assert r.exit_code == 2 and "--data-root" in r.output
    r = prepare(root, "gta5", "--workers", "0")
    assert r.exit_code == 2 and "--workers" in r.output
    empty = tmp_path_factory.mktemp("empty")
    r = prepare(empty, "gta5")
    assert r.exit_code == 2 and "gta5" in r.output
    assert not (empty / "prepared").exists() or not any((empty / "prepared").iterdir())
    shutil.rmtree(root / "prepared", ignore_errors=True)


def test_a_run_records_that_it_read_the_prepared_copy(root, tmp_path):
    from dabench.runner import RunConfig
    from dabench.runner import build

    assert prepare(root, "gta5", "--image-size", "12").exit_code == 0
    cfg = RunConfig(algo="erm", src="gta5", tgt="cityscapes", data_root=str(root), image_size=12, steps=2,
                    out=str(tmp_path / "runs"), backbone="deeplabv2:resnet18")
    config = build(cfg).config
    assert config["data"]["src"]["prepared_copy"].endswith("gta5@21x12")
    assert "prepared_copy" not in config["data"]["tgt"]
