"""dabench export: a folder of runs without weights, that tabulates as the original and that a sweep
takes as finished."""
from __future__ import annotations

from click.testing import CliRunner

from dabench.cli import main

TOY = ["--src", "toy-src", "--tgt", "toy-tgt", "--steps", "4", "--eval-every", "2"]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def table(path):
    return invoke("leaderboard", str(path), "--per-seed").stdout.split("\n", 1)[1]  # less the title naming the folder


def test_export_keeps_the_records_drops_the_weights_and_a_sweep_takes_it_as_done(tmp_path):
    runs, dest = tmp_path / "runs", tmp_path / "shared"
    assert invoke("sweep", "--algos", "erm", *TOY, "--seeds", "2", "--out", str(runs)).exit_code == 0
    finished = table(runs)
    unfinished = runs / "toy-src_to_toy-tgt" / "erm" / "seed9-x"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    r = invoke("export", str(runs), str(dest))
    assert r.exit_code == 0 and "exported 2 runs" in r.stdout and "1 unfinished runs left out" in r.stdout
    files = sorted(p.name for p in dest.rglob("*") if p.is_file())
    assert files == ["config.json"] * 2 + ["done"] * 2 + ["results.jsonl"] * 2 + ["timings.jsonl"] * 2
    assert table(dest) == finished
    assert "finished, 2 already done" in invoke("sweep", "--algos", "erm", *TOY, "--seeds", "2", "--out", str(dest)).stdout
    r = invoke("export", str(runs), str(dest), "--steps")  # the same records: nothing to refuse, steps.jsonl added
    assert r.exit_code == 0 and len(list(dest.rglob("steps.jsonl"))) == 2


def test_export_refuses_a_different_version_and_writes_nothing(tmp_path):
    runs, dest = tmp_path / "runs", tmp_path / "shared"
    assert invoke("sweep", "--algos", "erm", *TOY, "--seeds", "1", "--out", str(runs)).exit_code == 0
    assert invoke("export", str(runs), str(dest)).exit_code == 0
    (results,) = dest.rglob("results.jsonl")
    results.write_text(results.read_text().replace('"step": 4', '"step": 5'))
    assert invoke("sweep", "--algos", "erm", *TOY, "--seeds", "2", "--out", str(runs)).exit_code == 0  # seed 1 added
    r = invoke("export", str(runs), str(dest))
    assert r.exit_code == 2 and "already holds a different version" in " ".join(r.stderr.split())
    assert "results.jsonl differ" in r.stderr and "Traceback" not in r.output
    assert len(list(dest.rglob("config.json"))) == 1  # seed 1 was not written either
    r = invoke("export", str(runs), str(runs / "inside"))
    assert r.exit_code == 2 and "export to a folder outside the runs" in r.stderr and not (runs / "inside").exists()
    r = invoke("export", str(tmp_path / "none"), str(dest))
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_a_diverged_run_keeps_its_folder_counts_in_its_row_is_not_retried_and_is_exported(tmp_path):
    # lambda_max 1e30 makes dann's loss non-finite within a few steps
    runs, dest = tmp_path / "runs", tmp_path / "shared"
    assert invoke("sweep", "--algos", "erm", *TOY, "--seeds", "2", "--out", str(runs)).exit_code == 0
    r = invoke("sweep", "--algos", "dann", "-H", "lambda_max=1e30", *TOY, "--seeds", "2", "--out", str(runs))
    assert r.exit_code == 1 and "sweep: 0 finished, 0 already done, 2 failed" in r.stdout
    stopped = sorted((runs / "toy-src_to_toy-tgt" / "dann").iterdir())
    assert len(stopped) == 2 and all((d / "failed").exists() and (d / "config.json").exists() for d in stopped)
    assert not any((d / "done").exists() for d in stopped)
    board = table(runs)
    assert "| dann (lambda_max=1e+30) | – | 0 (+2 failed) |" in board
    assert "2 of 2 seeds failed (non-finite loss): not compared" in board
    assert "## Failed runs" in board and "Incomplete runs" not in board
    csv_rows = invoke("leaderboard", str(runs), "--format", "csv").stdout.splitlines()
    assert any(",dann,lambda_max=1e+30,0,0,,,,," in row and row.endswith(",2") for row in csv_rows)
    again = invoke("sweep", "--algos", "dann", "-H", "lambda_max=1e30", *TOY, "--seeds", "2", "--out", str(runs))
    assert again.exit_code == 1 and "stopped on a non-finite loss before" in " ".join(again.stderr.split())
    assert sorted((runs / "toy-src_to_toy-tgt" / "dann").iterdir()) == stopped and not any((d / "done").exists() for d in stopped)
    r = invoke("export", str(runs), str(dest))
    assert r.exit_code == 0 and "exported 4 runs" in r.stdout
    assert len(list(dest.rglob("failed"))) == 2 and table(dest) == board
