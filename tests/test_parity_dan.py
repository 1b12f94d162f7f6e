"""DAN against a transcription of its reference, TLlib's DAN training iteration (tests/reference/dan.py).
The same weights, batches and random state (the bottleneck's dropout draws the same masks); the losses
and every parameter after every step agree to 1e-5 relative, 1e-6 absolute (harness.RTOL, ATOL)."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from dabench.cli import main
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench_plugins.algorithms.mmd import mk_mmd, mmd_weights
from reference import dan as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, run_side_by_side, twin

STEPS = 20
BATCH = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def build(regime: str = "digits", steps: int = STEPS, **hp):
    cls = algorithms.get("dan")
    torch.manual_seed(0)
    backbone = backbones.get("digit-cnn")(None, image_size=28)
    return cls(backbone, 10, defaults(cls.space("classification", regime)) | hp, steps)


def transcription(algo, regime: str, **kw) -> ref.TLlibDAN:
    lr = {"digits": 0.01, "imagenet": 0.003}[regime]  # dan.sh's digit lines; dan.py's default
    return ref.TLlibDAN(twin(algo.featurizer), twin(algo.bottleneck), twin(algo.head), lr=lr,
                        scratch=regime == "digits", **kw)


def parameters(algo):
    return [*algo.featurizer.parameters(), *algo.bottleneck.parameters(), *algo.head.parameters()]


@pytest.mark.parametrize("regime, estimator", [("digits", "linear"), ("imagenet", "linear"), ("digits", "quadratic")])
def test_dan_matches_tllib_step_for_step(regime, estimator):
    algo = build(regime, estimator=estimator)
    tr = transcription(algo, regime, non_linear=estimator == "quadratic")
    algo.train()

    def reference_step(i, b):
        out = tr.step(b.src_x, b.src_y, b.tgt_x)
        assert_params_match(parameters(algo), tr.model.parameters(), what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, digit_batches(STEPS, batch=BATCH, seed=3))
    assert_losses_match(logs, {"cls": "cls_loss"})
    # TLlib's value adds 2 / (n - 1), a constant without gradient that dabench leaves out (mk_mmd)
    shifted = [({"mmd": a["mmd"] + 2 / (BATCH - 1)}, b) for a, b in logs]
    assert_losses_match(shifted, {"mmd": "transfer_loss"})
    assert max(abs(a["mmd"]) for a, _ in logs) > 1e-3  # the term is there to compare


@pytest.mark.parametrize("regime, backbone_mult", [("digits", 1.0), ("imagenet", 0.1)])
def test_dan_learning_rates_match_tllib_over_a_whole_run(regime, backbone_mult):
    """TLlib's digit runs are 20 epochs of 2,500 iterations; its schedule is a function of the
    iteration alone. Every parameter group's rate at iterations across such a run."""
    algo = build(regime, steps=50_000)
    tr = transcription(algo, regime)
    for i in (0, 1, 19, 499, 2500, 10_000, 25_000, 49_999):
        algo.schedule(i)
        ours = [g["lr"] for g in algo.optims["model"].param_groups]
        assert ours == pytest.approx(tr.lrs_at(i), rel=1e-12)
        assert ours[0] == pytest.approx(backbone_mult * ours[1], rel=1e-12)
    lr = {"digits": 0.01, "imagenet": 0.003}[regime]
    assert algo.schedule(49_999) == pytest.approx(lr * (1 + 0.0003 * 49_999) ** -0.75)  # by hand: about lr / 8
    # lrs_at is what LambdaLR sets: after 3 scheduler steps the optimiser holds lrs_at(3)
    for _ in range(3):
        tr.optimizer.step()
        tr.lr_scheduler.step()
    assert [g["lr"] for g in tr.optimizer.param_groups] == pytest.approx(tr.lrs_at(3), rel=1e-12)


def test_dan_defaults_are_tllibs():
    digits, imagenet = (defaults(algorithms.get("dan").space("classification", r)) for r in ("digits", "imagenet"))
    assert (digits["lr"], digits["batch_size"], digits["backbone_lr_mult"]) == (0.01, 128, 1.0)
    assert (imagenet["lr"], imagenet["batch_size"], imagenet["backbone_lr_mult"]) == (0.003, 32, 0.1)
    for hp in (digits, imagenet):
        assert (hp["weight_decay"], hp["lr_gamma"], hp["lr_decay"], hp["lambda_mmd"]) == (5e-4, 3e-4, 0.75, 1.0)
        assert (hp["estimator"], hp["bottleneck_dim"], hp["ramp"]) == ("linear", 256, "none")
    algo = build()
    linear, relu, drop = algo.bottleneck
    assert (linear.in_features, linear.out_features, type(relu), drop.p) == (100, 256, nn.ReLU, 0.5)
    assert (algo.head.in_features, algo.head.out_features) == (256, 10)
    optim = algo.optims["model"]
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in optim.param_groups)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_mmd_weights_are_tllibs_index_matrix(n):
    for estimator in ("linear", "quadratic"):
        assert torch.equal(mmd_weights(n, estimator), ref.index_matrix(n, estimator == "linear"))


def test_mk_mmd_is_tllibs_less_its_constant():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g) + 1
    for linear in (True, False):
        theirs = ref.MKMMD([ref.GaussianKernel(2 ** k) for k in range(-3, 2)], linear=linear)(s, t)
        ours = mk_mmd(s, t, "linear" if linear else "quadratic")
        assert ours.item() + 2 / 5 == pytest.approx(theirs.item(), rel=1e-6)


def test_an_unknown_variant_exits_2_listing_the_values(tmp_path):
    r = CliRunner().invoke(main, ["run", "--algo", "dan", "--src", "syndigits:50", "--tgt", "uci-digits",
                                  "-H", "estimator=cubic", "--steps", "1", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "linear, quadratic" in r.output and "Traceback" not in r.output
