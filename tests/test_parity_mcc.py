"""MCC against transcriptions of its authors' ImageNet iteration and TLlib's digit iteration
(tests/reference/mcc.py): the same weights, batches and random state; losses and every parameter
after every step agree to 1e-5 relative."""
from __future__ import annotations

import pytest
import torch

from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from reference import mcc as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, twin


def build(regime: str, steps: int = 100, **hp):
    cls = algorithms.get("mcc")
    torch.manual_seed(0)
    backbone = backbones.get("digit-cnn")(None, image_size=28)
    return cls(backbone, 10, defaults(cls.space("classification", regime)) | hp, steps)


@pytest.mark.parametrize("regime", ["digits", "imagenet"])
def test_mcc_matches_its_authors_iteration_step_for_step(regime):
    algo = build(regime)
    base, head = twin(algo.featurizer), twin(algo.classifier)
    tr = ref.TLlibDigitTrainer(base, head, 10) if regime == "digits" else ref.AuthorsImageTrainer(base, head, 10)
    logs = []
    for i, b in enumerate(digit_batches(25, batch=16, seed=2)):
        logs.append((algo.update(b, i), tr.step(i, b.src_x, b.src_y, b.tgt_x)))
        assert_params_match(list(algo.featurizer.parameters()) + list(algo.classifier.parameters()),
                            list(base.parameters()) + list(head.parameters()), what=f"parameters after step {i}")
    assert_losses_match(logs, {"cls": "cls", "mcc": "mcc"})


@pytest.mark.filterwarnings("ignore:Detected call of")  # the schedule alone is stepped, without training
def test_mcc_rates_match_the_references_across_a_run():
    """The inv rate at iterations across a 10,000-step run, in both settings (every group)."""
    for regime in ("digits", "imagenet"):
        algo = build(regime, steps=10_000)
        base, head = twin(algo.featurizer), twin(algo.classifier)
        tr = ref.TLlibDigitTrainer(base, head, 10) if regime == "digits" else ref.AuthorsImageTrainer(base, head, 10)
        done = 0
        for i in (0, 1, 500, 2000, 9999):
            algo.inv(i)
            if regime == "digits":
                for _ in range(i - done):
                    tr.lr_scheduler.step()
                done = i
            else:
                tr.inv_lr_scheduler(i)
            ours = [g["lr"] for g in algo.optims["model"].param_groups]
            theirs = [g["lr"] for g in tr.optimizer.param_groups]
            assert ours == pytest.approx(theirs, rel=1e-9), (regime, i)
            assert [g["weight_decay"] for g in algo.optims["model"].param_groups] == \
                pytest.approx([g["weight_decay"] for g in tr.optimizer.param_groups])


def test_mcc_regimes_give_the_authors_settings():
    digits, imagenet = (defaults(algorithms.get("mcc").space("classification", r)) for r in ("digits", "imagenet"))
    assert (digits["lr"], digits["batch_size"], digits["forward"], digits["new_lr_mult"]) == (0.01, 128, "joint", 1.0)
    assert (imagenet["lr"], imagenet["batch_size"], imagenet["forward"], imagenet["new_lr_mult"]) == (0.001, 28, "separate", 10.0)
    assert digits["temperature"] == imagenet["temperature"] == 2.5 and digits["weight_decay"] == 1e-3


@pytest.mark.parametrize("ramp", ["none", "dann"])
def test_an_mcc_update_descends_the_class_confusion(ramp):
    """One step: the weights move by -lr x (1 + momentum) x mu x the confusion's gradient
    (Nesterov's first step) more than the same step without the term; the test fails when the
    term is removed or its sign flipped. The confusion's gradient on a fresh network's
    near-uniform predictions is about 1e-8, so mu is 1,000 and lr 1 to see it in fp32."""
    step = 50
    b = digit_batches(1, batch=16, seed=3)[0]
    with_term = build("digits", ramp=ramp, lambda_mcc=1000.0, lr=1.0)
    without = build("digits", ramp=ramp, lambda_mcc=0.0, lr=1.0)
    start = build("digits")
    logits = start.predict(torch.cat([b.src_x, b.tgt_x]))
    mu = 1000.0 * (1.0 if ramp == "none" else 2 / (1 + 2.718281828459045 ** (-10 * 50 / 99)) - 1)  # DANN's lambda at 50/99
    grads = torch.autograd.grad(mu * ref.mcc(logits[16:], 2.5, 10), list(start.parameters()))
    with_term.update(b, step)
    without.update(b, step)
    lr = with_term.optims["model"].param_groups[0]["lr"]
    assert lr == pytest.approx(1.0 * (1 + 0.001 * step) ** -0.75)
    moved = [(p - q, -lr * 1.9 * g) for p, q, g in zip(with_term.parameters(), without.parameters(), grads)]
    scale = max(e.abs().max().item() for _, e in moved)
    assert scale > 1e-6
    for got, expected in moved:
        assert torch.allclose(got, expected, atol=1e-3 * scale, rtol=1e-3)
