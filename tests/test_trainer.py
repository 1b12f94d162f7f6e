"""The run loop: resume is exact, failures leave no `done`, records are whole JSON lines."""
from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from dabench.cli import main
from dabench.errors import DabenchError
from dabench.registry import algorithms
from dabench.runner import RunConfig, repeatable_kernels, run
from dabench.runfolder import read_records
from dabench.trainer import RunFailed
from dabench_plugins.algorithms.dann import DANN
from dabench_plugins.algorithms.erm import ERM


def cfg(tmp_path, **kw) -> RunConfig:
    base = dict(algo="dann", src="toy-src", tgt="toy-tgt", steps=40, eval_every=10, out=str(tmp_path))
    return RunConfig(**(base | kw))


def numbers(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def test_run_writes_config_results_checkpoint_and_done(tmp_path):
    result = run(cfg(tmp_path))
    d = result.run_dir
    assert (d / "done").exists() and (d / "checkpoint.pt").exists()
    config = json.loads((d / "config.json").read_text())
    assert config["algo"] == "dann" and config["seed"] == 0 and config["hparams"]["lr"] == 0.01
    assert set(config["versions"]) >= {"dabench", "torch", "torchvision", "timm"}
    assert config["torch_threads"] == torch.get_num_threads()  # CPU numbers depend on it
    assert "git" in config and config["splits"]["tgt_labeled"] == 0
    records = read_records(d / "results.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert set(records[0]) >= {"src-val", "tgt-val", "tgt-test", "losses"}


def test_same_config_gives_same_numbers(tmp_path):
    a = run(cfg(tmp_path / "a"))
    b = run(cfg(tmp_path / "b"))
    assert numbers(a.records) == numbers(b.records)


def test_a_gpu_run_asks_for_repeatable_kernels_and_puts_the_process_settings_back(monkeypatch):
    """On a GPU, cuDNN's benchmarking picks kernels by timing them, so two runs of one config
    differed there (seen on an H200: this file's same-numbers and resume tests failed). The flags
    are only set, so a CPU checks them with a CUDA device object."""
    cudnn = torch.backends.cudnn
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(cudnn, "benchmark", True)
    monkeypatch.setattr(cudnn, "deterministic", False)
    with pytest.raises(_Killed):
        with repeatable_kernels(torch.device("cuda")):
            assert not cudnn.benchmark and cudnn.deterministic
            assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
            raise _Killed  # a run that stops half-way puts them back too
    assert cudnn.benchmark and not cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    with repeatable_kernels(torch.device("cpu")):  # a CPU's kernels repeat at a fixed thread count
        assert cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


class _Killed(Exception):
    pass


def test_resume_after_kill_gives_identical_numbers(tmp_path, monkeypatch):
    full = run(cfg(tmp_path / "full", algo="sagnet"))

    original = algorithms.get("sagnet").update
    calls = {"n": 0}

    def dies_at_step_25(self, batch, step):
        calls["n"] += 1
        if step == 25:
            raise _Killed()
        return original(self, batch, step)

    monkeypatch.setattr(algorithms.get("sagnet"), "update", dies_at_step_25)
    with pytest.raises(_Killed):
        run(cfg(tmp_path / "killed", algo="sagnet"))
    monkeypatch.setattr(algorithms.get("sagnet"), "update", original)
    run_dir = full.run_dir.relative_to(tmp_path / "full")
    killed_dir = tmp_path / "killed" / run_dir
    assert not (killed_dir / "done").exists()
    assert [r["step"] for r in read_records(killed_dir / "results.jsonl")] == [10, 20]

    resumed = run(cfg(tmp_path / "killed", algo="sagnet", resume=True))
    assert (resumed.run_dir / "done").exists()
    assert numbers(resumed.records) == numbers(full.records)
    assert numbers(read_records(resumed.run_dir / "results.jsonl")) == numbers(full.records)
    # the step log reads as one run too: the steps after the kill's checkpoint are not doubled
    assert read_records(resumed.run_dir / "steps.jsonl") == read_records(full.run_dir / "steps.jsonl")


def test_every_step_is_logged_and_evaluations_average_them(tmp_path):
    result = run(cfg(tmp_path, log="tensorboard"))
    steps = read_records(result.run_dir / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 41)) and {"cls", "dom", "lambda"} <= set(steps[0])
    for record in result.records:  # each evaluation's losses are the mean over the steps since the last one
        window = [s for s in steps if record["step"] - 10 < s["step"] <= record["step"]]
        assert record["losses"]["dom"] == pytest.approx(sum(s["dom"] for s in window) / 10)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/cls")] == list(range(1, 41))
    assert [e.value for e in events.Scalars("train/cls")] == pytest.approx([s["cls"] for s in steps])
    assert [e.step for e in events.Scalars("src-val/acc")] == [10, 20, 30, 40]


def test_unfinished_run_needs_resume_or_overwrite(tmp_path, monkeypatch):
    original = ERM.update
    monkeypatch.setattr(ERM, "update", lambda self, b, s: original(self, b, s) if s < 15 else (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):
        run(cfg(tmp_path, algo="erm"))  # after the checkpoint of step 10
    with pytest.raises(DabenchError, match="--resume"):
        run(cfg(tmp_path, algo="erm"))


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch):
    original = ERM.update
    monkeypatch.setattr(ERM, "update", lambda self, b, s: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg(tmp_path, algo="erm"))
    assert not list((tmp_path / "toy-src_to_toy-tgt" / "erm").iterdir())
    monkeypatch.setattr(ERM, "update", original)
    assert [r["step"] for r in run(cfg(tmp_path, algo="erm")).records] == [10, 20, 30, 40]  # no "Add --resume"


def test_resume_with_different_config_is_refused(tmp_path):
    run(cfg(tmp_path, steps=20))
    with pytest.raises(DabenchError, match="steps: 20 in the folder vs 30 now"):
        run(cfg(tmp_path, steps=30, resume=True))


def test_finished_run_is_not_run_again(tmp_path):
    first = run(cfg(tmp_path, steps=10))
    again = run(cfg(tmp_path, steps=10))
    assert again.already_done and numbers(again.records) == numbers(first.records)


def test_nan_loss_stops_the_run_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = ERM.update

    def nan_after_15(self, batch, step):
        losses = original(self, batch, step)
        return losses | {"cls": float("nan")} if step >= 15 else losses

    monkeypatch.setattr(ERM, "update", nan_after_15)
    with pytest.raises(RunFailed, match="non-finite at step 16.*checkpoint \\(step 10\\)"):
        run(cfg(tmp_path, algo="erm"))
    (d,) = (tmp_path / "toy-src_to_toy-tgt" / "erm").iterdir()
    assert not (d / "done").exists()
    assert torch.load(d / "checkpoint.pt", weights_only=False)["step"] == 10
    assert [r["step"] for r in read_records(d / "results.jsonl")] == [10]


def test_a_divergence_before_the_first_checkpoint_is_recorded_and_not_retried(tmp_path, monkeypatch):
    original, calls = ERM.update, []

    def nan_from_step_3(self, batch, step):
        calls.append(step)
        losses = original(self, batch, step)
        return losses | {"cls": float("inf")} if step >= 2 else losses

    monkeypatch.setattr(ERM, "update", nan_from_step_3)
    with pytest.raises(RunFailed, match="non-finite at step 3.*keeps its config and this message"):
        run(cfg(tmp_path, algo="erm"))
    (d,) = (tmp_path / "toy-src_to_toy-tgt" / "erm").iterdir()
    assert json.loads((d / "failed").read_text())["step"] == 3  # a result of the config, kept
    assert (d / "config.json").exists() and not (d / "checkpoint.pt").exists() and not (d / "done").exists()
    calls.clear()
    with pytest.raises(RunFailed, match="stopped on a non-finite loss before \\(step 3.*--overwrite"):
        run(cfg(tmp_path, algo="erm"))
    assert calls == []  # not trained again
    monkeypatch.setattr(ERM, "update", original)
    again = run(cfg(tmp_path, algo="erm", overwrite=True))
    assert again.run_dir == d and (d / "done").exists() and not (d / "failed").exists()


def test_truncated_results_line_is_ignored(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text('{"step": 10}\n{"step": 20}\n{"step": 3')
    assert [r["step"] for r in read_records(p)] == [10, 20]


def test_losses_fall_for_every_classification_algorithm(tmp_path):
    for algo, n in [("erm", 0), ("dann", 0), ("sagnet", 0), ("ccsa", 16), ("oracle", 0)]:
        result = run(cfg(tmp_path, algo=algo, tgt_labeled=n, steps=60, eval_every=20))
        first, last = result.records[0]["losses"]["cls"], result.records[-1]["losses"]["cls"]
        assert last < first, (algo, first, last)


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_tracker_without_its_package_is_refused_with_the_pip_command(tmp_path, monkeypatch, tracker):
    import sys

    monkeypatch.setitem(sys.modules, tracker, None)  # as if not installed
    with pytest.raises(DabenchError, match=rf"pip install 'dabench\[{tracker}\]'"):
        run(cfg(tmp_path, log=tracker))
    assert not list(tmp_path.iterdir())
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--log", tracker,
                                  "--out", str(tmp_path)])
    assert r.exit_code == 2 and f"pip install 'dabench[{tracker}]'" in r.stderr and "Traceback" not in r.output


def test_mlflow_holds_the_config_every_loss_every_evaluation_and_the_run_folder(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder
    original = DANN.update
    monkeypatch.setattr(DANN, "update", lambda self, b, s: original(self, b, s) if s < 15 else (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):
        run(cfg(tmp_path / "out", log="mlflow"))  # after the checkpoint of step 10
    monkeypatch.setattr(DANN, "update", original)
    result = run(cfg(tmp_path / "out", log="mlflow", resume=True))
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dabench").experiment_id])
    assert len(runs) == 1  # the resume continued the run it started
    mlrun = runs[0]
    assert mlrun.info.run_id == json.loads((result.run_dir / "mlflow.json").read_text())["run_id"]
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["dabench.algo"] == "dann"
    assert mlrun.data.params["seed"] == "0" and mlrun.data.params["hparams.lr"] == str(result.config["hparams"]["lr"])
    steps = read_records(result.run_dir / "steps.jsonl")
    last = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, "train/dom")}  # the latest per step
    assert sorted(last) == list(range(1, 41)) and [last[s["step"]] for s in steps] == pytest.approx([s["dom"] for s in steps])
    accs = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, "tgt-test/acc")}
    assert accs == {r["step"]: pytest.approx(r["tgt-test"]["acc"]) for r in result.records}
    files = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"config.json", "results.jsonl", "steps.jsonl", "selected.pt"} <= files and "checkpoint.pt" not in files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_loader_workers_default_to_none_on_a_cpu_and_up_to_8_per_process_on_a_gpu():
    from dabench.runner import default_workers

    assert default_workers(torch.device("cpu"), cpus=64) == 0
    assert default_workers(torch.device("cuda"), cpus=64) == 8
    assert default_workers(torch.device("cuda"), cpus=16, processes=4) == 3  # one core per process left to train
    assert default_workers(torch.device("cuda"), cpus=2) == 1
