"""The notebook API as a user meets it: fit / evaluate / predict / save / load, arrays in and out,
and the model you get being the model the tables report."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
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
from dabench.registry import algorithms
from dabench.runner import RunConfig
from dabench.results.selection import choose
from dabench.sweeping.sweep import plan, sweep
from dabench_plugins.algorithms.erm import ERM

from conftest import toy_images

PYTHON_PAGE = Path(__file__).resolve().parents[1] / "docs" / "python.md"
FAST = dict(steps=20, eval_every=10, progress=False)


def toy_arrays(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The toy images as a user would hold them: (N, H, W, C) uint8 numpy, labels (N,)."""
    ds = toy_images(n, shift, seed)
    return ds.images.permute(0, 2, 3, 1).numpy(), ds.targets.numpy()


def test_the_python_pages_lines_run(tmp_path, monkeypatch):
    text = PYTHON_PAGE.read_text()
    block = re.search(r"# In Python.*?```python\n(.*?)```", text, re.S).group(1)
    assert "dabench.fit(" in block and "dabench.load(" in block and ".save(" in block
    code = block.replace("steps=500", "steps=20, eval_every=10, progress=False")
    assert code != block  # the page's step count was found and shortened, nothing else changed
    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    scope = {"images": images}
    exec(compile(code, str(PYTHON_PAGE), "exec"), scope)
    assert (tmp_path / "dann.pt").is_file() and (tmp_path / "runs").is_dir()
    run, same = scope["run"], scope["same"]
    metrics = run.evaluate("mnistm5k")
    assert set(metrics) == {"acc", "class_acc"} and len(metrics["class_acc"]) == 10  # and per class
    assert all(0 <= v <= 1 for v in metrics["class_acc"])
    assert torch.equal(run.predict(images), same.predict(images))
    assert same.predict(images).shape == (3, 10)


def test_arrays_in_unlabelled_target_out(tmp_path):
    xs, ys = toy_arrays(160, 0.0, 1)
    xt, yt = toy_arrays(120, 0.4, 2)
    run = dabench.fit("dann", src=(xs, ys), tgt=xt, out=tmp_path, **FAST)
    assert run.config["src"].startswith("arrays-") and run.config["tgt"].startswith("arrays-")
    assert run.config["splits"]["tgt_train"] == 120 and run.config["splits"]["tgt_test"] == 0
    assert all("src-val" in r and "tgt-test" not in r for r in run.records)  # nothing to test on: no labels
    metrics = run.evaluate((xt, yt))
    by_hand = float((run.predict(xt).argmax(1).numpy() == yt).mean())
    assert metrics["acc"] == pytest.approx(by_hand)
    # channels-first floats in [0, 1] are the same images
    floats = torch.from_numpy(xt).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(run.predict(floats), run.predict(xt), atol=1e-5)
    again = dabench.fit("dann", src=(xs, ys), tgt=xt, out=tmp_path, **FAST)  # same arrays: the same run
    assert again.run_dir == run.run_dir


def test_bad_arrays_and_options_are_clear_errors(tmp_path):
    xs, ys = toy_arrays(40, 0.0, 1)
    with pytest.raises(DabenchError, match="unknown option"):
        dabench.fit("dann", src=(xs, ys), tgt=xs, out=tmp_path, stesp=10)
    with pytest.raises(DabenchError, match=r"float pixels must lie in \[0, 1\]"):
        dabench.fit("dann", src=(xs * 2.0, ys), tgt=xs, out=tmp_path, **FAST)
    with pytest.raises(DabenchError, match="expected \\(N,\\) class ids"):
        dabench.fit("dann", src=(xs, ys[:5]), tgt=xs, out=tmp_path, **FAST)
    with pytest.raises(DabenchError, match="no labels, so no labelled-target budget"):
        dabench.fit("dann", src=(xs, ys), tgt=xs, out=tmp_path, tgt_labeled=4, **FAST)
    assert not list(tmp_path.rglob("config.json"))  # nothing half-made


@algorithms.register("forgetful-erm")
class ForgetfulERM(ERM):
    """Test-only: ERM that erases its weights after 20 steps, so its best step is not its last."""

    def update(self, batch, step):
        losses = super().update(batch, step)
        if step >= 20:
            with torch.no_grad():
                for p in self.parameters():
                    p.zero_()
        return losses


def test_the_model_you_get_is_the_step_the_table_reports(tmp_path):
    run = dabench.fit("forgetful-erm", src="toy-src", tgt="toy-tgt", out=tmp_path, steps=40, eval_every=10,
                      progress=False)
    chosen, last = choose("source-val", run.records, "acc"), run.records[-1]
    assert chosen["step"] <= 20 < last["step"] and run.step == chosen["step"] and run.selection == "source-val"
    assert run.evaluate("toy-tgt") == chosen["tgt-test"]  # the table's number, from the loaded model
    final = dabench.load(run.run_dir, selection="last")
    assert final.step == 40 and final.evaluate("toy-tgt") == last["tgt-test"] != chosen["tgt-test"]
    run.save(tmp_path / "model.pt")
    assert dabench.load(tmp_path / "model.pt").evaluate("toy-tgt") == chosen["tgt-test"]
    with pytest.raises(DabenchError, match="holds the source-val step only"):
        dabench.load(tmp_path / "model.pt", selection="last")

    # dabench predict uses the same step: the erased last model gives every class 1/4
    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(toy_arrays(4, 0.4, 2)[0]):
        Image.fromarray(img).save(images / f"{i}.png")
    probability = {}
    for selection in ("source-val", "last"):
        r = CliRunner().invoke(main, ["predict", str(run.run_dir), "--images", str(images), "--out",
                                      str(tmp_path / selection), "--selection", selection], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        with open(tmp_path / selection / "predictions.csv") as f:
            probability[selection] = [float(row["probability"]) for row in csv.DictReader(f)]
    assert probability["last"] == [0.25] * 4 and min(probability["source-val"]) > 0.25

    (run.run_dir / "selected.pt").unlink()  # a run folder from before selected weights were kept
    with pytest.raises(DabenchError, match="selection='last'"):
        dabench.load(run.run_dir)


def test_a_finished_sweep_is_skipped_without_building_data_or_network(tmp_path, monkeypatch):
    base = RunConfig(algo="", src="toy-src", tgt="toy-tgt", steps=10, eval_every=10, out=str(tmp_path))
    configs, _ = plan(["erm", "dann"], [0, 1], [0], 1, base)
    assert [o.status for o in sweep(configs)] == ["done"] * 4

    def never(*args, **kwargs):
        raise AssertionError("a finished run was built again")

    import dabench.runner

    monkeypatch.setattr(dabench.runner, "load_domain", never)
    monkeypatch.setattr(dabench.runner, "build_algorithm", never)
    t0 = time.perf_counter()
    outcomes = sweep(configs)
    assert [o.status for o in outcomes] == ["skipped"] * 4
    assert time.perf_counter() - t0 < 2.0
    assert all(o.final["step"] == 10 for o in outcomes)


def test_import_dabench_and_the_leaderboard_do_not_import_torch(tmp_path):
    dabench.run(RunConfig(algo="erm", src="toy-src", tgt="toy-tgt", steps=10, eval_every=10, out=str(tmp_path)))
    code = ("import sys, dabench; from dabench.cli import main; from click.testing import CliRunner; "
            f"r = CliRunner().invoke(main, ['leaderboard', {str(tmp_path)!r}]); "
            "print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["0", "False"], out.stdout + out.stderr
    assert callable(dabench.fit) and "fit" in dir(dabench)


def test_predict_the_notebook_api_and_the_loaders_read_an_image_the_same_way(tmp_path):
    """One image-to-tensor path: ``dabench predict`` on a file, ``Run.predict`` on its pixels as an
    array, and the training loaders give the network the same tensor (bilinear for
    classification, bicubic for segmentation, both antialiased: ``Task.resample``)."""
    from types import SimpleNamespace

    from dabench.api import Run
    from dabench.data import image_tensor
    from dabench.segdata.pairs import SegmentationFiles
    from dabench_plugins.datasets.folder import ImageFiles

    path = tmp_path / "a.png"
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    square = tmp_path / "b.png"
    Image.fromarray(pixels[:37, :37]).save(square)
    loader = ImageFiles([square], [0], 16)[0][0]
    assert torch.equal(image_tensor(square, (16, 16), "classification"), loader)
    api, own = Run._tensor(SimpleNamespace(task="classification", input_size=(16, 16)), pixels[None, :37, :37])
    assert torch.equal(api[0], loader) and own == (37, 37)
    seg = SegmentationFiles([(path, path)], (40, 24), None, np.arange(256, dtype=np.uint8))
    assert torch.equal(image_tensor(path, (40, 24), "segmentation"), seg.image(0))
    api, own = Run._tensor(SimpleNamespace(task="segmentation", input_size=(40, 24)), pixels[None])
    assert torch.equal(api[0], seg.image(0)) and own == (37, 53)
    # the two tasks do resize differently, so the test above compares something
    assert not torch.equal(image_tensor(path, (40, 24), "classification"), seg.image(0))
