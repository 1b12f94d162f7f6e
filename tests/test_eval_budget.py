"""The evaluation budget: capped segmentation val splits, the per-task --eval-every default, and a
plan that separates evaluation from training."""
from __future__ import annotations

import json

import pytest
from torch.utils.data import Dataset

from dabench.data import CLASSIFICATION, SEGMENTATION, Domain
from dabench.sweeping.cost import Cost, cost
from dabench.protocol import build_splits, split_rules
from dabench.runner import RunConfig, build, eval_every_for


class Sized(Dataset):
    """n items that nobody reads: build_splits only counts segmentation sets."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def domain(name, n, task=SEGMENTATION, test=None):
    return Domain(name, task, ["a", "b"], Sized(n), test, (8, 4))


def test_segmentation_val_splits_are_capped_and_the_rest_trains():
    s = build_splits(domain("gta", 24_966), domain("cs", 2_975, test=Sized(500)), 0, seed=0).sizes()
    assert s["src_val"] == 500 and s["src_train"] == 24_466  # 20% would be 4,993
    assert s["tgt_val"] == 500 and s["tgt_train"] == 2_475 and s["tgt_test"] == 500  # 20% would be 595
    s = build_splits(domain("gta", 24_966), domain("real", 4_000), 0, seed=0).sizes()  # no official test split
    assert s["tgt_test"] == 1_000 and s["tgt_val"] == 500 and s["tgt_train"] == 2_500  # the test split is not capped
    small = build_splits(domain("sim", 600), domain("real", 480), 0, seed=0).sizes()
    assert small["src_val"] == 120 and small["tgt_test"] == 120  # under the cap: 20% / 25% as before


def test_classification_val_splits_keep_their_fraction():
    from dabench.data import TensorImages
    import torch

    def digits(n):
        return Domain("d", CLASSIFICATION, [str(i) for i in range(10)],
                      TensorImages(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n) % 10), None, 4)

    s = build_splits(digits(4_000), digits(4_000), 0, seed=0).sizes()
    assert s["src_val"] == 800 and s["tgt_val"] == 600 and s["tgt_test"] == 1_000


def test_the_rules_are_recorded_in_the_config(tmp_path):
    config = build(RunConfig(algo="erm", src="streets-sim", tgt="streets-real", steps=3000,
                               backbone="deeplabv2:resnet18", out=str(tmp_path))).config
    assert config["split_rules"]["src_val"] == "20% of source train, at most 500 images"
    assert config["eval_every"] == 300  # 3000 // 10
    assert split_rules(CLASSIFICATION)["src_val"] == "20% of source train"
    assert split_rules(SEGMENTATION, "paper")["src_val"] == "none"


@pytest.mark.parametrize("task, steps, given, expected", [
    (CLASSIFICATION, 150_000, None, 200), (SEGMENTATION, 150_000, None, 15_000), (SEGMENTATION, 200, None, 200),
    (SEGMENTATION, 1_999, None, 200), (SEGMENTATION, 150_000, 50, 50)])
def test_eval_every_defaults_by_task(task, steps, given, expected):
    assert eval_every_for(task, steps, given) == expected


def test_a_plan_projects_training_by_steps_and_evaluation_by_evaluations():
    # measured: 10 steps in 5 s, two stages evaluating once each (every 10 of 10), 3 s of evaluation
    c = Cost(steps=10, evaluations_per_stage=1, work_s=5.0, eval_s=3.0, evaluations=2, task=SEGMENTATION)
    work, evals = c.project(1000, 200)
    assert work == pytest.approx(500.0)  # 0.5 s per step
    assert evals == pytest.approx(15.0)  # 1.5 s per evaluation x 2 stages x ceil(1000 / 200) = 5
    assert c.project(1000, 300)[1] == pytest.approx(12.0)  # ceil(1000 / 300) = 4
    old = Cost(steps=10, evaluations_per_stage=1, work_s=5.0, eval_s=None, evaluations=0, task=None)
    assert old.project(1000, 200) == (pytest.approx(500.0), 0.0)  # evaluation inside the training time


def test_timings_separate_evaluation_from_training(tmp_path):
    from dabench.runner import run

    result = run(RunConfig(algo="erm", src="syndigits:200", tgt="uci-digits", steps=6, eval_every=2,
                           out=str(tmp_path)))
    lines = [json.loads(x) for x in (result.run_dir / "timings.jsonl").read_text().splitlines()]
    assert [(t["part"], t.get("evaluations")) for t in lines] == [("prepare", None), ("train", None), ("evaluate", 3)]
    c = cost(result.run_dir)
    assert c.evaluations == 3 and c.evaluations_per_stage == 3 and c.eval_s > 0 and c.steps == 6
    assert c.task == CLASSIFICATION
