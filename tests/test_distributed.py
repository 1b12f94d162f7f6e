"""One run on 2 processes with torchrun (gloo on these CPUs): it follows the 1-process run at the
same global batch, segmentation runs too, and a killed 2-process run resumes to the numbers of an
uninterrupted one. The processes are real: `dabench run --devices 2` starts torchrun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN = ["--algo", "dann", "--src", "syndigits:400", "--tgt", "uci-digits", "--eval-every", "10", "-H", "batch_size=32"]


def dabench(*args, wait=True):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dabench", "run", "--device", "cpu", *args]  # gloo, on a GPU machine too
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def lines(out: Path, name: str) -> list[dict]:
    (path,) = out.rglob(name)
    return [json.loads(line) for line in path.read_text().splitlines()]


def scores(records: list[dict]) -> list:
    return [(r["step"], r["src-val"], r["tgt-val"], r["tgt-test"]) for r in records]


@pytest.mark.slow
def test_two_processes_follow_one_at_the_same_global_batch(tmp_path):
    dabench(*RUN, "--steps", "30", "--out", str(tmp_path / "one"))
    dabench(*RUN, "--steps", "30", "--devices", "2", "--out", str(tmp_path / "two"))
    one, two = lines(tmp_path / "one", "steps.jsonl"), lines(tmp_path / "two", "steps.jsonl")
    assert [s["step"] for s in two] == list(range(1, 31))
    for a, b in zip(one, two):  # the same losses up to the order of float sums
        assert b["cls"] == pytest.approx(a["cls"], rel=1e-5) and b["dom"] == pytest.approx(a["dom"], rel=1e-5)
    assert scores(lines(tmp_path / "two", "results.jsonl")) == scores(lines(tmp_path / "one", "results.jsonl"))
    (config,) = (tmp_path / "two").rglob("config.json")
    assert json.loads(config.read_text())["world_size"] == 2


@pytest.mark.slow
def test_a_two_process_segmentation_run_finishes(tmp_path):
    dabench("--algo", "adaptsegnet", "--src", "streets-sim:40", "--tgt", "streets-real:40", "--backbone",
            "deeplabv2:resnet18", "--image-size", "32", "--steps", "4", "--eval-every", "2", "-H", "batch_size=2",
            "--devices", "2", "--out", str(tmp_path))
    records = lines(tmp_path, "results.jsonl")
    assert [r["step"] for r in records] == [2, 4] and len(records[-1]["tgt-test"]["iou"]) == 8


def survivors(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_only_the_parent_of_a_two_process_run_leaves_no_worker_and_it_resumes_exactly(tmp_path):
    """SIGKILL to `dabench run --devices 2` alone (not its process group): torchrun's agent and both
    workers end with it, nobody writes `done`, and --resume gives the uninterrupted numbers."""
    args = [*RUN, "--steps", "80", "--devices", "2"]
    dabench(*args, "--out", str(tmp_path / "full"))
    killed = tmp_path / "killed"
    proc = dabench(*args, "--out", str(killed), wait=False)
    deadline = time.time() + 240
    while time.time() < deadline:
        found = list(killed.rglob("results.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert len(survivors(str(killed))) >= 3  # the parent, torchrun's agent, two workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60
    while survivors(str(killed)) and time.time() < deadline:
        time.sleep(0.2)
    left = survivors(str(killed))
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left
    (done_marker,) = [p.parent / "done" for p in (tmp_path / "killed").rglob("config.json")]
    assert not done_marker.exists()
    dabench(*args, "--resume", "--out", str(tmp_path / "killed"))
    assert scores(lines(tmp_path / "killed", "results.jsonl")) == scores(lines(tmp_path / "full", "results.jsonl"))
    assert lines(tmp_path / "killed", "steps.jsonl") == lines(tmp_path / "full", "steps.jsonl")


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "dabench", "run", *RUN[:-2], "-H", "batch_size=33", "--steps", "4", "--device", "cpu",
                          "--devices", "2", "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "-H batch_size = 33 does not split over 2 processes" in " ".join(out.stderr.split())


def test_more_processes_than_gpus_is_refused_before_any_starts(tmp_path, monkeypatch):
    """On a one-GPU machine `--devices 2` would start a second rank that dies on CUDA's 'invalid
    device ordinal' inside torchrun (seen on an H200): refused first, with what to do instead."""
    from click.testing import CliRunner

    import torch
    from dabench import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cli, "_torchrun", lambda devices: pytest.fail("torchrun was started"))
    r = CliRunner().invoke(cli.main, ["run", *RUN, "--steps", "4", "--devices", "2", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    text = " ".join(r.output.split())
    assert "--devices 2 starts one process per GPU, but PyTorch sees 1 GPU here" in text
    assert "--devices 1 or fewer, or --device cpu" in text
    assert not any(tmp_path.iterdir()) if tmp_path.exists() else True
