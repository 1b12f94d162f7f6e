"""Seed 003's transfer-learning rows: head-only training on a frozen backbone, and the proxy
A-distance between the domains' features."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dabench
from dabench.cli import main
from dabench.divergence import proxy_a_distance
from dabench.runner import RunConfig, build_algorithm, run
from dabench.results.selection import choose


def initial_and_trained(tmp_path, **kw):
    result = run(RunConfig(steps=20, eval_every=10, out=str(tmp_path), **kw))
    trained = dabench.load(result.run_dir, selection="last", device="cpu").algorithm  # beside a CPU build
    size = trained.segmentation and tuple(int(v) for v in result.config["eval_size"].split("x")) or 16
    return build_algorithm(result.config, size, torch.device("cpu")).state_dict(), trained.state_dict()


@pytest.mark.parametrize("algo", ["erm", "dann", "sagnet"])
def test_freeze_backbone_trains_the_heads_only(tmp_path, algo):
    before, after = initial_and_trained(tmp_path, algo=algo, src="toy-src", tgt="toy-tgt",
                                        overrides={"freeze_backbone": "true"})
    frozen = [k for k in before if k.startswith(("featurizer.", "features."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    heads = [k for k in before if k.startswith(("classifier.", "content.", "discriminator."))]
    assert heads and any(not torch.equal(before[k], after[k]) for k in heads)


def test_freeze_backbone_keeps_a_segmenters_encoder_and_its_batch_norm_statistics(tmp_path):
    before, after = initial_and_trained(tmp_path, algo="erm", src="toyseg-src", tgt="toyseg-tgt",
                                        backbone="toy-segnet", overrides={"freeze_backbone": "true"})
    encoder = [k for k in before if ".encoder." in k or k.startswith("featurizer.encoder")]
    assert any("running_mean" in k for k in encoder)
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert not torch.equal(before["featurizer.head.weight"], after["featurizer.head.weight"])
    # and without the flag the encoder trains
    before, after = initial_and_trained(tmp_path / "free", algo="erm", src="toyseg-src", tgt="toyseg-tgt",
                                        backbone="toy-segnet")
    assert not all(torch.equal(before[k], after[k]) for k in encoder)


def test_proxy_a_distance_is_2_for_separable_features_and_near_0_for_one_distribution():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (400, 5)), rng.normal(0, 1, (400, 5))
    assert proxy_a_distance(a, b + 10) == (2.0, 0.0)  # a linear classifier separates them without error
    pad, err = proxy_a_distance(rng.normal(0, 1, (1000, 5)), rng.normal(0, 1, (1000, 5)))
    assert abs(err - 0.5) < 0.075 and pad == pytest.approx(2 * (1 - 2 * err)) and abs(pad) < 0.3


def test_pad_interval_is_wilsons_interval_of_the_error_checked_by_hand():
    from dabench.divergence import pad_interval

    # err 0.5 on 100 images: Wilson's centre 0.5, half-width 1.96 sqrt(0.0025 + 3.8416 / 40000) / 1.038416 = 0.09617
    assert pad_interval(0.5, 100) == pytest.approx([-0.38468, 0.38468], abs=1e-4)
    assert pad_interval(0.0, 100)[1] == 2.0 and pad_interval(0.0, 100)[0] < 2.0  # perfect separation: 2 is the top


def test_divergence_command_reports_the_start_and_the_selected_step(tmp_path):
    result = run(RunConfig(algo="dann", src="toy-src", tgt="toy-tgt", steps=20, eval_every=10, out=str(tmp_path)))
    r = CliRunner().invoke(main, ["divergence", str(result.run_dir), "--images", "30"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "start (as built)" in r.stdout and "selected (source-val)" in r.stdout
    report = json.loads((result.run_dir / "divergence.json").read_text())
    assert report["images_per_domain"] == 30 and report["source"] == "src-val" and report["target"] == "tgt-test"
    assert report["selected"]["step"] == choose("source-val", result.records, "acc")["step"]
    for key in ("start", "selected"):
        assert report[key]["pad"] == pytest.approx(2 * (1 - 2 * report[key]["error"]))
        lo, hi = report[key]["pad_95"]
        assert lo <= report[key]["pad"] <= hi and hi - lo > 0.1  # 30 test images per domain: a wide interval
    assert "95% interval" in r.stdout and "PAD is how well a linear classifier" in r.stdout
    r = CliRunner().invoke(main, ["divergence", str(result.run_dir), "--images", "2"])
    assert r.exit_code == 2 and "--images must be at least 6" in r.stderr
