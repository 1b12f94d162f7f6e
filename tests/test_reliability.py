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
from dabench.files import RunHeld, RunLock, load_pt
from dabench.runfolder import read_records
from dabench.runner import RunConfig, run
from dabench.sweeping.sweep import run_one


def cfg(tmp_path, **kw) -> RunConfig:
    base = dict(algo="erm", src="toy-src", tgt="toy-tgt", steps=20, eval_every=10, out=str(tmp_path))
    return RunConfig(**(base | kw))


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock."""
    try:
        RunLock(run_dir).acquire().release()
    except RunHeld:
        return True
    return False


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


# --- crash-safe records -----------------------------------------------------------------------------

class _Killed(Exception):
    pass


def killed_at(tmp_path, monkeypatch, step: int) -> Path:
    """A 40-step run stopped by an exception in step ``step`` (checkpoints every 10); its folder."""
    from dabench_plugins.algorithms.erm import ERM

    original = ERM.update

    def dies(self, batch, s):
        if s == step:
            raise _Killed()
        return original(self, batch, s)

    monkeypatch.setattr(ERM, "update", dies)
    with pytest.raises(_Killed):
        run(cfg(tmp_path, steps=40))
    monkeypatch.setattr(ERM, "update", original)
    (run_dir,) = (tmp_path / "toy-src_to_toy-tgt" / "erm").iterdir()
    return run_dir


def steps_of(records):
    return [r["step"] for r in records]


def without_time(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def test_a_torn_line_past_the_checkpoint_is_dropped_with_a_warning_and_the_resume_is_exact(tmp_path, monkeypatch):
    full = run(cfg(tmp_path / "full", steps=40))
    run_dir = killed_at(tmp_path / "k", monkeypatch, 25)
    results = run_dir / "results.jsonl"
    assert steps_of(read_records(results)) == [10, 20]
    with open(results, "a") as f:  # the kill hit the write of step 30's record
        f.write('{"step": 30, "stage": "train", "src-v')
    with pytest.warns(UserWarning, match="line 3 is cut off.*dropped"):
        resumed = run(cfg(tmp_path / "k", steps=40, resume=True))
    assert without_time(read_records(results, strict=True)) == without_time(full.records)
    assert without_time(resumed.records) == without_time(full.records)


@pytest.mark.parametrize("damage, line, what", [
    (lambda text: text[: text.index("\n") + 30], 2, "is cut off"),  # cut inside step 20's record
    (lambda text: "garbage\n" + text.split("\n", 1)[1], 1, "is not a record")])
def test_an_unreadable_record_before_the_checkpoint_stops_the_resume(tmp_path, monkeypatch, damage, line, what):
    run_dir = killed_at(tmp_path, monkeypatch, 25)  # checkpoint at 20, after the records of 10 and 20
    results = run_dir / "results.jsonl"
    results.write_text(damage(results.read_text()))
    with pytest.raises(DabenchError, match=f"results.jsonl line {line} {what}.*--overwrite"):
        run(cfg(tmp_path, steps=40, resume=True))
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--steps", "40",
                                  "--eval-every", "10", "--out", str(tmp_path), "--resume"])
    assert r.exit_code == 2 and f"line {line}" in r.output and "Traceback" not in r.output, r.output
    assert not (run_dir / "done").exists()


def test_records_are_read_line_by_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n')
    assert steps_of(read_records(path, strict=True)) == [1, 2]
    path.write_text('{"step": 1}\n{"step": 2}')  # whole JSON, but its newline never written
    with pytest.raises(DabenchError, match="line 2 is cut off"):
        read_records(path, strict=True)
    assert steps_of(read_records(path)) == [1]
    path.write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n')
    with pytest.raises(DabenchError, match="line 2 is not a record"):
        read_records(path, strict=True)


def test_a_finished_run_with_a_damaged_record_is_refused_by_load_and_by_a_rerun(finished, tmp_path):
    copy = tmp_path / "copy" / finished.relative_to(finished.parents[2])
    shutil.copytree(finished, copy)
    lines = (copy / "results.jsonl").read_text().split("\n")
    (copy / "results.jsonl").write_text("\n".join([lines[0][:-5]] + lines[1:]))
    with pytest.raises(DabenchError, match="line 1 is not a record.*--overwrite"):
        dabench.load(copy)
    with pytest.raises(DabenchError, match="line 1 is not a record"):
        run(cfg(tmp_path / "copy"))  # "already finished" would show the records after the damage as the run's


def image_folder(path: Path, value: int) -> Path:
    for c in ("a", "b"):
        (path / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((16, 16, 3), value + 40 * (c == "b") + i, np.uint8)).save(path / c / f"{i}.png")
    return path


def test_a_relative_folder_names_the_run_by_where_it_resolves(tmp_path, monkeypatch):
    """The same words, folder:data, typed in two directories that hold other images: two runs."""
    for name, value in (("one", 10), ("two", 150)):
        image_folder(tmp_path / name / "data", value)
    image_folder(tmp_path / "target", 90)
    out = tmp_path / "runs"
    results = {}
    for name in ("one", "two"):
        monkeypatch.chdir(tmp_path / name)
        r = run(RunConfig(algo="erm", src="folder:data", tgt="folder:../target", steps=2, eval_every=2,
                          out=str(out), overrides={"batch_size": 4}))
        assert not r.already_done
        results[name] = r
    assert results["one"].run_dir != results["two"].run_dir
    assert results["one"].config["src"] == f"folder:{tmp_path / 'one' / 'data'}"
    assert results["two"].config["tgt"] == f"folder:{tmp_path / 'target'}"
    monkeypatch.chdir(tmp_path)  # the same folder written another way is the same run
    again = run(RunConfig(algo="erm", src="folder:two/data", tgt="folder:target", steps=2, eval_every=2,
                          out=str(out), overrides={"batch_size": 4}))
    assert again.already_done and again.run_dir == results["two"].run_dir


# --- checks before training -------------------------------------------------------------------------

def squares(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("images, labels, message", [
    (np.full((3, 8, 8), np.nan), [0, 1, 0], "NaN or infinite"),
    (squares(3), [0.5, 1, 0], "not whole numbers"),
    (squares(3), ["a", "b", "a"], "class names"),
    ([np.zeros((8, 8)), np.zeros((9, 9))], [0, 1], "differ in shape"),
    (squares(3).astype(bool), [0, 1, 0], "uint8"),
])
def test_arrays_that_cannot_be_images_and_labels_are_refused(images, labels, message):
    with pytest.raises(DabenchError, match=message):
        dabench.from_arrays(images, labels)
    assert dabench.from_arrays(squares(3), np.array([0.0, 1.0, 0.0])).classes == ["0", "1"]  # whole floats are ids


@pytest.mark.parametrize("hparams, message", [
    ({"lr": float("nan")}, "'lr' must be a finite number above 0"), ({"lr": -1.0}, "'lr' must be"),
    ({"lr": 0.0}, "'lr' must be"), ({"batch_size": 0}, "'batch_size' must be 1 or more"),
    ({"batch_size": -4}, "'batch_size' must be 1 or more")])
def test_hyperparameters_no_run_can_train_with_are_refused_before_training(tmp_path, hparams, message):
    with pytest.raises(DabenchError, match=message):
        run(cfg(tmp_path, overrides=hparams))
    assert not list(tmp_path.iterdir())
    key, value = next(iter(hparams.items()))
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "-H", f"{key}={value}",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output


def test_domains_of_other_sizes_and_splits_too_small_are_refused(tmp_path):
    labels = np.arange(20) % 2
    src = dabench.from_arrays(squares(20), labels)
    with pytest.raises(DabenchError, match="share one image size.*16x16.*24x24"):
        run(RunConfig(algo="erm", src=src, tgt=dabench.from_arrays(squares(20, 24), labels), out=str(tmp_path)))
    with pytest.raises(DabenchError, match="Too few images to split: tgt-train"):
        run(RunConfig(algo="erm", src=src, tgt=dabench.from_arrays(squares(2), [0, 1]), out=str(tmp_path)))
    assert not list(tmp_path.iterdir())


def test_predict_refuses_non_square_images_as_fit_does(finished):
    model = dabench.load(finished)
    assert model.predict(squares(2)).shape == (2, 4)
    with pytest.raises(DabenchError, match="must be square, got 20x16"):
        model.predict(np.zeros((2, 16, 20, 3), np.uint8))


def test_output_paths_that_are_files_and_earlier_predictions_are_refused(finished, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--out", str(a_file)])
    assert r.exit_code == 2 and "is a file" in r.output and "Traceback" not in r.output
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(squares(1)[0]).save(images / "a.png")
    predict = ["predict", str(finished), "--images", str(images), "--out"]
    r = CliRunner().invoke(main, [*predict, str(a_file)])
    assert r.exit_code == 2 and "is a file" in r.output
    r = CliRunner().invoke(main, [*predict, str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    first = (tmp_path / "p" / "predictions.csv").read_text()
    r = CliRunner().invoke(main, [*predict, str(tmp_path / "p")])
    assert r.exit_code == 2 and "already holds predictions.csv" in r.output and "--overwrite" in r.output
    r = CliRunner().invoke(main, [*predict, str(tmp_path / "p"), "--overwrite"])
    assert r.exit_code == 0 and (tmp_path / "p" / "predictions.csv").read_text() == first


def test_a_corrupt_config_under_resume_is_a_one_line_error(finished, tmp_path):
    copy = tmp_path / "copy" / finished.relative_to(finished.parents[2])
    shutil.copytree(finished, copy)
    (copy / "done").unlink()
    (copy / "config.json").write_text('{"algo": "erm", "src')
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--steps", "20",
                                  "--eval-every", "10", "--out", str(tmp_path / "copy"), "--resume"])
    assert r.exit_code == 2 and "config.json cannot be read" in r.output and "Traceback" not in r.output, r.output


def test_a_directory_link_that_loops_lists_each_image_once(tmp_path):
    from dabench_plugins.datasets.folder import folder

    data = image_folder(tmp_path / "data", 10)
    (data / "self").symlink_to(data, target_is_directory=True)  # not a class holding every image
    (data / "a" / "self").symlink_to(data / "a", target_is_directory=True)  # nor class a's images twice
    domain = folder(str(data), image_size=16)
    assert domain.info["images"] == 12 and domain.classes == ["a", "b"]


def test_an_out_folder_you_cannot_write_is_refused_before_training(tmp_path, monkeypatch):
    """As a user without write permission sees it (the tests run as root, whom permissions do not stop,
    so the permission check itself is what is replaced)."""
    import dabench.files

    real = os.access
    monkeypatch.setattr(dabench.files.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--out",
                                  str(tmp_path / "runs")])
    assert r.exit_code == 2 and "is not writable by you" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "runs").exists()


def test_load_leaves_the_callers_random_state_as_it_was(finished):
    import random

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    dabench.load(finished)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
