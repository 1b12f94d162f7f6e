"""AdaptSegNet: the adversarial losses by hand, which network each loss may move, and a run."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch
from dabench.hparams import defaults
from dabench.nets import SegNet
from dabench_plugins.algorithms.adaptsegnet import AdaptSegNet, AdaptSegNetSingle, discriminator, gan_loss
from dabench_plugins.algorithms.erm import ERM

K = 3


pytestmark = pytest.mark.usefixtures("one_thread")


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        low = torch.relu(self.a(x))
        return low, torch.relu(self.b(low))


def tiny_segnet(seed=0):
    torch.manual_seed(seed)
    return SegNet(_Encoder(), nn.Conv2d(8, K, 1), nn.Conv2d(8, K, 1))


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(1, 3, 64, 96, generator=g), torch.randint(0, K, (1, 64, 96), generator=g),
                 torch.randn(1, 3, 32, 64, generator=g))


def test_gan_loss_by_hand():
    c = torch.full((1, 1, 2, 2), 0.5)
    assert gan_loss(c, 0.0, "vanilla").item() == pytest.approx(math.log(1 + math.exp(0.5)))
    assert gan_loss(c, 1.0, "vanilla").item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    assert gan_loss(c, 1.0, "ls").item() == pytest.approx(0.25)


def test_discriminator_shape_is_the_paper_one():
    d = discriminator(19)
    assert [m.out_channels for m in d if isinstance(m, nn.Conv2d)] == [64, 128, 256, 512, 1]
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in d if isinstance(m, nn.Conv2d))
    assert d(torch.zeros(1, 19, 64, 128)).shape == (1, 1, 2, 4)  # 1/32 of the input


def _constant(algo, c):
    """Make every discriminator output the logit c everywhere."""
    for d in algo.discriminators.values():
        for m in d:
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.constant_(d[-1].bias, c)


def test_reported_losses_match_the_hand_computed_values():
    hp = defaults(AdaptSegNet.hparams)
    algo = AdaptSegNet(tiny_segnet(), K, hp, steps=10)
    _constant(algo, 0.5)
    losses = algo.update(batch(), 0)
    fool = math.log(1 + math.exp(0.5))  # target maps labelled source (0)
    assert losses["adv"] == pytest.approx((hp["lambda_adv"] + hp["lambda_adv_aux"]) * fool, rel=1e-5)
    per_level = (math.log(1 + math.exp(0.5)) + math.log(1 + math.exp(-0.5))) / 2
    assert losses["disc"] == pytest.approx(2 * per_level, rel=1e-5)
    single = AdaptSegNetSingle(tiny_segnet(), K, defaults(AdaptSegNetSingle.hparams), steps=10)
    _constant(single, 0.5)
    assert list(single.discriminators) == ["main"]
    assert single.update(batch(), 0)["adv"] == pytest.approx(hp["lambda_adv"] * fool, rel=1e-5)


def test_discriminator_loss_does_not_move_the_segmenter():
    """With lambda_adv = 0 AdaptSegNet's segmenter step equals ERM's: the discriminator loss is
    computed on detached maps."""
    hp = defaults(AdaptSegNet.hparams) | {"lambda_adv": 0.0, "lambda_adv_aux": 0.0}
    ada, erm = AdaptSegNet(tiny_segnet(), K, hp, 10), ERM(tiny_segnet(), K, defaults(ERM.space("segmentation")), 10)
    ada.update(batch(), 0)
    erm.update(batch(), 0)
    for p, q in zip(ada.segmenter.parameters(), erm.featurizer.parameters()):
        torch.testing.assert_close(p, q)


def test_adversarial_loss_does_not_move_the_discriminators():
    base = AdaptSegNet(tiny_segnet(), K, defaults(AdaptSegNet.hparams), 10)
    strong = copy.deepcopy(base)
    strong.hp |= {"lambda_adv": 10.0, "lambda_adv_aux": 10.0}
    base.update(batch(), 0)
    strong.update(batch(), 0)
    for p, q in zip(base.discriminators.parameters(), strong.discriminators.parameters()):
        torch.testing.assert_close(p, q)
    moved = [not torch.equal(p, q) for p, q in zip(base.segmenter.parameters(), strong.segmenter.parameters())]
    assert any(moved)  # ... while the segmenter does feel it


# What must fail on a broken method: the adversarial term's sign flipped, the labels swapped. The
# expected steps are written by hand (softmax maps, BCE to 0 = source / 1 = target, the authors'
# labels), not with the plugin's helpers, so a change there cannot move both sides at once.

def softmax_map(logits):
    return torch.softmax(logits, 1)


def first_sgd_step_of_the_adversarial_term(cls, disc_map):
    """The first update with lambda_adv (large, to show in fp32) minus the same update without it
    is exactly -lr x the gradient of sum_k lambda_k BCE(D_k(map(target_k)), source = 0): the
    segmenter descends the loss that makes its target maps pass for source to the frozen D."""
    b, weights = batch(), {"main": 10.0, "aux": 2.0}
    hp = defaults(cls.hparams) | {"lr": 1.0, "lambda_adv": weights["main"], "lambda_adv_aux": weights["aux"]}
    with_term = cls(tiny_segnet(), K, hp, steps=100)
    without = copy.deepcopy(with_term)
    without.hp.update(lambda_adv=0.0, lambda_adv_aux=0.0)
    start = copy.deepcopy(with_term)
    out = start.outputs(b.tgt_x)
    term = 0.0
    for k, v in out.items():
        logits = start.discriminators[k](disc_map(v))
        term = term + weights[k] * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    grads = torch.autograd.grad(term, list(start.segmenter.parameters()), allow_unused=True)  # single: no aux
    with_term.update(b, 0)
    without.update(b, 0)
    lr = {id(p): g["lr"] for g in with_term.optims["seg"].param_groups for p in g["params"]}
    moved = [(p - q, -lr[id(p)] * g) for p, q, g in zip(with_term.segmenter.parameters(), without.segmenter.parameters(),
                                                         grads) if g is not None]
    scale = max(e.abs().max().item() for _, e in moved)
    assert scale > 1e-4
    for got, expected in moved:
        assert torch.allclose(got, expected, atol=1e-3 * scale, rtol=1e-3)


def first_adam_step_of_the_discriminators(cls, disc_map):
    """The discriminators' first Adam step is -lr_d g / (|g| + eps), g the gradient of
    sum_k (BCE(D_k(map(source_k)), 0) + BCE(D_k(map(target_k)), 1)) / 2 on the detached maps:
    source 0, target 1 (checked where |g| > 1e-6, i.e. the sign of every gradient that counts)."""
    b = batch()
    algo = cls(tiny_segnet(), K, defaults(cls.hparams) | {"lr_d": 1e-3}, steps=100)
    start = copy.deepcopy(algo)
    src, tgt = start.outputs(b.src_x), start.outputs(b.tgt_x)
    loss = 0.0
    for k, d in start.discriminators.items():
        s, t = d(disc_map(src[k].detach())), d(disc_map(tgt[k].detach()))
        loss = loss + (F.binary_cross_entropy_with_logits(s, torch.zeros_like(s))
                       + F.binary_cross_entropy_with_logits(t, torch.ones_like(t))) / 2
    grads = torch.autograd.grad(loss, list(start.discriminators.parameters()))
    algo.update(b, 0)
    checked = 0
    for p, q, g in zip(algo.discriminators.parameters(), start.discriminators.parameters(), grads):
        big = g.abs() > 1e-6
        checked += int(big.sum())
        assert torch.allclose((p - q)[big], (-1e-3 * g / (g.abs() + 1e-8))[big], atol=1e-6)
    assert checked > 0.5 * sum(p.numel() for p in algo.discriminators.parameters())


@pytest.mark.parametrize("cls", [AdaptSegNet, AdaptSegNetSingle])
def test_segmenter_descends_the_loss_of_passing_target_maps_for_source(cls):
    first_sgd_step_of_the_adversarial_term(cls, softmax_map)


@pytest.mark.parametrize("cls", [AdaptSegNet, AdaptSegNetSingle])
def test_discriminators_learn_source_0_and_target_1_on_detached_maps(cls):
    first_adam_step_of_the_discriminators(cls, softmax_map)


def test_erm_segmentation_never_forwards_target_images():
    erm = ERM(tiny_segnet(), K, defaults(ERM.space("segmentation")), 10)
    seen = []
    erm.featurizer.encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-2:]))
    erm.update(batch(), 0)
    assert seen == [torch.Size([64, 96])]  # the source image only


def test_poly_decay_spans_the_authors_horizon():
    """The authors decay over 250k steps and stop at 150k: by default (poly_span 5/3) a run of
    --steps 150000 is at lr * (1 - 75/250) ** 0.9 at step 75k, not lr * 0.5 ** 0.9 as a decay over
    the run's own length would be; -H poly_horizon=N (a count of steps) takes precedence."""
    hp = defaults(AdaptSegNet.hparams)
    algo = AdaptSegNet(tiny_segnet(), 3, hp, steps=150_000)
    algo.set_rates(75_000)
    seg_group = algo.optims["seg"].param_groups[0]
    assert math.isclose(seg_group["lr"], hp["lr"] * seg_group["lr_mult"] * 0.7 ** 0.9, rel_tol=1e-9)
    assert math.isclose(algo.optims["disc"].param_groups[0]["lr"], hp["lr_d"] * 0.7 ** 0.9, rel_tol=1e-9)
    own = AdaptSegNet(tiny_segnet(), 3, hp | {"poly_horizon": 150_000}, steps=150_000)
    own.set_rates(75_000)
    assert math.isclose(own.optims["seg"].param_groups[0]["lr"], hp["lr"] * seg_group["lr_mult"] * 0.5 ** 0.9, rel_tol=1e-9)


def test_logits_are_upsampled_corner_aligned_for_the_loss():
    """2 -> 4 pixels wide, corner-aligned: samples at 0, 1/3, 2/3, 1 of the way, so a logit row
    (0, 3) becomes (0, 1, 2, 3) (not (0, 0.75, 2.25, 3) as with align_corners=False). With class-1
    logits 0 everywhere, pixel j labelled 0 costs log(1 + exp(-z_j)), z = (0, 1, 2, 3)."""
    from dabench.layers import seg_loss, upsample

    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0] = torch.tensor([[0.0, 3.0], [0.0, 3.0]])
    assert torch.allclose(upsample(logits, (2, 4))[0, 0, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    by_hand = sum(math.log(1 + math.exp(-z)) for z in (0, 1, 2, 3)) / 4
    assert math.isclose(seg_loss(logits, torch.zeros(1, 2, 4, dtype=torch.long)).item(), by_hand, rel_tol=1e-6)
