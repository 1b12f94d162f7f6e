"""Sweeps launched on Slurm (submitit's local executor stands in for a cluster) and on Ray (a
local instance): every run finishes, a re-submission skips them all, a failing run is reported
with its log while the others finish, and a missing extra is refused with its pip command."""
from __future__ import annotations

import re
import sys

import pytest
from click.testing import CliRunner

from dabench.cli import main
from dabench.runner import resolve_device

PAIR = ["--src", "syndigits:400", "--tgt", "uci-digits", "--steps", "10", "--eval-every", "10", "--seeds", "2"]
LAUNCHERS = {"submitit": ["--launcher", "submitit", "--slurm", "cluster=local"], "ray": ["--launcher", "ray"]}


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["submitit", "ray"])
def test_a_sweep_runs_skips_when_resubmitted_and_reports_a_failure(tmp_path, launcher):
    pytest.importorskip(launcher)
    args = ["sweep", "--algos", "erm,dann", *PAIR, *LAUNCHERS[launcher]]
    r = invoke(*args, "--out", str(tmp_path / "ok"))
    assert r.exit_code == 0, r.output
    assert "sweep: 4 finished, 0 already done, 0 failed" in r.stdout
    assert len(list((tmp_path / "ok").rglob("done"))) == 4
    jobs = sorted((tmp_path / "ok").rglob("*_submitted.pkl"))
    r = invoke(*args, "--out", str(tmp_path / "ok"))
    assert r.exit_code == 0 and "sweep: 0 finished, 4 already done, 0 failed" in r.stdout
    assert sorted((tmp_path / "ok").rglob("*_submitted.pkl")) == jobs  # nothing was submitted again

    if launcher == "ray":
        return  # a run failing inside its job is the same run_one path for both; tested once, with submitit
    # lambda_max 1e30 makes dann's loss non-finite within a few steps; erm has no such hyperparameter
    r = invoke(*args, "-H", "lambda_max=1e30", "--out", str(tmp_path / "bad"))
    assert r.exit_code == 1
    assert "sweep: 2 finished, 0 already done, 2 failed" in r.stdout
    err = flat(r.stderr)
    assert err.count("failed dann seed") == 2 and "Loss became non-finite" in err and "error.log" in err  # the kept folder
    assert "Traceback" not in r.output
    stopped = list((tmp_path / "bad").rglob("dann/seed*"))  # a divergence is the config's result: its folder says so
    assert len(stopped) == 2 and all((d / "failed").exists() and not (d / "done").exists() for d in stopped)


@pytest.mark.parametrize("launcher, extra", [("submitit", "slurm"), ("ray", "ray")])
def test_a_launcher_without_its_extra_is_refused_with_the_pip_command(tmp_path, monkeypatch, launcher, extra):
    monkeypatch.setitem(sys.modules, launcher, None)  # as if not installed
    r = invoke("sweep", "--algos", "erm", *PAIR, "--launcher", launcher, "--out", str(tmp_path))
    assert r.exit_code == 2 and f"pip install 'dabench[{extra}]'" in r.stderr
    assert not tmp_path.joinpath("syndigits_400_to_uci-digits").exists()


def test_dry_run_prints_the_plan_and_measured_device_hours_and_runs_nothing(tmp_path):
    args = ["sweep", "--algos", "erm,dann", *PAIR, "--out", str(tmp_path)]
    assert invoke(*args[:-2], "--seeds", "1", "--out", str(tmp_path)).exit_code == 0  # erm and dann, seed 0
    r = invoke(*args, "--algos", "erm,dann,sagnet", "--dry-run")
    assert r.exit_code == 0, r.output
    out = flat(r.stdout)
    assert "plan: 6 runs, 2 already done, 4 to run" in out
    assert "1 finished run " in out and "a 10-step probe" in out and f"device-hours on {resolve_device('auto').type}" in out
    assert "share of the time spent evaluating" in out and len(re.findall(r"\d+% ", out)) == 3  # one share per algorithm
    assert len(list(tmp_path.rglob("done"))) == 2 and not (tmp_path / "syndigits_400_to_uci-digits" / "sagnet").exists()
