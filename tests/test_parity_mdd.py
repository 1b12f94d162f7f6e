"""MDD against a transcription of TLlib's MDD iteration (tests/reference/mdd.py): the same weights,
batches and random state (dropout draws the same masks); losses and every parameter after every
step agree to 1e-5 relative, both regimes; the warm-start coefficient over a whole run."""
from __future__ import annotations

import pytest
import torch

from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.mdd import MDD, margin_disparity
from reference import mdd as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, run_side_by_side, twin

STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")


def build(regime: str = "digits", **hp):
    cls = algorithms.get("mdd")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", regime)) | hp, STEPS)


@pytest.mark.parametrize("regime", ["digits", "imagenet"])
def test_mdd_matches_tllib_step_for_step(regime):
    algo = build(regime)
    tr = ref.TLlibMDD(twin(algo.featurizer), twin(algo.bottleneck), twin(algo.head), twin(algo.adv_head),
                      lr={"digits": 0.01, "imagenet": 0.004}[regime])
    algo.train()

    def reference_step(i, b):
        out = tr.step(b.src_x, b.src_y, b.tgt_x)
        assert_params_match([*algo.featurizer.parameters(), *algo.bottleneck.parameters(), *algo.head.parameters(),
                             *algo.adv_head.parameters()], tr.classifier.parameters(), what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, digit_batches(STEPS, batch=16, seed=13))
    assert_losses_match(logs, {"cls": "cls", "mdd": "mdd"})


def test_the_reversal_warms_up_as_tllib_over_a_whole_run():
    layer = ref.WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=0.1, max_iters=1000)
    for i in (0, 1, 500, 1000, 5000, 50000):
        layer.iter_num = i
        x = torch.ones(1, requires_grad=True)
        layer(x).sum().backward()
        assert -float(x.grad) == pytest.approx(MDD.coefficient(i), rel=1e-6, abs=1e-9)
    assert MDD.coefficient(0) == 0.0 and MDD.coefficient(10**6) == pytest.approx(0.1)


def test_the_margin_disparity_by_hand():
    """One pair of images, two classes. Source: the main head says class 0, the adversary's logits
    (0, 0): -4 x CE = -4 ln 2. Target: the main head says class 1, the adversary puts p = e/(1+e) on
    class 1: the term is log(1 - p) = -ln(1 + e). Their mean over one pair is the sum."""
    y_s, y_s_adv = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    y_t, y_t_adv = torch.tensor([[0.0, 3.0]]), torch.tensor([[0.0, 1.0]])
    e = torch.e
    expected = -4 * torch.log(torch.tensor(2.0)) + (-torch.log(torch.tensor(1 + e)))
    assert float(margin_disparity(y_s, y_s_adv, y_t, y_t_adv, 4.0)) == pytest.approx(float(expected), rel=1e-5)


def test_it_trains(tmp_path):
    result = run(RunConfig(algo="mdd", src="toy-src", tgt="toy-tgt", steps=4, eval_every=2,
                           overrides={"batch_size": 8}, out=str(tmp_path)))
    assert len(result.records) == 2
