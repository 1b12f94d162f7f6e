"""Run folders safe to share (issue 21): files load as if a stranger sent them, one process writes a
run folder, and a bad file is a one-line exit 2, never a traceback."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import dabench
from dabench.cli import main
from dabench.errors import DabenchError
from dabench.files import RunHeld, RunLock, is_held, load_pt
from dabench.records import read_records
from dabench.runner import RunConfig, run
from dabench.sweep import run_one


def cfg(tmp_path, **kw) -> RunConfig:
    base = dict(algo="erm", src="toy-src", tgt="toy-tgt", steps=20, eval_every=10, out=str(tmp_path))
    return RunConfig(**(base | kw))


class Payload:
    """A pickle that runs a shell command when unpickled with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    return run(cfg(root)).run_dir


def crafted_copy(run_dir: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A copy of a finished run whose .pt files carry the payload; and the file the payload makes."""
    copy = tmp_path / "copy" / run_dir.relative_to(run_dir.parents[2])
    shutil.copytree(run_dir, copy)
    marker = tmp_path / f"pwned-{name}"
    for f in ("checkpoint.pt", "selected.pt"):
        torch.save({"step": 20, "model": Payload(marker), "selection": "source-val"}, copy / f)
    return copy, marker


def test_a_crafted_pickle_is_refused_by_every_loader_and_never_runs(finished, tmp_path):
    run_dir, marker = crafted_copy(finished, tmp_path, "api")
    for selection in ("source-val", "last"):
        with pytest.raises(DabenchError, match="refused.*run Python objects"):
            dabench.load(run_dir, selection=selection)
    saved = tmp_path / "model.pt"
    torch.save({"format": 1, "model": Payload(marker)}, saved)
    with pytest.raises(DabenchError, match="refused"):
        dabench.load(saved)
    assert not marker.exists()

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "a.png")
    for args in (["predict", str(run_dir), "--images", str(images), "--out", str(tmp_path / "p")],
                 ["divergence", str(run_dir), "--images", "20"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and "refused" in r.output and "Traceback" not in r.output, r.output
    (run_dir / "done").unlink()  # an unfinished run: --resume loads its checkpoint
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--steps", "20",
                                  "--eval-every", "10", "--out", str(tmp_path / "copy"), "--resume"])
    assert r.exit_code == 2 and "refused" in r.output and "Traceback" not in r.output, r.output
    assert not marker.exists()


def test_checkpoints_load_safely_and_old_numpy_rng_states_still_do(finished, tmp_path):
    state = load_pt(finished / "checkpoint.pt", "checkpoint")
    assert state["step"] == 20 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    old = dict(state, rng=dict(state["rng"], numpy=np.random.get_state()))  # as dabench wrote it before
    torch.save(old, tmp_path / "old.pt")
    assert load_pt(tmp_path / "old.pt", "checkpoint")["rng"]["numpy"][0] == "MT19937"


def test_truncated_or_foreign_files_are_one_line_errors(finished, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes((finished / "checkpoint.pt").read_bytes()[:300])
    with pytest.raises(DabenchError, match="truncated or not a checkpoint"):
        load_pt(cut, "checkpoint")
    other = tmp_path / "copy" / finished.relative_to(finished.parents[2])
    shutil.copytree(finished, other)
    torch.save({"step": 20, "selection": "source-val", "model": {"x": torch.zeros(2)}}, other / "selected.pt")
    with pytest.raises(DabenchError, match="do not fit the network"):
        dabench.load(other)


def test_a_second_writer_is_refused_naming_the_holder_and_a_sweep_skips_the_run(tmp_path):
    first = run(cfg(tmp_path, steps=10))
    run_dir = first.run_dir
    shutil.rmtree(run_dir)
    with RunLock(run_dir):
        assert is_held(run_dir)
        with pytest.raises(RunHeld, match=f"being trained by process {os.getpid()}"):
            run(cfg(tmp_path, steps=10))
        for flag in ([], ["--resume"], ["--overwrite"]):
            r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--steps",
                                          "10", "--eval-every", "10", "--out", str(tmp_path), *flag])
            assert r.exit_code == 2 and "being trained by" in r.output and "--resume" not in r.output, r.output
        outcome = run_one(cfg(tmp_path, steps=10))
        assert outcome.status == "held" and "being trained by" in outcome.message
        assert not run_dir.exists()  # nobody wrote into it
    assert not is_held(run_dir)
    again = run(cfg(tmp_path, steps=10))  # released: the run trains
    assert (run_dir / "done").exists() and [r["step"] for r in again.records] == [10]


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path):
    run_dir = tmp_path / "runs" / "x" / "seed0-abc"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from dabench.files import RunLock
        lock = RunLock({str(run_dir)!r}).acquire()
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_held(run_dir)
        with pytest.raises(RunHeld, match=f"process {holder.pid}"):
            RunLock(run_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    while is_held(run_dir) and time.time() < deadline:
        time.sleep(0.1)
    with RunLock(run_dir) as lock:
        assert f"process {os.getpid()}" in lock.holder()


def test_sweep_runs_a_repeated_seed_once(tmp_path):
    r = CliRunner().invoke(main, ["sweep", "--algos", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--seeds", "0,0",
                                  "--steps", "5", "--eval-every", "5", "--out", str(tmp_path)])
    assert r.exit_code == 0 and "1 runs ->" in r.output, r.output
    assert len(list(tmp_path.glob("*/erm/seed0-*/done"))) == 1
    assert read_records(next(tmp_path.glob("*/erm/seed0-*/results.jsonl")))[-1]["step"] == 5
