"""The segmentation path through the same runner, trainer, leaderboard and CLI as classification."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dabench import RunConfig, run
from dabench.results.leaderboard import leaderboard, render
from dabench.cli import main
from dabench.results.report import report
from dabench.results.selection import choose
from dabench.trainer import NullReporter

SEG = dict(src="toyseg-src", tgt="toyseg-tgt", backbone="toy-segnet", steps=6, eval_every=3)


def test_adaptsegnet_run_records_per_class_iou_and_resumes_exactly(tmp_path):
    full = run(RunConfig(algo="adaptsegnet", out=str(tmp_path / "a"), **SEG))
    rec = full.final
    assert set(rec) >= {"src-val", "tgt-val", "tgt-test"} and set(rec["losses"]) == {"seg", "adv", "disc"}
    assert len(rec["tgt-test"]["iou"]) == 3 and 0 <= rec["tgt-test"]["miou"] <= 1
    cfg = json.loads((full.run_dir / "config.json").read_text())
    assert cfg["eval_size"] == "64x32" and cfg["image_sizes"] == {"src": "96x64", "tgt": "64x32"}
    assert cfg["hparams"]["lambda_adv"] == 0.001 and cfg["metric"] == "miou"

    half = RunConfig(algo="adaptsegnet", out=str(tmp_path / "b"), **SEG)
    with pytest.raises(KeyboardInterrupt):
        run(half, reporter=_StopAfter(4))
    resumed = run(RunConfig(algo="adaptsegnet", out=str(tmp_path / "b"), resume=True, **SEG))
    assert [r["tgt-test"] for r in resumed.records] == [r["tgt-test"] for r in full.records]


class _StopAfter(NullReporter):
    """A reporter that interrupts training after ``n`` steps, like Ctrl-C would."""

    def __init__(self, n):
        self.n = n

    def advance(self, step, losses):
        if step >= self.n:
            raise KeyboardInterrupt


def test_leaderboard_shows_erm_adaptsegnet_oracle_with_per_class_iou(tmp_path):
    for algo in ("erm", "adaptsegnet", "adaptsegnet-single", "oracle"):
        run(RunConfig(algo=algo, out=str(tmp_path), **SEG))
    md = render(leaderboard(tmp_path), "markdown")
    assert "| algorithm | road | sky | car | mIoU |" in md
    for label in ("erm", "adaptsegnet", "adaptsegnet-single", "oracle (all labels)"):
        assert f"| {label} |" in md
    assert "3 classes, eval size 64x32" in md


def test_predict_writes_palette_masks_at_image_size(tmp_path):
    result = run(RunConfig(algo="erm", out=str(tmp_path / "runs"), **SEG))
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.full((50, 70, 3), 120, np.uint8)).save(images / "street.png")
    r = CliRunner().invoke(main, ["predict", str(result.run_dir), "--images", str(images), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    mask = np.asarray(Image.open(tmp_path / "p" / "street.png"))
    assert mask.shape == (50, 70, 3) and (tmp_path / "p" / "street_overlay.png").exists()
    palette = {(128, 64, 128), (70, 130, 180), (0, 0, 142)}  # Cityscapes road, sky, car
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= palette
    bad = CliRunner().invoke(main, ["predict", str(tmp_path), "--images", str(images), "--out", str(tmp_path / "q")])
    assert bad.exit_code == 2 and "not a run folder" in bad.stderr
    # without --out: the run folder's predictions/, whose overlays the report shows with the run's per-class IoU
    r = CliRunner().invoke(main, ["predict", str(result.run_dir), "--images", str(images)])
    assert r.exit_code == 0 and (result.run_dir / "predictions" / "street_overlay.png").is_file(), r.output
    page = report(tmp_path / "runs", tmp_path / "report.html").read_text()
    assert ": street_overlay</figcaption>" in page and page.count("data:image/png;base64,") == 1
    assert "IoU per class at the step source-val chose" in page and "<th>road</th><th>sky</th><th>car</th>" in page


def test_classification_algorithm_on_a_segmentation_pair_is_refused():
    r = CliRunner().invoke(main, ["run", "--algo", "dann", "--src", "toyseg-src", "--tgt", "toyseg-tgt",
                                  "--backbone", "toy-segnet"])
    assert r.exit_code == 2 and "'dann' is a classification algorithm" in r.stderr


def test_run_command_prints_the_per_class_table(tmp_path):
    args = ["run", "--algo", "erm", "--src", "toyseg-src", "--tgt", "toyseg-tgt", "--backbone", "toy-segnet",
            "--steps", "4", "--eval-every", "2", "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    done = run(RunConfig(algo="erm", out=str(tmp_path), **(SEG | {"steps": 4, "eval_every": 2})))
    assert done.already_done
    rec = choose("source-val", done.records, "miou")
    header = next(line for line in r.stdout.splitlines() if "road" in line)
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["road", "sky", "car", "mIoU"]
    values = r.stdout.splitlines()[r.stdout.splitlines().index(header) + 2]
    expected = [f"{100 * v:.1f}" for v in rec["tgt-test"]["iou"]] + [f"{100 * rec['tgt-test']['miou']:.1f}"]
    assert [c.strip() for c in values.split("│")[1:-1]] == expected


def test_images_too_small_for_the_discriminator_are_refused_and_leave_no_run(tmp_path):
    r = CliRunner().invoke(main, ["run", "--algo", "adaptsegnet", "--src", "streets-sim:10", "--tgt", "streets-real:10",
                                  "--backbone", "toy-segnet", "--image-size", "16", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "at least 32 px" in r.stderr and "--image-size 32" in r.stderr
    assert "Traceback" not in r.output and not any(tmp_path.rglob("config.json"))
