"""M3SDA against a transcription of Dassl's training step (tests/reference/m3sda.py): three sources
and a target, the same weights and batches; the three steps' losses and every parameter after every
step agree to 1e-5 relative; the prediction is Dassl's model_inference."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from dabench.data import Batch
from dabench.errors import DabenchError
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.m3sda import moment_distance
from reference import m3sda as ref
from reference.harness import assert_losses_match, assert_params_match, run_side_by_side
from test_dg import toy_mid  # noqa: F401 - registers the third toy domain

STEPS = 12

pytestmark = pytest.mark.usefixtures("one_thread")


def build():
    cls = algorithms.get("m3sda")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", "digits")), STEPS)


def batches():
    g = torch.Generator().manual_seed(17)
    out = []
    for _ in range(STEPS):
        x = torch.cat([torch.rand(8, 3, 28, 28, generator=g) * 2 - 1 + 0.2 * d for d in range(3)])
        y = torch.randperm(24, generator=g) % 10
        t = torch.rand(8, 3, 28, 28, generator=g) * 2 - 1 + 0.5
        out.append(Batch(x, y, t, src_domain=torch.arange(3).repeat_interleave(8)))
    return out


def test_m3sda_matches_dassl_step_for_step():
    algo = build()
    algo._ensure_pairs(3)
    F_net, C = copy.deepcopy(algo.featurizer), copy.deepcopy(algo.pairs)
    tr = ref.M3SDA(F_net, C)

    def reference_step(i, b):
        xs = [b.src_x[b.src_domain == d] for d in range(3)]
        ys = [b.src_y[b.src_domain == d] for d in range(3)]
        out = tr.forward_backward(0.05 * (1 + math.cos(math.pi * i / STEPS)) / 2, xs, ys, b.tgt_x)
        assert_params_match([*algo.featurizer.parameters(), *algo.pairs.parameters()],
                            [*F_net.parameters(), *C.parameters()], what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, batches())
    assert_losses_match(logs, {"step_a": "loss_step_A", "step_b": "loss_step_B", "step_c": "loss_step_C"})
    x = torch.rand(4, 3, 28, 28)
    algo.eval(), F_net.eval()
    torch.testing.assert_close(torch.softmax(algo.predict(x), 1), tr.model_inference(x))


def test_the_moment_distance_by_hand():
    """Two sources and a target in one dimension: means 1, 3 and 0 (pairs: |1-0|, |3-0|, |1-3|, mean
    2), variances 0, 0 and 2 (pairs 2, 2, 0, mean 4/3); their average 5/3."""
    s1, s2, t = torch.tensor([[1.0], [1.0]]), torch.tensor([[3.0], [3.0]]), torch.tensor([[-1.0], [1.0]])
    assert float(moment_distance([s1, s2], t)) == pytest.approx((2 + 4 / 3) / 2)


def test_one_source_is_refused_and_several_train(tmp_path):
    with pytest.raises(DabenchError, match="several sources"):
        run(RunConfig(algo="m3sda", src="toy-src", tgt="toy-tgt", out=str(tmp_path / "one")))
    assert not (tmp_path / "one").exists()
    result = run(RunConfig(algo="m3sda", src="toy-src,toy-mid", tgt="toy-tgt", steps=4, eval_every=2,
                           overrides={"batch_size": 8}, out=str(tmp_path / "two")))
    assert len(result.records) == 2 and 0 <= result.records[-1]["tgt-test"]["acc"] <= 1
    again = run(RunConfig(algo="m3sda", src="toy-src,toy-mid", tgt="toy-tgt", steps=4, eval_every=2,
                          overrides={"batch_size": 8}, out=str(tmp_path / "two")))
    assert again.already_done


def test_the_classifier_pairs_come_back_from_a_checkpoint():
    """The pairs are made at the first step (the number of sources comes with the batch); a fresh
    instance loading the weights makes them, with their optimiser, before the values are copied."""
    algo = build()
    for i, b in enumerate(batches()[:2]):
        algo.update(b, i)
    again = build()
    again.load_state_dict(algo.state_dict())
    again.optims["c"].load_state_dict(algo.optims["c"].state_dict())
    assert len(again.pairs) == 3
    assert all(torch.equal(a, b) for a, b in zip(again.pairs.parameters(), algo.pairs.parameters()))
