"""``dabench curve``: the data-efficiency study, checked against numbers recomputed from the run folders."""
from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from dabench import cli
from dabench.results import selection
from dabench.cli import main
from test_leaderboard import make_run, rec

STUDY = ["curve", "--algos", "erm,oracle", "--src", "toy-src", "--tgt", "toy-tgt", "--tgt-labeled", "0,5,all",
         "--seeds", "2", "--steps", "12", "--eval-every", "4", "-H", "lr=0.1", "-H", "batch_size=16"]
PAIR = "toy-src_to_toy-tgt"


def invoke(*args):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "console", Console(width=200))  # no wrapping inside table cells
        return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = invoke(*STUDY, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out, result


def by_hand(out: Path, method: str = "source-val") -> dict[tuple, list[float]]:
    """(algo, tgt_labeled) -> each seed's target-test accuracy (%) at the step ``method`` chooses."""
    values: dict[tuple, list[float]] = {}
    for config in sorted((out / PAIR).rglob("config.json")):
        c = json.loads(config.read_text())
        records = [json.loads(line) for line in (config.parent / "results.jsonl").read_text().splitlines()]
        values.setdefault((c["algo"], c["tgt_labeled"]), []).append(100 * selection.choose(method, records, "acc")["tgt-test"]["acc"])
    return values


def md_table(path: Path) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in path.read_text().splitlines()
            if line.startswith("| ")]


def test_table_has_a_row_per_algorithm_a_column_per_budget_and_no_oracle_at_0(study):
    out, result = study
    table = md_table(out / "curves" / f"{PAIR}.md")
    assert table[0] == ["algorithm", "0", "5", "all"]
    assert [row[0] for row in table[1:]] == ["erm", "oracle"]
    assert table[2][1] == "-"  # supervised training with no labels does not exist
    assert [row[1:].count("-") for row in table[1:]] == [0, 1]  # every other cell has its runs
    assert "10 runs" in result.stderr and "10 finished, 0 already done, 0 failed" in result.stdout
    assert "toy-src -> toy-tgt: target-test accuracy (%), selection source-val" in result.stdout
    assert re.search(r"│ oracle\s+│\s+- │", result.stdout)  # the same table, printed with rich


def test_cells_are_the_mean_over_seeds_of_each_runs_selected_test_value(study):
    out, result = study
    values = by_hand(out)
    assert set(values) == {("erm", 0), ("erm", 5), ("erm", "all"), ("oracle", 5), ("oracle", "all")}
    assert all(len(v) == 2 for v in values.values())  # two seeds each
    table = {row[0]: dict(zip(["0", "5", "all"], row[1:])) for row in md_table(out / "curves" / f"{PAIR}.md")[1:]}
    for (algo, n), v in values.items():
        mean, full = statistics.mean(v), statistics.mean(values[(algo, "all")])
        delta = "" if n == "all" else f" ({mean - full:+.1f})"
        assert table[algo][str(n)] == f"{mean:.1f} ± {statistics.stdev(v):.1f}{delta}"
        assert table[algo][str(n)] in result.stdout


def test_csv_has_one_row_per_algorithm_and_budget_with_delta_from_all(study):
    out, _ = study
    values = by_hand(out)
    rows = list(csv.DictReader((out / "curves" / f"{PAIR}.csv").open()))
    assert [(r["algorithm"], r["tgt_labeled"]) for r in rows] == [
        ("erm", "0"), ("erm", "5"), ("erm", "all"), ("oracle", "0"), ("oracle", "5"), ("oracle", "all")]
    oracle_0 = rows[3]
    assert (oracle_0["n_seeds"], oracle_0["mean"], oracle_0["std"], oracle_0["delta_vs_all"]) == ("0", "", "", "")
    for r in rows[:3] + rows[4:]:
        v = values[(r["algorithm"], int(r["tgt_labeled"]) if r["tgt_labeled"] != "all" else "all")]
        full = statistics.mean(values[(r["algorithm"], "all")])
        assert r["n_seeds"] == "2"
        assert float(r["mean"]) == pytest.approx(statistics.mean(v), abs=1e-4)
        assert float(r["std"]) == pytest.approx(statistics.stdev(v), abs=1e-4)
        assert float(r["delta_vs_all"]) == pytest.approx(float(r["mean"]) - full, abs=1e-3)


def test_the_plot_is_a_valid_png(study):
    out, result = study
    path = out / "curves" / f"{PAIR}.png"
    assert path.stat().st_size > 0 and f"wrote {path}" in result.stdout
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
        image.verify()
    assert not list((out / "curves").glob(".*"))  # no temporary file left behind


def test_running_again_starts_no_new_run_and_redraws_the_same_table(study):
    out, first = study
    files = {p: p.stat().st_mtime_ns for p in (out / PAIR).rglob("*") if p.is_file()}
    table = (out / "curves" / f"{PAIR}.md").read_text()
    again = invoke(*STUDY, "--out", str(out))
    assert again.exit_code == 0, again.output
    assert "0 finished, 10 already done, 0 failed" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / PAIR).rglob("*") if p.is_file()} == files
    assert (out / "curves" / f"{PAIR}.md").read_text() == table


def test_a_budget_larger_than_target_train_is_reported_and_the_rest_still_tabulated(tmp_path):
    r = invoke("curve", "--algos", "erm", *STUDY[3:7], "--tgt-labeled", "5,500", "--seeds", "1", "--steps", "4",
               "--eval-every", "2", "--out", str(tmp_path))
    assert r.exit_code == 1
    message = " ".join(r.stderr.split())
    assert "invalid erm N=500 (seed 0): --tgt-labeled 500 asks for more labelled target samples than target train holds" in message
    assert "Traceback" not in r.output and "1 finished, 0 already done, 1 failed" in r.stdout
    table = md_table(tmp_path / "curves" / f"{PAIR}.md")
    assert table[0] == ["algorithm", "5", "500"] and table[1][1] != "-" and table[1][2] == "-"
    assert (tmp_path / "curves" / f"{PAIR}.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--algos", "erm,sagnett"], "Unknown algorithm 'sagnett'. Did you mean 'sagnet'"),
    (["--algos", "erm", "--tgt-labeled", "0,few"], "--tgt-labeled expects a number of labelled target images (0 or more) or 'all', got 'few'"),
    (["--algos", "erm", "--tgt-labeled", "0,-5"], "--tgt-labeled expects a number of labelled target images"),
])
def test_bad_input_is_one_clear_paragraph_exit_2_and_nothing_run(tmp_path, args, message):
    base = ["--src", "toy-src", "--tgt", "toy-tgt", "--tgt-labeled", "0,5", "--steps", "4", "--out", str(tmp_path / "runs")]
    r = invoke("curve", *base, *args)
    assert r.exit_code == 2
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.output and not (tmp_path / "runs").exists()


TORCH_FREE = """
import importlib.abc, json, sys, types

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, NoTorch())
package = types.ModuleType("dabench")  # dabench/__init__ imports the runner (torch); the curve must not need it
package.__path__ = [sys.argv[1]]
sys.modules["dabench"] = package
from pathlib import Path
from dabench.results.curve import build, write

runs = sorted(p.parent for p in Path(sys.argv[2]).rglob("config.json"))
out = {}
for method in ("source-val", "target-oracle"):
    curve = build("syndigits", "uci-digits", runs, ["dann", "oracle"], [0, "all"], method)
    out[method] = {f"{a} {n}": curve.text(a, n) for a in curve.algos for n in curve.budgets}
    out["not averaged"] = [str(p) for p, _ in curve.not_averaged]
    out["written"] = [str(p) for p in write(curve, Path(sys.argv[2]) / "curves", "syndigits_to_uci-digits")]
print(json.dumps(out))
"""


def test_the_table_builds_from_hand_made_run_folders_without_torch(tmp_path):
    curve = [rec(200, 0.90, 0.50, 0.80), rec(400, 0.95, 0.60, 0.50), rec(600, 0.80, 0.70, 0.60)]
    splits = {"tgt_train": 50}
    make_run(tmp_path, curve, seed=0, splits=splits)  # source-val: 50, target-oracle: 60
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.70)], seed=1, splits=splits)
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.80)], seed=0, tgt_labeled="all", splits=splits)
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.90)], seed=1, tgt_labeled="all", splits=splits)
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.95)], algo="oracle", tgt_labeled="all", splits=splits)
    unfinished = make_run(tmp_path, [rec(200, 0.9, 0.5, 0.10)], seed=2, done=False)
    dabench_dir = Path(cli.__file__).parent
    r = subprocess.run([sys.executable, "-c", TORCH_FREE, str(dabench_dir), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["source-val"] == {"dann 0": "60.0 ± 14.1 (-25.0)", "dann all": "85.0 ± 7.1",
                                 "oracle 0": "-", "oracle all": "95.0 ± 0.0"}
    assert out["target-oracle"]["dann 0"] == "65.0 ± 7.1 (-20.0)"
    assert out["not averaged"] == [str(unfinished)]
    assert [Path(p).suffix for p in out["written"]] == [".md", ".csv", ".png"]
    assert all(Path(p).stat().st_size > 0 for p in out["written"])
