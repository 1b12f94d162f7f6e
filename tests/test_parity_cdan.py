"""CDAN and CDAN+E against a transcription of the authors' digit training (tests/reference/cdan.py):
the same weights, batches and random state; the losses, the reversal coefficient and every
parameter after every step agree to 1e-5 relative."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from reference import cdan as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, twin

NUM_ITER = 3  # iterations per epoch: a run of 30 steps is the scripts' 10 epochs of 3 iterations


def build(steps: int, regime: str = "digits", **hp):
    cls = algorithms.get("cdan")
    torch.manual_seed(0)
    backbone = backbones.get("digit-cnn")(None, image_size=28)
    return cls(backbone, 10, defaults(cls.space("classification", regime)) | hp, steps)


def transcription(algo, method: str, bsp: bool = False) -> ref.DigitTrainer:
    features = nn.Sequential(twin(algo.featurizer), twin(algo.classifier[:-1]))
    return ref.DigitTrainer(features, twin(algo.classifier[-1]), twin(algo.discriminator), method, bsp=bsp)


@pytest.mark.parametrize("method", ["CDAN", "CDAN-E", "CDAN+BSP"])
def test_cdan_matches_the_authors_digit_training_step_for_step(method):
    """CDAN+BSP: -H bsp=true, the BSP authors' 1e-4 x sigma on the features of the multilinear map
    (tests/reference/bsp.py), with the adversarial term."""
    steps = 10 * NUM_ITER
    bsp = method == "CDAN+BSP"
    algo = build(steps, entropy_conditioning=method == "CDAN-E", bsp=bsp)
    tr = transcription(algo, "CDAN" if bsp else method, bsp)
    logs = []
    for i, batch in enumerate(digit_batches(steps, batch=16, seed=1)):
        torch.manual_seed(100 + i)  # the discriminator's dropout draws the same masks on both sides
        ours = algo.update(batch, i)
        torch.manual_seed(100 + i)
        theirs = tr.step(i // NUM_ITER + 1, i % NUM_ITER, NUM_ITER, batch.src_x, batch.src_y, batch.tgt_x)
        logs.append((ours, theirs))
        assert_params_match(
            list(algo.featurizer.parameters()) + list(algo.classifier.parameters()) + list(algo.discriminator.parameters()),
            list(tr.features.parameters()) + list(tr.fc.parameters()) + list(tr.ad_net.parameters()),
            what=f"parameters after step {i}")
    assert_losses_match(logs, {"cls": "cls"})
    adversarial = [(a, b) for a, b in logs if "dom" in b]
    assert len(adversarial) == steps - NUM_ITER  # the first epoch trains the classifier alone
    assert all("dom" not in a for a, b in logs if "dom" not in b)
    assert_losses_match(adversarial, {"dom": "dom", "lambda": "coeff"} | ({"bsp": "bsp"} if bsp else {}))


def test_cdan_schedules_match_the_authors_over_a_whole_run():
    """10,000 steps (the scripts' 10 epochs of about 1,000 iterations): the network's rate, the
    discriminator's and the reversal coefficient at iterations across the run."""
    steps, num_iter = 10_000, 1_000
    algo = build(steps)
    tr = transcription(algo, "CDAN")
    start = algo.adversarial_start()
    assert start == num_iter
    for i in (0, 999, 1000, 1001, 3999, 4000, 5000, 8999, 9000, 9999):
        epoch = i // num_iter + 1
        tr.start_epoch_if_new(epoch)
        algo.set_rates(i)
        assert algo.optims["model"].param_groups[0]["lr"] == pytest.approx(tr.optimizer.param_groups[0]["lr"], rel=1e-12)
        assert algo.optims["discriminator"].param_groups[0]["lr"] == tr.optimizer_ad.param_groups[0]["lr"] == 0.01
        if epoch > 1:  # the discriminator's counter: one forward per adversarial iteration so far
            assert algo.coefficient(i - start + 1) == pytest.approx(ref.calc_coeff(i - num_iter + 1), rel=1e-12)
    assert algo.coefficient(1000) == pytest.approx(0.4621, abs=1e-4)  # the issue's numbers, by hand
    assert algo.coefficient(2000) == pytest.approx(0.7616, abs=1e-4)


def test_cdan_discriminator_is_the_authors_digit_one():
    algo = build(100)
    linears = [m for m in algo.discriminator if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [500, 500, 1]
    assert linears[0].in_features == 100 * 10  # the head's 100 hidden units (x) 10 classes
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)
    # Xavier normal: std sqrt(2 / (fan_in + fan_out))
    assert float(linears[1].weight.detach().std()) == pytest.approx((2 / 1000) ** 0.5, rel=0.05)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in algo.discriminator) == 2


def test_cdan_regimes_give_the_authors_settings():
    digits = defaults(algorithms.get("cdan").space("classification", "digits"))
    imagenet = defaults(algorithms.get("cdan").space("classification", "imagenet"))
    assert (digits["lr"], digits["schedule"], digits["warmup"], digits["disc_hidden"]) == (0.01, "step", 0.1, 500)
    assert (imagenet["lr"], imagenet["schedule"], imagenet["warmup"], imagenet["disc_hidden"]) == (0.001, "inv", 0.0, 1024)
    assert (digits["batch_size"], imagenet["batch_size"]) == (64, 36)  # train_uspsmnist.py, train_image.py
    algo = build(100, regime="imagenet")
    algo.inv(1000)
    lrs = [g["lr"] for g in algo.optims["model"].param_groups] + [algo.optims["discriminator"].param_groups[0]["lr"]]
    factor = (1 + 0.001 * 1000) ** -0.75
    assert lrs == pytest.approx([0.001 * factor, 0.01 * factor, 0.01 * factor])  # new layers at 10x
    assert algo.optims["model"].defaults["nesterov"]
