"""CCSA and SagNet, step for step against transcriptions of their authors' code (tests/reference/).

Each test trains the plugin and the transcription from the same weights on the same 20 batches of
the digit CNN at 16x16 (CCSA) or 20x20 (SagNet), the global RNG reset before each side's step, and compares every logged loss
and every parameter after every step at the harness's 1e-5 relative (1e-6 absolute) tolerance.

Tolerance: after each comparison the transcription's weights are set to the plugin's (its optimiser
state stays its own). Without that, float32 allows no bound over 20 steps: the transcription
computes Keras' Adadelta as written (g * sqrt(d + eps) / sqrt(a + eps)), torch computes
(sqrt(d + eps) / sqrt(a + eps)) * g; the last bit that differs moves some ReLU input across zero a
few steps later, and from there the weights part by 1e-4 (measured at 28x28 with 16 source and 8
labelled target images: step 17 of 20; with torch's order in the transcription both runs were
bit-identical for all 20 steps).
Re-synchronised, each step starts both sides from the same weights and still checks the update,
the optimiser's state over all the steps, the pairs, the losses and the random draws.
"""
from __future__ import annotations

import math

import pytest
import torch

from dabench.data import Batch, Labeled
from dabench.errors import DabenchError
from dabench.hparams import apply_overrides, defaults
from dabench_plugins.algorithms.ccsa import CCSA
from dabench_plugins.algorithms.sagnet import SagNet
from dabench_plugins.backbones.digit_cnn import digit_cnn
from tests.reference import harness
from tests.reference.ccsa import CCSAReference
from tests.reference.sagnet import SagNetReference

STEPS = 20
CLASSES = 4
SIZE = 16  # the digit CNN's smallest input: CCSA forwards every image once per pair it is in
SAGNET_SIZE = 20  # a 2x2 lower feature map: spatial statistics (at 16 it is 1x1, where DomainBed's var is NaN)


pytestmark = pytest.mark.usefixtures("one_thread")


def build(cls, regime: str = "digits", num_classes: int = CLASSES, size: int = SIZE, **overrides):
    torch.manual_seed(0)
    return cls(digit_cnn(image_size=size), num_classes, defaults(cls.space("classification", regime)) | overrides, STEPS)


# --- CCSA ---------------------------------------------------------------------------------------

def ccsa_batches(labeled: int = 4) -> list[Batch]:
    """The harness's digit batches with ``labeled`` of each batch's target images labelled."""
    g = torch.Generator().manual_seed(7)
    out = []
    for b in harness.digit_batches(STEPS, batch=8, size=SIZE, classes=CLASSES):
        out.append(Batch(b.src_x, b.src_y, b.tgt_x, Labeled(b.tgt_x[:labeled], torch.randint(0, CLASSES, (labeled,), generator=g))))
    return out


def in_lockstep(ours: list[torch.Tensor], theirs: list[torch.Tensor], step: int) -> None:
    """Compare the parameters after a step, then give the transcription the plugin's (see the top)."""
    harness.assert_params_match(ours, theirs, what=f"step {step}: parameters")
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.copy_(a)


def run_ccsa(algo: CCSA, reference: CCSAReference, batches: list[Batch]) -> list[tuple[dict, dict]]:
    def ours(i, b):
        return algo.update(b, i)

    def theirs(i, b):
        logs = reference.step(b.src_x, b.src_y, b.tgt_labeled.x, b.tgt_labeled.y)
        in_lockstep(list(algo.parameters()), reference.weights, i)
        return logs

    return harness.run_side_by_side(ours, theirs, batches)


CCSA_LOSSES = {"cls": "classification_1", "csa": "CSA_1", "total": "loss_1",
               "cls_tgt": "classification_2", "csa_tgt": "CSA_2", "total_tgt": "loss_2"}


@pytest.mark.parametrize("pair_batch", [256, 12])
def test_ccsa_update_matches_the_authors_two_train_on_batch_calls(pair_batch):
    """Pairs (all positives, 3x negatives, shuffled, one batch of at most 256), margin 1, alpha 0.25,
    (source, target) with source labels then (target, source) with target labels, Adadelta with
    Keras' defaults, the authors' Dropout(0.5) -> Dense head."""
    algo = build(CCSA, pair_batch=pair_batch)
    reference = CCSAReference(harness.twin(algo.featurizer), harness.twin(algo.classifier), CLASSES,
                              batch_of_pairs=pair_batch)
    start = [p.detach().clone() for p in algo.parameters()]
    logs = run_ccsa(algo, reference, ccsa_batches())
    harness.assert_losses_match(logs, CCSA_LOSSES)
    assert all(len(a) == 6 for a, _ in logs)  # every batch made pairs
    assert all(not torch.equal(p, q) for p, q in zip(algo.parameters(), start))  # every weight trained


def test_ccsa_regimes_give_the_authors_digit_optimiser_and_sgd_on_imagenet():
    digits, imagenet = CCSA.space("classification", "digits"), CCSA.space("classification", "imagenet")
    assert (digits["optimizer"].default, digits["lr"].default) == ("adadelta", 1.0)
    assert (imagenet["optimizer"].default, imagenet["lr"].default) == ("sgd", 0.01)
    optim = build(CCSA).optims["model"]
    assert isinstance(optim, torch.optim.Adadelta)
    assert {k: optim.defaults[k] for k in ("lr", "rho", "eps", "weight_decay")} == \
        {"lr": 1.0, "rho": 0.95, "eps": 1e-8, "weight_decay": 0.0}
    assert isinstance(build(CCSA, "imagenet").optims["model"], torch.optim.SGD)


@pytest.mark.parametrize("key", ["pairing", "head", "optimizer"])
def test_ccsa_unknown_variant_is_refused_with_the_values(key):
    space = CCSA.space("classification", "digits")
    with pytest.raises(DabenchError, match="must be one of " + ", ".join(space[key].choices)):
        apply_overrides(space, defaults(space), {key: "nonsense"})


def test_ccsa_expected_pairing_variant_still_trains():
    algo = build(CCSA, pairing="expected", head="erm")
    batches = ccsa_batches()
    first = algo.update(batches[0], 0)
    assert set(first) == {"cls", "csa", "total"} and all(math.isfinite(v) for v in first.values())


# --- SagNet -------------------------------------------------------------------------------------

def run_sagnet(algo: SagNet, batches: list[Batch]) -> list[tuple[dict, dict]]:
    reference = SagNetReference(harness.twin(algo.features), harness.twin(algo.content), harness.twin(algo.style),
                                {"lr": algo.hp["lr"], "weight_decay": algo.hp["weight_decay"], "sag_w_adv": algo.hp["w_adv"]})

    def ours(i, b):
        logs = algo.update(b, i)
        return logs | {"adv_weighted": logs["adv"] * algo.hp["w_adv"]}

    def theirs(i, b):
        minibatches = [(b.src_x, b.src_y)] + ([(b.tgt_labeled.x, b.tgt_labeled.y)] if b.tgt_labeled else [])
        logs = reference.update(minibatches)  # DomainBed's SagNet ignores unlabelled images
        in_lockstep(list(algo.parameters()), reference.parameters(), i)
        return logs

    return harness.run_side_by_side(ours, theirs, batches)


SAGNET_LOSSES = {"cls": "loss_c", "style": "loss_s", "adv_weighted": "loss_adv"}


@pytest.mark.parametrize("sag_layer,labeled", [("lower", 0), ("lower", 4), ("features", 0)])
def test_sagnet_update_matches_domainbeds_three_steps(sag_layer, labeled):
    """Three Adam optimisers (f, c, s), the three steps in DomainBed's order, alpha and permutation
    drawn per randomisation, unbiased variance, eps 1e-5, the partner's content detached; on the
    backbone's lower feature map (4-D, per channel over H*W) and on its feature vector (2-D)."""
    algo = build(SagNet, size=SAGNET_SIZE, sag_layer=sag_layer)
    batches = harness.digit_batches(STEPS, batch=8, size=SAGNET_SIZE, classes=4)
    if labeled:
        batches = [Batch(b.src_x, b.src_y, b.tgt_x, Labeled(b.tgt_x[:labeled], torch.arange(labeled) % 4)) for b in batches]
    start = [p.detach().clone() for p in algo.parameters()]
    logs = run_sagnet(algo, batches)
    harness.assert_losses_match(logs, SAGNET_LOSSES)
    assert all(not torch.equal(p, q) for p, q in zip(algo.parameters(), start))  # every weight trained


def test_sagnet_regimes_are_domainbeds_small_and_large_image_defaults():
    digits, imagenet = SagNet.space("classification", "digits"), SagNet.space("classification", "imagenet")
    assert (digits["lr"].default, digits["batch_size"].default) == (1e-3, 64)
    assert (imagenet["lr"].default, imagenet["batch_size"].default) == (5e-5, 32)
    assert digits["weight_decay"].default == imagenet["weight_decay"].default == 0.0
    algo = build(SagNet, "imagenet")
    assert all(isinstance(o, torch.optim.Adam) and o.defaults["lr"] == 5e-5 for o in algo.optims.values())
    assert algo.hp["sag_p"] == 1.0 and algo.hp["target_styles"] is False


@pytest.mark.parametrize("key", ["optimizer", "sag_layer"])
def test_sagnet_unknown_variant_is_refused_with_the_values(key):
    space = SagNet.space("classification", "digits")
    with pytest.raises(DabenchError, match="must be one of " + ", ".join(space[key].choices)):
        apply_overrides(space, defaults(space), {key: "nonsense"})


def test_sagnet_target_styles_variant_randomises_with_the_target_images():
    algo = build(SagNet, size=SAGNET_SIZE, target_styles=True, optimizer="sgd", sag_p=0.5)
    seen = []
    algo.features.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    b = harness.digit_batches(1, batch=8, size=SAGNET_SIZE, classes=4)[0]
    logs = algo.update(b, 0)
    assert seen == [16, 16, 16] and all(math.isfinite(v) for v in logs.values())
    default = build(SagNet, size=SAGNET_SIZE)
    seen.clear()
    default.features.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    default.update(b, 0)
    assert seen == [8, 8, 8]  # DomainBed's SagNet ignores unlabelled images
