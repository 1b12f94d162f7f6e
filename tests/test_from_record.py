"""dabench run --from: a recorded run repeated from its config.json (issue 25, item 3)."""
from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from dabench.cli import main
from dabench.runfolder import read_records
from dabench.runner import cpu_model

TOY = ["--algo", "dann", "--src", "toy-src", "--tgt", "toy-tgt", "--steps", "4", "--eval-every", "2", "--seed", "3",
       "-H", "lr=0.02"]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def numbers(run_dir):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in read_records(run_dir / "results.jsonl")]


def first_run(tmp_path):
    assert invoke("run", *TOY, "--out", str(tmp_path / "a")).exit_code == 0
    return next((tmp_path / "a").glob("*/*/seed3-*"))


def test_a_recorded_run_repeats_with_its_options_and_numbers(tmp_path):
    original = first_run(tmp_path)
    r = invoke("run", "--from", str(original), "--out", str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    again = tmp_path / "b" / original.relative_to(tmp_path / "a")  # the same identity, so the same folder name
    assert again.is_dir() and numbers(again) == numbers(original)
    config = json.loads((again / "config.json").read_text())
    assert config["hparams"]["lr"] == 0.02 and config["seed"] == 3 and config["steps"] == 4
    assert "warning" not in r.stderr  # the same machine
    r = invoke("run", "--from", str(original / "config.json"), "--out", str(tmp_path / "b"))
    assert r.exit_code == 0 and "already finished" in r.stderr


def test_where_the_machine_differs_it_says_the_numbers_may_differ(tmp_path):
    original = first_run(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    config = json.loads((copy / "config.json").read_text())
    assert config["machine"] == {"cpu": cpu_model(), "device": "cpu"}  # where it ran
    config["torch_threads"] += 7
    config["versions"]["torch"] = "1.0.0"
    config["machine"]["cpu"] = "Another CPU 9000"
    (copy / "config.json").write_text(json.dumps(config))
    r = invoke("run", "--from", str(copy), "--out", str(tmp_path / "c"))
    text = " ".join(r.stderr.split())
    assert r.exit_code == 0 and "torch threads" in text and "torch 1.0.0" in text and "may differ" in text
    assert f"it ran on the CPU 'Another CPU 9000', this machine's is '{cpu_model()}'" in text


def test_bad_from_exits_2_with_the_reason(tmp_path):
    original = first_run(tmp_path)
    r = invoke("run", "--from", str(tmp_path), "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "not a run folder" in r.stderr and not (tmp_path / "x").exists()
    r = invoke("run", "--from", str(original), "--algo", "erm", "--steps", "9", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "--algo, --steps would change it" in " ".join(r.stderr.split())
    gone = tmp_path / "gone"
    shutil.copytree(original, gone)
    config = json.loads((gone / "config.json").read_text())
    config["hparams"]["lambda_maximum"] = 2.0
    (gone / "config.json").write_text(json.dumps(config))
    r = invoke("run", "--from", str(gone), "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "no longer has: lambda_maximum" in " ".join(r.stderr.split())
    r = invoke("run", "--src", "toy-src", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "Give --algo, --src and --tgt" in r.stderr
    assert not (tmp_path / "x").exists()
