"""Translators: FDA's spectrum swap by hand, CycleGAN's losses, steps, schedule, pool and resume."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dabench.hparams import defaults
from dabench.registry import translators
from dabench_plugins.translators.cyclegan import CycleGAN, ResidualBlock, generator, patch_discriminator
from dabench_plugins.translators.fda import FDA, low_frequency_window
from dabench_plugins.translators.none import NoTranslation


def test_built_in_translators_are_found_by_name():
    assert translators.get("none") is NoTranslation
    assert translators.get("fda") is FDA
    assert translators.get("cyclegan") is CycleGAN
    assert [translators.get(n).trainable for n in ("none", "fda", "cyclegan")] == [False, False, True]


def test_no_translation_returns_the_source():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert NoTranslation({}, 0).translate(x, -x) is x


# FDA ----------------------------------------------------------------------------------------

def fda(beta: float) -> FDA:
    return FDA({"beta": beta}, 0)


def mid_range(n: int, h: int, w: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Images in [-0.3, 0.3]: far enough from the ends that the clamp never acts."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g, dtype=dtype) - 0.5) * 0.6


def test_fda_window_is_the_four_corners_of_the_unshifted_spectrum():
    w = low_frequency_window(8, 12, 2)
    assert w.sum() == 16
    assert w[[0, 1, 6, 7]][:, [0, 1, 10, 11]].all()
    assert not w[2:6].any() and not w[:, 2:10].any()


def test_fda_with_an_empty_window_is_the_identity_and_says_so():
    x, t = mid_range(2, 16, 16, 0), mid_range(2, 16, 16, 1)
    with pytest.warns(UserWarning, match=r"empty low-frequency window.*fda_beta=0.0625"):
        assert torch.equal(fda(0.01).translate(x, t), x)  # b = floor(16 * 0.01) = 0


def test_fda_of_an_image_with_itself_is_the_image():
    x = mid_range(2, 16, 24, 0)
    torch.testing.assert_close(fda(0.09).translate(x, x), x)


def test_fda_gives_the_source_the_target_mean_colour():
    x, t = mid_range(2, 8, 12, 0), mid_range(2, 8, 12, 1) + 0.2
    out = fda(0.25).translate(x, t)
    torch.testing.assert_close(out.mean((2, 3)), t.mean((2, 3)))  # DC lies in the window


def test_fda_swaps_low_frequency_amplitude_and_keeps_source_phase():
    h, w, b = 8, 12, 2  # beta 0.25: b = floor(8 * 0.25)
    x, t = mid_range(2, h, w, 0), mid_range(2, h, w, 1)
    out = fda(0.25).translate(x, t)
    assert out.abs().max() < 0.99  # the clamp did not act
    fx, ft, fo = (torch.fft.fft2((v + 1) * 127.5) for v in (x, t, out))
    window = low_frequency_window(h, w, b)
    # The real part keeps a frequency's value only where its mirror -k is on the same side of
    # the window (the corners are not symmetric about DC: row 6 mirrors row 2, outside).
    mirror = window[(-torch.arange(h)) % h][:, (-torch.arange(w)) % w]
    inside, outside = window & mirror, ~window & ~mirror
    assert inside.sum() == 9 and outside.sum() == h * w - 16 - 7
    torch.testing.assert_close(fo.abs()[..., inside], ft.abs()[..., inside])
    torch.testing.assert_close(fo.abs()[..., outside], fx.abs()[..., outside])
    same = inside | outside
    torch.testing.assert_close(fo[..., same] / fo[..., same].abs(), fx[..., same] / fx[..., same].abs())


def test_fda_clamps_to_valid_images_and_keeps_shape_and_dtype():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 3, 16, 20, generator=g) * 2 - 1).to(torch.bfloat16)
    t = (0.9 + 0.1 * torch.rand(3, 3, 16, 20, generator=g)).to(torch.bfloat16)  # near white
    out = fda(0.09).translate(x, t)
    assert out.shape == x.shape and out.dtype == torch.bfloat16
    assert out.min() >= -1 and out.max() == 1  # the swap overshoots white; the clamp holds it


# CycleGAN -----------------------------------------------------------------------------------

def tiny_cyclegan(steps: int = 10, seed: int = 0, **hp) -> CycleGAN:
    torch.manual_seed(seed)
    return CycleGAN({**defaults(CycleGAN.hparams), "ngf": 8, "ndf": 8, "blocks": 1, "load_size": 0, "crop_size": 0,
                     **hp}, steps)


def images(n: int = 2, h: int = 32, w: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1, torch.rand(n, 3, h, w, generator=g) - 0.5


def params(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_cyclegan_networks_are_the_reference_ones():
    g = generator(8, 2)
    assert sum(isinstance(m, ResidualBlock) for m in g) == 2
    assert [m.out_channels for m in g if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))] == [8, 16, 32, 16, 8, 3]
    assert not any(m.affine for m in g.modules() if isinstance(m, nn.InstanceNorm2d))
    d = patch_discriminator(8)
    convs = [m for m in d if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1] and all(c.kernel_size == (4, 4) for c in convs)
    assert not isinstance(d[1], nn.InstanceNorm2d)  # no norm after the first conv
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # the 70x70 PatchGAN's map at 256 px
    weights = tiny_cyclegan().G[1]
    assert abs(weights.weight.std().item() - 0.02) < 0.002 and not weights.bias.any()


def test_cyclegan_trains_on_random_crops_of_each_domain_loaded_at_its_own_aspect():
    """The reference's preprocessing: shorter side to load_size, then a random crop_size square."""
    model = tiny_cyclegan(load_size=40, crop_size=32)
    seen = []
    model.G.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    src = torch.rand(2, 3, 48, 96) * 2 - 1  # 2:1 -> 40x80 -> 32x32 crops
    tgt = torch.rand(2, 3, 64, 48) * 2 - 1  # 3:4 -> 53x40 -> 32x32 crops
    model.update(src, tgt, 0)
    assert seen and all(shape == (2, 3, 32, 32) for shape in seen)
    assert model.training_view(src[:1]).shape == (1, 3, 32, 32)
    crops = {tuple(model.training_view(torch.arange(40 * 80.0).view(1, 1, 40, 80).expand(1, 3, -1, -1))[0, 0, 0, :1].tolist())
             for _ in range(20)}
    assert len(crops) > 1  # the window moves from draw to draw
    out = model.translate(src, tgt)
    assert out.shape == src.shape  # translation runs on whole images


def test_cyclegan_crop_larger_than_the_images_is_a_clear_error():
    from dabench.errors import DabenchError

    with pytest.raises(DabenchError, match="crop_size=64 is larger than the images"):
        tiny_cyclegan(load_size=0, crop_size=64).update(*images(1, 32, 48), 0)


def test_cover_scales_at_the_images_own_aspect_then_centre_crops():
    from dabench.translator import cover

    x = torch.arange(32.0).view(1, 1, 4, 8)
    assert torch.equal(cover(x, (4, 6)), x[..., 1:7])  # no scaling needed: the middle 6 columns
    small = torch.arange(8.0).view(1, 1, 2, 4)
    assert cover(small, (4, 6)).shape == (1, 1, 4, 6)  # scaled 2x to 4x8, never stretched, then cropped
    assert torch.equal(cover(x, (4, 8)), x)


def test_cyclegan_translates_to_the_source_shape_in_range():
    model = tiny_cyclegan()
    x, t = images(2, 24, 32)
    out = model.translate(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.abs().max() <= 1
    assert model.G.training  # translate leaves the mode as it found it


def test_cyclegan_refuses_images_it_cannot_translate():
    from dabench.errors import DabenchError

    with pytest.raises(DabenchError, match="divisible by 4"):
        tiny_cyclegan().translate(torch.zeros(1, 3, 30, 32), torch.zeros(1, 3, 30, 32))


def test_cycle_and_identity_losses_vanish_for_identity_generators():
    model = tiny_cyclegan()
    model.G, model.F = nn.Identity(), nn.Identity()
    x, t = images()
    losses, fake_src, fake_tgt = model.generator_losses(x, t)
    assert losses["cycle"].item() == 0 and losses["identity"].item() == 0
    assert torch.equal(fake_tgt, x) and torch.equal(fake_src, t)


class Shift(nn.Module):
    def __init__(self, by: float):
        super().__init__()
        self.by = by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.by


def test_cyclegan_losses_are_the_weighted_l1_terms():
    model = tiny_cyclegan(cycle_weight=2.0, identity_weight=0.5)
    model.G, model.F = nn.Identity(), Shift(0.25)  # |F(G(s)) - s| = |G(F(t)) - t| = |F(s) - s| = 0.25
    x, t = images()
    losses, _, _ = model.generator_losses(x, t)
    assert losses["cycle"].item() == pytest.approx(2.0 * (0.25 + 0.25))
    assert losses["identity"].item() == pytest.approx(2.0 * 0.5 * (0 + 0.25))


def test_generator_step_freezes_the_discriminators_and_discriminator_step_the_generators():
    model = tiny_cyclegan()
    x, t = images()
    discriminators, generators = (model.D_tgt, model.D_src), (model.G, model.F)
    d_before, g_before = params(*discriminators), params(*generators)
    _, fake_src, fake_tgt = model.generator_step(x, t)
    assert all(p.grad is None and p.requires_grad for d in discriminators for p in d.parameters())  # unfrozen again
    assert same(params(*discriminators), d_before)
    g_after = params(*generators)
    assert not same(g_after, g_before)
    model.discriminator_step(x, t, fake_src, fake_tgt)
    assert same(params(*generators), g_after)
    assert not same(params(*discriminators), d_before)


def test_cyclegan_update_trains_both_generators_and_reports_finite_losses():
    model = tiny_cyclegan()
    x, t = images()
    g_before, f_before = params(model.G), params(model.F)
    for step in range(3):
        losses = model.update(x, t, step)
    assert set(losses) == {"g_gan", "cycle", "identity", "d"}
    assert all(isinstance(v, float) and v == v and abs(v) < 1e3 for v in losses.values())
    assert not same(params(model.G), g_before) and not same(params(model.F), f_before)


def test_learning_rate_is_constant_for_half_the_steps_then_falls_linearly_to_zero():
    model = tiny_cyclegan(steps=10, lr=1e-3)
    assert [model.lr_at(s) for s in (0, 3, 5)] == [1e-3] * 3
    assert [model.lr_at(s) for s in (6, 8, 9, 10)] == pytest.approx([8e-4, 4e-4, 2e-4, 0.0])
    model.update(*images(), step=8)
    assert all(g["lr"] == pytest.approx(4e-4) for o in model.optims.values() for g in o.param_groups)


def test_pool_returns_new_images_until_full_then_swaps_with_stored_ones():
    model = tiny_cyclegan(pool_size=4)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(model.pool_query("fake_tgt", a), a)
    assert torch.equal(model.pool_query("fake_tgt", b), b)
    stored = torch.stack(model.pools["fake_tgt"])
    assert torch.equal(stored, torch.cat([a, b]))
    torch.manual_seed(0)
    for _ in range(5):
        c = torch.randn(2, 3, 4, 4)
        before = torch.stack(model.pools["fake_tgt"])
        out = model.pool_query("fake_tgt", c)
        for o, new in zip(out, c):
            # either the new image, or a stored one that the new image replaced in the pool
            assert torch.equal(o, new) or any(torch.equal(o, s) for s in before)
        assert len(model.pools["fake_tgt"]) == 4
    assert not torch.equal(torch.stack(model.pools["fake_tgt"]), stored)  # some swaps happened
    assert model.pools["fake_src"] == []


def test_pool_size_zero_shows_only_the_newest_images():
    model = tiny_cyclegan(pool_size=0)
    a = torch.randn(2, 3, 4, 4)
    assert torch.equal(model.pool_query("fake_src", a), a) and model.pools["fake_src"] == []


def resume(checkpoint: dict, drop_pool: bool = False) -> CycleGAN:
    """A fresh model (other weights) loaded from a checkpoint, as the trainer resumes."""
    checkpoint = copy.deepcopy(checkpoint)
    model = tiny_cyclegan(steps=10, seed=7, pool_size=2)
    if drop_pool:
        del checkpoint["model"]["_extra_state"]
    model.load_state_dict(checkpoint["model"], strict=not drop_pool)
    for k, o in model.optims.items():
        o.load_state_dict(checkpoint["optims"][k])
    return model


def test_state_dict_carries_the_pool_so_resume_is_exact():
    trained = tiny_cyclegan(steps=10, pool_size=2)
    x, t = images()
    for step in range(2):
        trained.update(x, t, step)  # the pools fill after the first step; later ones swap at random
    checkpoint = copy.deepcopy({"model": trained.state_dict(),
                                "optims": {k: o.state_dict() for k, o in trained.optims.items()}})
    assert [len(p) for p in checkpoint["model"]["_extra_state"].values()] == [2, 2]
    resumed, without_pool = resume(checkpoint), resume(checkpoint, drop_pool=True)
    rng = torch.get_rng_state()
    runs = []
    for model in (trained, resumed, without_pool):
        torch.set_rng_state(rng)
        runs.append([model.update(x, t, step) for step in (2, 3)])
    assert runs[1] == runs[0]
    assert [r["d"] for r in runs[2]] != [r["d"] for r in runs[0]]  # the pool matters to the result
