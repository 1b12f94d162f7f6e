"""The command line as a user meets it: output, exit codes, and one-paragraph errors."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from rich.console import Console

from dabench import cli
from dabench.cli import main

TOY = ["--src", "toy-src", "--tgt", "toy-tgt", "--steps", "20", "--eval-every", "10"]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_run_prints_a_results_table_and_the_run_folder(tmp_path):
    r = invoke("run", "--algo", "dann", *TOY, "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "source-val" in r.stdout and "tgt-test" in r.stdout
    assert f"run folder: {tmp_path}" in r.stdout.replace("\n", "")


@pytest.mark.parametrize("args, message", [
    (["--algo", "sagnett", *TOY], "Unknown algorithm 'sagnett'. Did you mean 'sagnet'"),
    (["--algo", "dann", "--src", "toy-scr", "--tgt", "toy-tgt"], "Unknown dataset 'toy-scr'"),
    (["--algo", "dann", *TOY, "--backbone", "resnet"], "Unknown backbone 'resnet'"),
    (["--algo", "dann", *TOY, "--backbone", "timm:resnet5"], "timm has no model 'resnet5'"),
    (["--algo", "ccsa", *TOY], "needs a few labelled target samples. Add --tgt-labeled N"),
    (["--algo", "toy-seg", *TOY], "'toy-seg' is a segmentation algorithm but toy-src -> toy-tgt is a classification pair"),
    (["--algo", "dann", *TOY, "-H", "lamda_max=2"], "Unknown hyperparameter 'lamda_max'. Did you mean lambda_max"),
    (["--algo", "dann", *TOY, "-H", "lr=fast"], "Hyperparameter 'lr' expects a float"),
    (["--algo", "dann", *TOY, "-H", "lr"], "-H expects key=value"),
    (["--algo", "dann", *TOY, "--steps", "0"], "--steps must be a positive whole number, got 0"),
    (["--algo", "dann", *TOY, "--steps", "-5"], "--steps must be a positive whole number, got -5"),
    (["--algo", "dann", *TOY, "--tgt-labeled", "-1"], "--tgt-labeled expects a number of labelled target images (0 or more) or 'all'"),
    (["--algo", "dann", *TOY, "--tgt-labeled", "5000"], "more labelled target samples than target train holds"),
    (["--algo", "dann", *TOY, "--data-root", "/no/such/dir"], "The data root /no/such/dir does not exist"),
    (["--algo", "dann", *TOY, "--pretrained", "/no/such.pt"], "--pretrained: no file at /no/such.pt"),
    (["--algo", "dann", *TOY, "--image-size", "0"], "--image-size must be a positive whole number, got 0"),
    (["--algo", "dann", *TOY, "--workers", "-1"], "--workers must be 0 or more, got -1"),
])
def test_bad_input_is_one_clear_paragraph_exit_2_and_no_folder(tmp_path, args, message):
    out = tmp_path / "runs"
    r = invoke("run", *args, "--out", str(out))
    assert r.exit_code == 2
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.output
    assert not out.exists()  # nothing half-written


def test_progress_to_a_log_file_is_plain_lines(tmp_path):
    r = invoke("run", "--algo", "dann", *TOY, "--out", str(tmp_path))  # CliRunner's output is not a terminal
    lines = [line for line in r.stderr.splitlines() if " train step " in line]
    assert [line.split(" train step ")[1].split()[0] for line in lines] == [f"{k}/20" for k in range(2, 21, 2)]
    assert all("cls " in line and "steps/s" in line for line in lines)
    assert "━" not in r.stderr and re.search(r"step     10  src-val acc \d+\.\d% +tgt-val acc \d+\.\d% \(labelled "
                                             r"target, oracle only\)  \(evaluated in \d+\.\d s\)", r.stderr)
    assert re.search(r"source-val +│ +\d+ │ +\d+\.\d │ +\d+\.\d │", r.stdout)  # the summary, in percent


def test_every_run_of_a_sweep_shows_its_progress_and_the_tables_number_on_one_line(tmp_path):
    r = invoke("sweep", "--algos", "erm", *TOY, "--seeds", "1", "--out", str(tmp_path / ("a-long-folder-name" * 4)))
    assert r.exit_code == 0
    assert "erm seed 0 train step 20/20" in r.stderr and "erm seed 0 step     20  src-val acc" in r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("[1/1] erm"))
    run_dir = next(p for p in (tmp_path / ("a-long-folder-name" * 4)).rglob("config.json")).parent
    assert line.endswith(str(run_dir))  # never broken across lines, whatever the width
    assert re.search(r"finished source-val step \d+: tgt-test acc \d+\.\d%", line)


def test_resume_with_a_different_config_exits_2(tmp_path):
    assert invoke("run", "--algo", "erm", *TOY, "--out", str(tmp_path)).exit_code == 0
    r = invoke("run", "--algo", "erm", *TOY[:-4], "--steps", "30", "--eval-every", "10", "--resume", "--out", str(tmp_path))
    assert r.exit_code == 2 and "steps: 20 in the folder vs 30 now" in " ".join(r.stderr.split())


def test_list_shows_every_kind_with_whole_descriptions_and_one_algorithm_with_its_hyperparameters(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=250))  # no wrapping inside table cells
    r = CliRunner().invoke(main, ["list"])
    assert r.exit_code == 0
    for name in ("dann", "ccsa", "sagnet", "erm", "oracle", "syndigits", "uci-digits", "digit-cnn", "timm",
                 "translators", "cyclegan", "fda"):
        assert name in r.stdout
    assert re.search(r"mme +│ classification │ SSDA", r.stdout)  # semi-supervised: needs --tgt-labeled N
    assert "through a reversed gradient." in r.stdout  # descriptions are whole sentences
    r = CliRunner().invoke(main, ["list", "algorithms", "dann"])  # digit and ImageNet defaults, search, meaning
    assert r.exit_code == 0 and re.search(r"lambda_max +│ 1\.0 +│ 1\.0 +│ 10\^U\(-1, 0\.5\) +│ final weight", r.stdout)
    assert re.search(r"lr +│ 0\.01 +│ 0\.01 +│ 10\^U\(-3, -1\.5\) +│ initial SGD learning rate", r.stdout)
    r = CliRunner().invoke(main, ["list", "algorithms", "erm"])  # erm is task-aware: both spaces are listed
    assert "hyperparameters on classification" in r.stdout and "hyperparameters on segmentation" in r.stdout
    assert re.search(r"aux_weight +│ 0\.1", r.stdout)
    r = CliRunner().invoke(main, ["list", "algorithms", "nosuch"])
    assert r.exit_code == 2 and "Known algorithms:" in r.stderr
    r = CliRunner().invoke(main, ["list", "backbones"])
    assert "digit-cnn" in r.stdout and "dann" not in r.stdout


def test_sweep_skips_finished_runs_and_survives_a_failure(tmp_path, monkeypatch):
    from dabench_plugins.algorithms.dann import DANN

    args = ["sweep", "--algos", "erm,dann", *TOY, "--seeds", "2", "--out", str(tmp_path)]
    original = DANN.update

    def fails_for_seed_1(self, batch, step):
        import torch

        if torch.initial_seed() == 1:  # the trainer seeds torch with the run's seed
            raise RuntimeError("boom")
        return original(self, batch, step)

    monkeypatch.setattr(DANN, "update", fails_for_seed_1)
    r = invoke(*args)
    assert r.exit_code == 1
    assert "3 finished, 0 already done, 1 failed" in r.stdout
    assert "RuntimeError: boom" in " ".join(r.stderr.split())
    assert "Traceback" not in r.output  # one line per failure; --debug shows the traceback
    r = invoke(*args, "--debug")
    assert r.exit_code == 1 and r.stderr.count("Traceback (most recent call last)") == 1

    monkeypatch.setattr(DANN, "update", original)
    r = invoke(*args)
    assert r.exit_code == 0
    assert "1 finished, 3 already done, 0 failed" in r.stdout


def test_sweep_leaves_out_supervised_methods_without_a_budget(tmp_path):
    r = invoke("sweep", "--algos", "ccsa,erm", *TOY, "--seeds", "1", "--steps", "2", "--out", str(tmp_path))
    assert r.exit_code == 0
    assert "ccsa: left out, it needs labelled target samples" in " ".join(r.stderr.split())
    assert [p.name for p in (tmp_path / "toy-src_to_toy-tgt").iterdir()] == ["erm"]
    r = invoke("sweep", "--algos", "ccsa", *TOY, "--seeds", "1", "--out", str(tmp_path / "none"))
    assert r.exit_code == 2 and "plans no run" in r.output  # nothing left to run is an error, not a silent success
    assert "ccsa: left out, it needs labelled target samples" in " ".join(r.output.split())
    assert not (tmp_path / "none").exists()


def test_budgets_per_algorithm_kind():
    from dabench.runner import RunConfig
    from dabench.sweeping.sweep import plan

    base = RunConfig(algo="erm", src="toy-src", tgt="toy-tgt")
    configs, _ = plan(["erm", "oracle", "ccsa"], [0], [0, 5, "all"], 1, base)
    budgets = {(c.algo, c.tgt_labeled) for c in configs}
    # the oracle's 0 means every label, like "all"; a supervised method skips 0
    assert budgets == {("erm", 0), ("erm", 5), ("erm", "all"), ("oracle", "all"), ("oracle", 5),
                       ("ccsa", 5), ("ccsa", "all")}


def test_oracle_with_a_budget_trains_on_that_many_target_labels(tmp_path):
    from dabench.runner import RunConfig, build

    some = build(RunConfig(algo="oracle", src="toy-src", tgt="toy-tgt", tgt_labeled=5, out=str(tmp_path)))
    every = build(RunConfig(algo="oracle", src="toy-src", tgt="toy-tgt", out=str(tmp_path)))
    assert len(some.splits.tgt_labeled) == 5 and some.config["tgt_labeled"] == 5
    assert every.config["tgt_labeled"] == "all" and len(every.splits.tgt_labeled) == len(every.splits.tgt_train)
    r = invoke("run", "--algo", "erm", *TOY, "--tgt-labeled", "all", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output


def test_sweep_overrides_apply_to_the_algorithms_that_have_them():
    from dabench.errors import DabenchError
    from dabench.runner import RunConfig
    from dabench.sweeping.sweep import plan

    base = RunConfig(algo="", src="toy-src", tgt="toy-tgt", overrides={"lambda_max": "0.5", "lr": "0.02"})
    configs, _ = plan(["erm", "dann"], [0], [0], 1, base)
    assert {c.algo: c.overrides for c in configs} == {"erm": {"lr": "0.02"}, "dann": {"lambda_max": "0.5", "lr": "0.02"}}
    with pytest.raises(DabenchError, match="no algorithm of this sweep"):
        plan(["erm"], [0], [0], 1, RunConfig(algo="", src="toy-src", tgt="toy-tgt", overrides={"lambda_max": "1"}))


def test_sweep_seeds_count_zero_names_the_list_form_and_a_list_of_one_runs_that_seed(tmp_path):
    r = invoke("sweep", "--algos", "erm", *TOY, "--seeds", "0", "--steps", "2", "--out", str(tmp_path / "none"))
    assert r.exit_code == 2 and "give it as a list: --seeds 0," in " ".join(r.stderr.split())
    assert not (tmp_path / "none").exists()
    r = invoke("sweep", "--algos", "erm", *TOY, "--seeds", "4,", "--steps", "2", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert [p.name.split("-")[0] for p in (tmp_path / "toy-src_to_toy-tgt" / "erm").iterdir()] == ["seed4"]
