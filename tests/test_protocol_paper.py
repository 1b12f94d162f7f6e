"""--protocol paper: the segmentation papers' setting, trained on everything and tested on the
target's official split, with the last step as the only selection; never pooled with dabench runs."""
from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner

from dabench import RunConfig, run
from dabench.results.leaderboard import leaderboard, render
from dabench.cli import main
from test_seg_datasets import make_cityscapes, make_gta5


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_gta5(root)  # 4 frames
    make_cityscapes(root)  # train: 4 images, val: 4 images
    return root


def config(tmp_path, data, **kw) -> RunConfig:
    return RunConfig(**{"algo": "erm", "src": "gta5", "tgt": "cityscapes", "backbone": "toy-segnet", "steps": 2,
                        "eval_every": 1, "image_size": 32, "data_root": str(data), "out": str(tmp_path / "runs"), **kw})


def quiet_run(cfg: RunConfig):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # GTA5 frame 3's label has another size, as in the real set
        return run(cfg)


def test_paper_protocol_holds_nothing_out_and_tests_on_cityscapes_val(tmp_path, data):
    result = quiet_run(config(tmp_path, data, protocol="paper", tgt_labeled=4, algo="oracle"))
    assert result.config["protocol"] == "paper"
    assert result.config["splits"] == {"src_train": 4, "src_val": 0, "tgt_train": 4, "tgt_val": 0, "tgt_test": 4,
                                       "tgt_labeled": 4}  # a budget is drawn from all of target train
    assert all(set(r) >= {"tgt-test"} and "src-val" not in r and "tgt-val" not in r for r in result.records)
    default = quiet_run(config(tmp_path, data))
    assert default.config["splits"]["src_val"] == 1 and default.config["splits"]["tgt_test"] == 4
    assert default.run_dir != result.run_dir


def test_paper_runs_are_tabled_apart_and_only_at_the_last_step(tmp_path, data):
    quiet_run(config(tmp_path, data, protocol="paper"))
    quiet_run(config(tmp_path, data))
    md = render(leaderboard(tmp_path / "runs"), "markdown")
    assert "## gta5 -> cityscapes (paper protocol) · last" in md
    assert "(paper protocol) · source-val" not in md and "(paper protocol) · target-oracle" not in md
    assert "## gta5 -> cityscapes · source-val" in md and "## gta5 -> cityscapes · last" in md
    assert "protocol" in render(leaderboard(tmp_path / "runs"), "csv").splitlines()[0]


@pytest.mark.filterwarnings("ignore:gta5")
def test_run_command_reports_the_last_step_only(tmp_path, data):
    args = ["run", "--algo", "erm", "--src", "gta5", "--tgt", "cityscapes", "--backbone", "toy-segnet", "--steps", "2",
            "--eval-every", "1", "--image-size", "32", "--data-root", str(data), "--out", str(tmp_path / "runs"),
            "--protocol", "paper"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "paper protocol" in r.stdout and "last choice" in r.stdout and "source-val" not in r.stdout
    saved = json.loads(next((tmp_path / "runs").glob("*/*/*/config.json")).read_text())
    assert saved["protocol"] == "paper"


def test_paper_protocol_needs_an_official_test_split_and_last_step_curves(tmp_path):
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--protocol", "paper",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 2 and "official test split" in r.output and "Traceback" not in r.output
    assert not any(tmp_path.iterdir())
    r = CliRunner().invoke(main, ["curve", "--algos", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--tgt-labeled", "0",
                                  "--protocol", "paper", "--selection", "source-val", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--selection last" in r.output
