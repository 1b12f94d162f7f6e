"""ADVENT: the entropy maps by hand, MinEnt's update descending the target entropy, and AdvEnt's
discriminators reading self-information maps, not softmax maps."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from dabench.hparams import defaults
from dabench_plugins.algorithms.advent import AdvEnt, MinEnt, entropy_loss, self_information
from test_adaptsegnet import (K, batch, first_adam_step_of_the_discriminators, first_sgd_step_of_the_adversarial_term,
                              tiny_segnet)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_self_information_and_entropy_by_hand():
    two = torch.zeros(1, 2, 1, 1)  # p = (1/2, 1/2): -1/2 log2(1/2) / log2(2) = 1/2 per class
    assert self_information(two).flatten().tolist() == pytest.approx([0.5, 0.5])
    assert entropy_loss(torch.zeros(2, 5, 3, 4)).item() == pytest.approx(1.0)  # uniform: normalised entropy 1
    certain = torch.zeros(1, 5, 3, 4)
    certain[:, 2] = 100.0
    assert entropy_loss(certain).item() == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([0.7, 0.2, 0.1])
    logits = p.log().view(1, 3, 1, 1)
    assert entropy_loss(logits).item() == pytest.approx(-(p * p.log2()).sum().item() / math.log2(3), rel=1e-5)


def build(cls, **hp):
    return cls(tiny_segnet(), K, defaults(cls.hparams) | {"lr": 1.0} | hp, steps=100)


def lr_of(algo) -> dict[int, float]:
    return {id(p): g["lr"] for o in algo.optims.values() for g in o.param_groups for p in g["params"]}


def test_minent_descends_the_weighted_target_entropy():
    b, step = batch(), 10
    with_term = build(MinEnt, lambda_ent=10.0, lambda_ent_aux=2.0)  # the paper's 0.001 / 0.0002, x 1e4 to show in fp32
    without = copy.deepcopy(with_term)
    without.hp.update(lambda_ent=0.0, lambda_ent_aux=0.0)
    start = copy.deepcopy(with_term)
    out = start.outputs(b.tgt_x)
    term = 10.0 * entropy_loss(out["main"]) + 2.0 * entropy_loss(out["aux"])
    params = list(start.parameters())
    grads = torch.autograd.grad(term, params, allow_unused=True)
    with_term.update(b, step)
    without.update(b, step)
    lrs = lr_of(with_term)
    moved = [(p - q, -lrs[id(p)] * g) for p, q, g in zip(with_term.parameters(), without.parameters(), grads)
             if g is not None]
    scale = max(e.abs().max().item() for _, e in moved)
    assert scale > 1e-5
    for got, expected in moved:  # first SGD step: the weights differ by exactly -lr x the term's gradient
        assert torch.allclose(got, expected, atol=1e-3 * scale, rtol=1e-3)


def test_advent_discriminators_read_self_information_maps():
    b = batch()
    algo = build(AdvEnt)
    start = copy.deepcopy(algo)
    seen = []
    algo.discriminators["main"].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    algo.update(b, 0)
    expected = self_information(start.outputs(b.tgt_x)["main"])
    assert torch.allclose(seen[0], expected, atol=1e-6)  # the adversarial pass, on the target's main output
    assert not torch.allclose(seen[0].sum(1), torch.ones_like(seen[0].sum(1)))  # a softmax map would sum to 1


def self_information_map(logits):
    """-p log2(p + 1e-30) / log2(C), as ADVENT's ``prob_2_entropy``, by hand."""
    p = torch.softmax(logits, 1)
    return -p * torch.log2(p + 1e-30) / math.log2(logits.shape[1])


def test_advent_segmenter_descends_the_loss_of_passing_target_entropy_maps_for_source():
    first_sgd_step_of_the_adversarial_term(AdvEnt, self_information_map)


def test_advent_discriminators_learn_source_0_and_target_1_on_detached_entropy_maps():
    first_adam_step_of_the_discriminators(AdvEnt, self_information_map)


@pytest.mark.parametrize("name", ["minent", "advent"])
def test_advent_runs_from_the_cli(tmp_path, name):
    from click.testing import CliRunner

    from dabench.cli import main

    r = CliRunner().invoke(main, ["run", "--algo", name, "--src", "streets-sim:10", "--tgt", "streets-real:10", "--steps", "2",
                                  "--backbone", "deeplabv2:resnet18", "--image-size", "32", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output


# --- FDA as a method (plugins/algorithms/fda.py) -------------------------------------------------

from dabench_plugins.algorithms.fda import FDASeg, robust_entropy  # noqa: E402


def test_fda_robust_entropy_by_hand():
    assert robust_entropy(torch.zeros(1, 4, 2, 2), 2.0).item() == pytest.approx((1 + 1e-8) ** 2)  # uniform: H / ln C = 1
    certain = torch.zeros(1, 4, 2, 2)
    certain[:, 0] = 100.0
    assert robust_entropy(certain, 2.0).item() == pytest.approx(0.0, abs=1e-12)
    p = torch.tensor([0.7, 0.2, 0.1])
    h = -(p * p.log()).sum().item() / math.log(3)
    assert robust_entropy(p.log().view(1, 3, 1, 1), 2.0).item() == pytest.approx((h * h + 1e-8) ** 2, rel=1e-5)


def test_fda_translates_the_source_into_the_target_spectrum():
    algo = build(FDASeg, beta=0.1)
    src, tgt = torch.full((1, 3, 32, 32), -0.5), torch.full((1, 3, 16, 16), 0.25)  # constant: all energy at DC
    assert torch.allclose(algo.translate(src, tgt), torch.full_like(src, 0.25), atol=1e-4)  # takes the target's DC
    with pytest.warns(UserWarning, match="empty window"):
        assert torch.equal(build(FDASeg, beta=0.01).translate(src, tgt), src)  # floor(0.01 x 32) = 0


def test_fda_trains_on_translated_source_and_adds_the_entropy_after_half_the_run():
    b = batch()
    algo = build(FDASeg, beta=0.1, lambda_ent=50.0)
    seen = []
    algo.segmenter.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    expected = algo.translate(b.src_x, b.tgt_x)
    early = copy.deepcopy(algo)
    logs = algo.update(b, 50)  # on only where step > 0.5 x 100 (the authors' i > switch2entropy)
    assert torch.equal(seen[0], expected) and not torch.equal(seen[0], b.src_x) and logs["ent_on"] == 0.0
    no_ent = copy.deepcopy(early)
    no_ent.hp["lambda_ent"] = 0.0
    early.update(b, 50)
    no_ent.update(b, 50)
    assert all(torch.equal(p, q) for p, q in zip(early.parameters(), no_ent.parameters()))  # off before the switch
    # after the switch, the step differs from the entropy-free one by exactly -lr x the entropy's gradient
    late, late_free = build(FDASeg, beta=0.1, lambda_ent=50.0), build(FDASeg, beta=0.1, lambda_ent=0.0)
    start = copy.deepcopy(late)
    grads = torch.autograd.grad(50.0 * robust_entropy(start.segmenter(b.tgt_x)[0], 2.0), list(start.parameters()),
                                allow_unused=True)
    assert late.update(b, 51)["ent_on"] == 1.0
    late_free.update(b, 51)
    lrs = lr_of(late)
    moved = [(p - q, -lrs[id(p)] * g) for p, q, g in zip(late.parameters(), late_free.parameters(), grads) if g is not None]
    scale = max(e.abs().max().item() for _, e in moved)
    assert scale > 1e-5
    for got, want in moved:
        assert torch.allclose(got, want, atol=1e-3 * scale, rtol=1e-3)


def test_fda_runs_from_the_cli(tmp_path):
    from click.testing import CliRunner

    from dabench.cli import main

    r = CliRunner().invoke(main, ["run", "--algo", "fda", "--src", "streets-sim:10", "--tgt", "streets-real:10", "--steps",
                                  "2", "--backbone", "deeplabv2:resnet18", "--image-size", "32", "-H", "beta=0.05",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
