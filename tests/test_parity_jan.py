"""JAN against a transcription of TLlib's JAN iteration (tests/reference/jan.py): the same weights,
batches and random state (the bottleneck's dropout draws the same masks); losses and every parameter
after every step agree to 1e-5 relative, both estimates, both regimes. In float64: dabench computes
the five kernels from one distance tensor, TLlib each from its own, and in float32 the two orders
of summing the gradient (4e-10 apart at the first step) grow past 1e-5 by step 10 under the
bottleneck's batch norm."""
from __future__ import annotations

import math

import pytest
import torch

from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.mmd import jmmd, mk_mmd
from reference import jan as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, run_side_by_side, twin

STEPS, BATCH = 20, 16

pytestmark = pytest.mark.usefixtures("one_thread")


def build(regime: str = "digits", **hp):
    cls = algorithms.get("jan")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", regime)) | hp, STEPS)


@pytest.mark.parametrize("regime, estimator", [("digits", "quadratic"), ("imagenet", "quadratic"), ("digits", "linear")])
def test_jan_matches_tllib_step_for_step(regime, estimator):
    algo = build(regime, estimator=estimator).double()
    tr = ref.TLlibJAN(twin(algo.featurizer), twin(algo.bottleneck), twin(algo.head),
                      lr={"digits": 0.01, "imagenet": 0.003}[regime], scratch=regime == "digits",
                      linear=estimator == "linear")
    algo.train()

    def reference_step(i, b):
        out = tr.step(b.src_x, b.src_y, b.tgt_x)
        assert_params_match([*algo.featurizer.parameters(), *algo.bottleneck.parameters(), *algo.head.parameters()],
                            tr.model.parameters(), what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, digit_batches(STEPS, batch=BATCH, seed=11, dtype=torch.float64))
    assert_losses_match(logs, {"cls": "cls_loss"})
    shifted = [({"jmmd": a["jmmd"] + 2 / (BATCH - 1)}, b) for a, b in logs]  # TLlib's constant, left out here
    assert_losses_match(shifted, {"jmmd": "transfer_loss"})


def test_jmmd_by_hand():
    """With every class probability equal the prediction kernel is 1 everywhere and the JMMD is DAN's
    MK-MMD; identical source and target give 0 under the linear estimate (each pair's four terms
    cancel); and the quadratic estimate written out below from JAN's eq. 8 (within-domain pairs
    i != j, every cross pair; feature kernels summed over alpha = 2^-3 .. 2 with sigma^2 = alpha x the
    mean squared distance over all (2n)^2 pairs, times exp(-d^2 / (2 0.92^2)) on the probabilities)."""
    g = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) + 1
    flat = torch.full((6, 3), 1 / 3)
    torch.testing.assert_close(jmmd((f_s, f_t), (flat, flat)), mk_mmd(f_s, f_t, "quadratic"))
    assert float(jmmd((f_s, f_s), (flat, flat), "linear")) == pytest.approx(0.0, abs=1e-6)
    p_s = torch.softmax(torch.randn(6, 3, generator=g), 1)
    p_t = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    f, p, n = torch.cat([f_s, f_t]).tolist(), torch.cat([p_s, p_t]).tolist(), 6
    d = lambda a, b: sum((x - y) ** 2 for x, y in zip(a, b))  # noqa: E731
    m = sum(d(a, b) for a in f for b in f) / (2 * n) ** 2
    k = lambda i, j: (sum(math.exp(-d(f[i], f[j]) / (2 * 2.0 ** e * m)) for e in range(-3, 2))  # noqa: E731
                      * math.exp(-d(p[i], p[j]) / (2 * 0.92 ** 2)))
    within = sum(k(i, j) + k(n + i, n + j) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    cross = 2 * sum(k(i, n + j) for i in range(n) for j in range(n)) / n ** 2
    assert float(jmmd((f_s, f_t), (p_s, p_t))) == pytest.approx(within - cross, rel=1e-4)


def test_it_trains(tmp_path):
    result = run(RunConfig(algo="jan", src="toy-src", tgt="toy-tgt", steps=4, eval_every=2,
                           overrides={"batch_size": 8}, out=str(tmp_path)))
    assert len(result.records) == 2
