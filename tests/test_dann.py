"""DANN: the gradient reversal layer really reverses, and lambda follows the paper's schedule."""
from __future__ import annotations

import math

import torch

from dabench.data import Batch
from dabench.hparams import defaults
from dabench_plugins.algorithms.dann import DANN, grl_lambda, reverse_grad
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


def test_features_get_the_reversed_domain_gradient():
    """The domain loss pushes the discriminator one way and the features the opposite way."""
    torch.manual_seed(0)
    hp = defaults(DANN.hparams)
    algo = DANN(digit_cnn(image_size=28), 10, hp, steps=10)
    x = torch.randn(4, 3, 28, 28)
    feats = algo.featurizer(x).detach().requires_grad_(True)
    domain = torch.tensor([1.0, 1.0, 0.0, 0.0])

    def domain_loss(f):
        return torch.nn.functional.binary_cross_entropy_with_logits(algo.discriminator(f).squeeze(1), domain)

    (plain,) = torch.autograd.grad(domain_loss(feats), feats)
    (reversed_,) = torch.autograd.grad(domain_loss(reverse_grad(feats, 0.7)), feats)
    assert torch.allclose(reversed_, -0.7 * plain)


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
