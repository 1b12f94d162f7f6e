"""DANN: the gradient reversal layer really reverses, and lambda follows the paper's schedule."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dabench.data import Batch
from dabench.hparams import defaults
from dabench_plugins.algorithms.dann import DANN, domain_loss, grl_lambda, reverse_grad
from dabench_plugins.backbones.digit_cnn import digit_cnn


def test_gradient_reversal_is_identity_forward_and_negated_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_grad(x, 0.5)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


def test_lambda_schedule_matches_paper():
    assert grl_lambda(0.0) == 0.0
    assert math.isclose(grl_lambda(0.5), 2 / (1 + math.exp(-5)) - 1)  # 0.98661
    assert math.isclose(grl_lambda(1.0), 0.9999092, rel_tol=1e-6)


def test_lr_is_annealed_as_in_paper():
    algo = DANN(digit_cnn(image_size=28), 10, defaults(DANN.hparams), steps=101)
    algo.anneal(100)  # p = 1: 0.01 / (1 + 10) ** 0.75
    assert math.isclose(algo.optims["model"].param_groups[0]["lr"], 0.01 / 11 ** 0.75)


def toy_batch(n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(3)
    y = torch.arange(n) % 10
    src = torch.randn(n, 3, 28, 28, generator=g) + y.view(-1, 1, 1, 1) * 0.2
    return Batch(src, y, torch.randn(n, 3, 28, 28, generator=g) * 1.5 + 0.5)


def hand_gradients(algo: DANN, batch: Batch, conv_head: bool) -> tuple[dict, dict]:
    """Gradients of the label loss and of the plain (unreversed) domain loss, by autograd on a copy."""
    low = algo.featurizer.lower(torch.cat([batch.src_x, batch.tgt_x]))
    feats = algo.featurizer.upper(low)
    n = len(batch.src_x)
    cls = F.cross_entropy(algo.classifier(feats[:n]), batch.src_y)
    logits = algo.discriminator(low.flatten(1) if conv_head else feats).squeeze(1)
    bce = F.binary_cross_entropy_with_logits  # eq. 18: mean over source (domain 1) + mean over target (domain 0)
    dom = bce(logits[:n], torch.ones(n)) + bce(logits[n:], torch.zeros(len(batch.tgt_x)))
    names, params = zip(*algo.named_parameters())

    def grads(loss):
        return {k: (g if g is not None else torch.zeros_like(p))
                for k, p, g in zip(names, params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))}

    return grads(cls), grads(dom)


@pytest.mark.parametrize("conv_head", [True, False], ids=["digit-cnn: head on conv features", "feature-vector head"])
def test_update_gradient_is_label_loss_minus_lambda_times_domain_loss(conv_head):
    """The whole mechanism in one step: the discriminator descends the domain loss, the layers below
    the GRL ascend it with weight lambda_p, and the label predictor's own layers never see it."""
    torch.manual_seed(0)
    backbone = digit_cnn(image_size=28)
    if not conv_head:
        backbone.lower_features = None  # as a timm backbone: the feature vector is the last layer
    algo = DANN(backbone, 10, defaults(DANN.hparams), steps=11)
    assert algo.discriminator[0].in_features == (768 if conv_head else 100)
    g_cls, g_dom = hand_gradients(copy.deepcopy(algo), batch := toy_batch(), conv_head)
    step = 3
    lam = grl_lambda(step / 10)
    losses = algo.update(batch, step)
    assert losses["lambda"] == pytest.approx(lam) and 0.5 < lam < 1
    reversed_below = ("featurizer.lower.",) if conv_head else ("featurizer.",)
    for name, p in algo.named_parameters():
        if name.startswith("discriminator."):
            expected = g_dom[name]
        elif name.startswith(reversed_below):
            expected = g_cls[name] - lam * g_dom[name]
            assert g_dom[name].abs().sum() > 0, name  # the domain loss really reaches these layers
        else:
            expected = g_cls[name]
            assert not g_dom[name].any(), name  # no reversed gradient in the label predictor's own layers
        assert torch.allclose(p.grad, expected, atol=1e-6, rtol=1e-4), name


def test_domain_head_can_be_moved_to_the_feature_vector():
    algo = DANN(digit_cnn(image_size=28), 10, defaults(DANN.hparams) | {"domain_head": "features"}, steps=10)
    assert algo.discriminator[0].in_features == 100


def test_update_trains_classifier_and_discriminator():
    torch.manual_seed(0)
    hp = defaults(DANN.hparams)
    algo = DANN(digit_cnn(image_size=28), 10, hp, steps=50)
    y = torch.arange(16) % 10
    src = torch.randn(16, 3, 28, 28) + y.view(-1, 1, 1, 1) * 0.2
    first = algo.update(Batch(src, y, torch.randn(16, 3, 28, 28)), 0)
    for step in range(1, 30):
        last = algo.update(Batch(src, y, torch.randn(16, 3, 28, 28)), step)
    assert last["cls"] < first["cls"]
    assert first["lambda"] == 0.0 and 0 < last["lambda"] < 1


def test_domain_term_is_the_sum_of_the_per_domain_means():
    """Eq. 18 by hand: 4 source logits at 0 cost ln 2 on average, 2 target logits at ln 3 cost
    ln(1 + 3) = ln 4 each (label 0: -log(1 - sigmoid(ln 3)) = log 4); total ln 2 + ln 4 = ln 8."""
    src, tgt = torch.zeros(4), torch.full((2,), math.log(3.0))
    assert math.isclose(domain_loss(src, tgt).item(), math.log(8.0), rel_tol=1e-6)
    assert math.isclose(domain_loss(torch.zeros(64), torch.zeros(8)).item(), 2 * math.log(2), rel_tol=1e-6)
