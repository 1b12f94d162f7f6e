"""PACS, Office-Home, DomainNet and VisDA-2017 on tiny trees in their published layouts, checked
the way a user would: ``dabench datasets check``."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dabench.cli import main
from dabench.protocol import load_domain
from dabench_plugins.datasets.multidomain import PACS_CLASSES, VISDA_CLASSES


def image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path)


def check(root, name):
    return CliRunner().invoke(main, ["datasets", "check", name, "--data-root", str(root)])


def test_pacs(tmp_path):
    for i, c in enumerate(PACS_CLASSES):
        image(tmp_path / "PACS" / "photo" / c / f"{i}.jpg", i)
        image(tmp_path / "PACS" / "photo" / c / f"{i}b.png", i + 10)
    r = check(tmp_path, "pacs:photo")
    assert r.exit_code == 0, r.output
    d = load_domain("pacs:photo", tmp_path)
    assert d.classes == PACS_CLASSES and len(d.train) == 14 and d.info["published_images"] == 1670
    x, y = d.train[3]
    assert x.shape == (3, 224, 224) and y == 1
    shutil.rmtree(tmp_path / "PACS" / "photo" / "house")
    r = check(tmp_path, "pacs:photo")
    assert r.exit_code == 2 and "Missing: house" in " ".join(r.output.split())
    r = check(tmp_path, "pacs")
    assert r.exit_code == 2 and "art_painting, cartoon, photo, sketch" in r.output
    r = check(tmp_path, "pacs:cartoon")
    assert r.exit_code == 2 and "PACS/cartoon" in r.output and "domaingeneralization.github.io" in " ".join(r.output.split())


def test_dg_sweep_over_pacs_holds_each_domain_out_and_trains_on_the_other_three(tmp_path):
    """pacs:photo and pacs:sketch are other images: no source is dropped as 'holding' a held-out domain."""
    for d, domain in enumerate(("art_painting", "cartoon", "photo", "sketch")):
        for i, c in enumerate(PACS_CLASSES):
            image(tmp_path / "PACS" / domain / c / "0.png", 10 * d + i)
            image(tmp_path / "PACS" / domain / c / "1.png", 100 + 10 * d + i)
    runs = tmp_path / "runs"
    r = CliRunner().invoke(main, ["sweep", "--algos", "erm", "--dg", "pacs", "--seeds", "1", "--steps", "2",
                                  "--data-root", str(tmp_path), "--image-size", "28", "--backbone", "digit-cnn",
                                  "--out", str(runs)])
    assert r.exit_code == 0, r.output
    assert "4 finished" in r.output and "left out" not in r.output
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) == [  # .locks: the run locks
        "pacs_art_painting_pacs_cartoon_pacs_photo_to_pacs_sketch", "pacs_art_painting_pacs_cartoon_pacs_sketch_to_pacs_photo",
        "pacs_art_painting_pacs_photo_pacs_sketch_to_pacs_cartoon", "pacs_cartoon_pacs_photo_pacs_sketch_to_pacs_art_painting"]


@pytest.mark.parametrize("folder", ["Real World", "Real_World"])
def test_office_home_reads_real_world_under_either_name(tmp_path, folder):
    for i in range(65):
        image(tmp_path / "office_home" / folder / f"class_{i:02d}" / "a.jpg", i)
    d = load_domain("office-home:real", tmp_path)
    assert len(d.classes) == 65 and len(d.train) == 65 and d.info["path"].endswith(folder)
    image(tmp_path / "office_home" / "Art" / "only_one" / "a.jpg")
    r = check(tmp_path, "office-home:art")
    assert r.exit_code == 2 and "holds 1 class folders" in r.output


def test_domainnet_reads_the_official_lists_in_their_label_order(tmp_path):
    base = tmp_path / "domainnet"
    names = ["aircraft_carrier", "The_Eiffel_Tower", "zebra"]  # DomainNet's label order, not Python's sort
    train, test = [], []
    for label, c in enumerate(names):
        for k in range(3):
            rel = f"clipart/{c}/clipart_{label}_{k}.jpg"
            image(base / rel, label * 3 + k)
            (train if k < 2 else test).append(f"{rel} {label}")
    (base / "clipart_train.txt").write_text("\n".join(train) + "\n")
    (base / "clipart_test.txt").write_text("\n".join(test) + "\n")
    r = check(tmp_path, "domainnet:clipart")
    assert r.exit_code == 0, r.output
    d = load_domain("domainnet:clipart", tmp_path)
    assert d.classes == names and len(d.train) == 6 and len(d.test) == 3
    assert d.train[2][1] == 1 and d.test[2][1] == 2
    (base / "clipart" / "zebra" / "clipart_2_0.jpg").unlink()
    r = check(tmp_path, "domainnet:clipart")
    assert r.exit_code == 2 and "1 images listed" in r.output and "clipart_2_0.jpg" in r.output.replace("\n", "")


def test_visda2017_synthetic_and_real(tmp_path):
    for folder in ("train", "validation"):
        lines = []
        for label, c in enumerate(VISDA_CLASSES[:3]):
            image(tmp_path / "visda2017" / folder / c / f"{label}.png", label)
            lines.append(f"{c}/{label}.png {label}")
        (tmp_path / "visda2017" / folder / "image_list.txt").write_text("\n".join(lines) + "\n")
    for name in ("visda2017:synthetic", "visda2017:real"):
        d = load_domain(name, tmp_path)
        assert d.classes == VISDA_CLASSES and len(d.train) == 3 and d.train[2][1] == 2
    (tmp_path / "visda2017" / "train" / "image_list.txt").write_text("aeroplane/0.png 12\n")
    r = check(tmp_path, "visda2017:synthetic")
    assert r.exit_code == 2 and "12 classes" in r.output
    r = CliRunner(env={"DABENCH_DATA": ""}).invoke(main, ["datasets", "check", "visda2017:real"])
    assert r.exit_code == 2 and "no data root" in r.output
