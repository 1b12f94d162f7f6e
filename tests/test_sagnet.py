"""SagNet: the randomisations swap the statistics they should, and each of the three steps trains what it should."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from dabench.data import Batch, Labeled
from dabench.hparams import defaults
from dabench_plugins.algorithms.sagnet import SagNet, content_randomize, style_randomize, uniform_cross_entropy
from dabench_plugins.backbones.digit_cnn import digit_cnn
pytestmark = pytest.mark.usefixtures("one_thread")


def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std (unbiased) over H*W."""
    flat = x.flatten(2)
    return flat.mean(-1), flat.std(-1)


def normalised(x: torch.Tensor) -> torch.Tensor:
    mean, std = stats(x)
    return (x - mean[..., None, None]) / std[..., None, None]


@pytest.fixture
def maps() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + torch.arange(4.0).view(4, 1, 1, 1)


PERM = torch.tensor([2, 0, 3, 1])  # no sample is its own partner


def test_style_randomisation_with_alpha_0_takes_the_partners_statistics_and_keeps_the_content(maps):
    out = style_randomize(maps, PERM, torch.zeros(4))
    mean, std = stats(out)
    partner_mean, partner_std = stats(maps[PERM])
    assert torch.allclose(mean, partner_mean, atol=1e-5)
    assert torch.allclose(std, partner_std, rtol=1e-4)
    assert torch.allclose(normalised(out), normalised(maps), atol=1e-4)


def test_style_randomisation_with_alpha_1_is_the_identity(maps):
    assert torch.allclose(style_randomize(maps, PERM, torch.ones(4)), maps, atol=1e-5)


def test_style_randomisation_interpolates_the_variance(maps):
    out = style_randomize(maps, PERM, torch.full((4,), 0.25), eps=0.0)
    var, partner_var = maps.flatten(2).var(-1), maps[PERM].flatten(2).var(-1)
    assert torch.allclose(out.flatten(2).var(-1), 0.25 * var + 0.75 * partner_var, rtol=1e-4)


def test_content_randomisation_gives_the_partners_content_with_own_statistics(maps):
    out = content_randomize(maps, PERM)
    mean, std = stats(out)
    own_mean, own_std = stats(maps)
    assert torch.allclose(mean, own_mean, atol=1e-5)
    assert torch.allclose(std, own_std, rtol=1e-4)
    assert torch.allclose(normalised(out), normalised(maps[PERM]), atol=1e-4)


def test_content_randomisation_detaches_the_partner(maps):
    x = maps.clone().requires_grad_(True)
    (content_randomize(x, PERM)[0] * torch.randn(3, 5, 5)).sum().backward()
    assert x.grad[0].abs().sum() > 0  # own statistics carry a gradient
    assert torch.equal(x.grad[PERM[0]], torch.zeros(3, 5, 5))  # the partner's content does not


def test_a_map_with_one_position_uses_statistics_over_channels():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 1, 1)
    assert torch.allclose(style_randomize(x, PERM, torch.ones(4)), x, atol=1e-5)
    out = content_randomize(x, PERM)
    assert torch.isfinite(out).all()
    flat = out.flatten(1)
    assert torch.allclose(flat.mean(1), x.flatten(1).mean(1), atol=1e-5)


def test_adversarial_loss_is_log_c_for_uniform_predictions():
    assert uniform_cross_entropy(torch.zeros(5, 10)).item() == pytest.approx(math.log(10))
    assert uniform_cross_entropy(torch.full((3, 4), 7.0)).item() == pytest.approx(math.log(4))
    assert uniform_cross_entropy(torch.tensor([[5.0, 0.0, 0.0, 0.0]])).item() > math.log(4)


def make(seed: int = 0, **hp) -> SagNet:
    torch.manual_seed(seed)
    return SagNet(digit_cnn(image_size=28), 4, defaults(SagNet.hparams) | hp, steps=30)


def test_predict_uses_the_content_network_only():
    algo = make()
    x = torch.randn(5, 3, 28, 28)
    before = algo.predict(x)
    assert torch.equal(algo.predict(x), before)  # no randomisation at prediction
    with torch.no_grad():
        for p in algo.style.parameters():
            p.zero_()
    assert torch.equal(algo.predict(x), before)


def test_the_three_optimisers_own_disjoint_parts():
    algo = make()
    owned = {k: {id(p) for g in o.param_groups for p in g["params"]} for k, o in algo.optims.items()}
    assert owned["features"] == {id(p) for p in algo.features.parameters()}
    assert owned["content"] == {id(p) for p in algo.content.parameters()}
    assert owned["style"] == {id(p) for p in algo.style.parameters()}
    assert not owned["features"] & owned["content"] and not owned["content"] & owned["style"]


def toy_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(8) % 4
    src = torch.randn(8, 3, 28, 28, generator=g) + y.view(-1, 1, 1, 1) * 0.5
    tgt_y = torch.arange(4)
    tgt = torch.randn(4, 3, 28, 28, generator=g) + tgt_y.view(-1, 1, 1, 1) * 0.5 + 0.3
    return Batch(src, y, torch.randn(8, 3, 28, 28, generator=g) * 2, Labeled(tgt, tgt_y))


def test_adversarial_step_changes_only_the_feature_extractor():
    algo = make()
    order, after_style_step = [], {}
    for name, optim in algo.optims.items():
        optim.register_step_post_hook(lambda o, args, kw, name=name: order.append(name))
    algo.optims["style"].register_step_post_hook(
        lambda o, args, kw: after_style_step.update({k: v.detach().clone() for k, v in algo.named_parameters()}))
    algo.update(toy_batch(), 0)
    assert order == ["features", "content", "style", "features"]  # step 3 is the last one
    for name, p in algo.named_parameters():
        changed = not torch.equal(p, after_style_step[name])
        assert changed == name.startswith("features."), name


def test_update_lowers_the_content_loss():
    algo = make()
    batch = toy_batch()
    first = algo.update(batch, 0)
    for step in range(1, 30):
        last = algo.update(batch, step)
    assert set(first) == {"cls", "style", "adv"}
    assert last["cls"] < first["cls"]
    assert all(math.isfinite(v) for v in last.values())


def test_adversarial_step_descends_w_adv_times_the_style_networks_uniform_cross_entropy(monkeypatch):
    """Step 3 by hand: f's gradient is w_adv times that of the cross-entropy between the style network's
    prediction on content-randomised features of every labelled image and the uniform distribution
    (unlabelled target images are left out by default, as DomainBed's SagNet does)."""
    from dabench_plugins.algorithms import sagnet

    calls = []
    original = sagnet.content_randomize
    monkeypatch.setattr(sagnet, "content_randomize", lambda x, perm, *a: calls.append(perm) or original(x, perm, *a))
    algo = make(w_adv=0.3)
    after_first_f_step = {}
    algo.optims["features"].register_step_post_hook(
        lambda o, args, kw: after_first_f_step or after_first_f_step.update(copy.deepcopy(algo.features.state_dict())))
    batch = toy_batch()
    algo.update(batch, 0)

    features = copy.deepcopy(algo.features)  # f as step 3 saw it: moved by step 1 only
    features.load_state_dict(after_first_f_step)
    images = torch.cat([batch.src_x, batch.tgt_labeled.x])
    adv = uniform_cross_entropy(algo.style(original(features(images), calls[-1])))
    expected = torch.autograd.grad(0.3 * adv, list(features.parameters()))
    for (name, p), g in zip(algo.features.named_parameters(), expected):
        assert g.abs().sum() > 0, name
        assert torch.allclose(p.grad, g, atol=1e-7, rtol=1e-4), name
