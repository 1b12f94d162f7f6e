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
