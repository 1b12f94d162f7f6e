"""The standard UDA baselines: each loss on a hand-checked example, and each update shown to use
its defining term with the right sign (one SGD step moves the weights by exactly -lr x the
term's gradient more than the same step without the term)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dabench.data import Batch
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench_plugins.algorithms.cdan import Multilinear, conditional_domain_loss
from dabench_plugins.algorithms.cdan import entropy as cdan_entropy
from dabench_plugins.algorithms.coral import coral_loss, covariance
from dabench_plugins.algorithms.dann import grl_lambda
from dabench_plugins.algorithms.entmin import entropy
from dabench_plugins.algorithms.mcc import mcc_loss
from dabench_plugins.algorithms.mmd import kernel_matrix, mk_mmd, mmd_weights, pair_kernels
from dabench_plugins.algorithms.rotation import rotate, rotation_loss


# --- the losses, by hand -------------------------------------------------------------------------

def test_coral_loss_by_hand():
    src = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # covariance diag(2, 0) (n - 1 = 1)
    tgt = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # covariance diag(0, 2)
    assert torch.allclose(covariance(src), torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    assert coral_loss(src, tgt).item() == pytest.approx(8 / 16)  # ||diag(2, -2)||^2 = 8, over 4 d^2 = 16
    assert coral_loss(src, src + 5).item() == 0  # a shift of the mean is not a second-order difference


def test_mk_mmd_by_hand():
    src, tgt = torch.zeros(2, 1), torch.ones(2, 1)
    # joint batch 0, 0, 1, 1: 8 of the 16 squared distances are 1, their mean 1/2, so the kernel of
    # alpha = 2^k (k = -3..1) is exp(-1 / (2 x 2^k x 1/2)) = exp(-2^-k) at distance 1, and 1 at distance 0
    cross = sum(math.exp(-(2.0 ** -k)) for k in range(-3, 2))
    # quadratic (TLlib's --non-linear): within-domain pairs i != j (5 per domain), every cross pair (-2 x cross)
    assert mk_mmd(src, tgt, "quadratic").item() == pytest.approx(5 + 5 - 2 * cross, rel=1e-6)
    # linear, n = 2: pairs (0, 1) and (1, 0) in each domain; the two cross pairs coincide, counted once as in TLlib
    assert mk_mmd(src, tgt, "linear").item() == pytest.approx(10 - cross, rel=1e-6)
    x = torch.randn(8, 3)
    assert mk_mmd(x, x, "linear").item() == pytest.approx(0, abs=1e-6)
    assert mk_mmd(x, x + 3, "linear").item() > 0.5


def test_linear_mmd_computes_only_its_pairs_and_keeps_the_matrix_values_and_gradient():
    """The linear estimate reads 4n entries of the kernel matrix; pair_kernels computes just those.
    Features far from the origin (ReLU outputs at 1e3 +- 1) are where a one-pass mean would cancel."""
    torch.manual_seed(0)
    z = (1e3 + torch.randn(16, 5)).requires_grad_()
    w = mmd_weights(8, "linear")
    rows, cols = w.nonzero(as_tuple=True)
    assert len(rows) == 4 * 8
    full = kernel_matrix(z)
    torch.testing.assert_close(pair_kernels(z, rows, cols), full[rows, cols], rtol=1e-5, atol=1e-6)
    g_full, = torch.autograd.grad((full * w).sum(), z)
    g_pairs, = torch.autograd.grad((pair_kernels(z, rows, cols) * w[rows, cols]).sum(), z)
    torch.testing.assert_close(g_pairs, g_full, rtol=1e-4, atol=1e-6)


def test_entropy_and_mcc_by_hand():
    k = 4
    assert entropy(torch.zeros(3, k)).tolist() == pytest.approx([math.log(k)] * 3)
    uniform = torch.zeros(5, k)  # every row 1/K: the confusion's rows normalise to 1/K, K - 1 off the diagonal
    assert mcc_loss(uniform, 2.5).item() == pytest.approx((k - 1) / k)
    certain = 100 * torch.eye(k)  # one confident prediction per class: no confusion
    assert mcc_loss(certain, 1.0).item() == pytest.approx(0, abs=1e-6)


def test_cdan_multilinear_map_and_entropy_weights():
    f, g = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])
    assert Multilinear(2, 2)(f, g).tolist() == [[3.0, 6.0, 4.0, 8.0]]  # g (x) f, flattened
    big = Multilinear(100, 50)  # 5,000 > 4,096: the randomized map
    assert big.randomized and big(torch.randn(3, 100), torch.randn(3, 50)).shape == (3, 4096)
    # the authors' entropy: -sum p log(p + 1e-5); certain: -log(1 + 1e-5); uniform over 2: log(2) - tiny
    h = cdan_entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert h.tolist() == pytest.approx([-math.log(1 + 1e-5), -math.log(0.5 + 1e-5)], abs=1e-6)
    s, t = torch.zeros(2), torch.zeros(2)  # discriminator at chance: ln 2, the mean over the joint batch
    assert conditional_domain_loss(s, t).item() == pytest.approx(math.log(2))
    # CDAN+E: each domain's weights sum to 1, the total over the sum of all weights (2)
    s, t = torch.tensor([0.0, 10.0]), torch.tensor([0.0, 0.0])
    w_s, w_t = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])
    bce_s = [math.log(2), math.log(1 + math.exp(-10))]  # label 1
    expected = (0.25 * bce_s[0] + 0.75 * bce_s[1] + math.log(2)) / 2
    assert conditional_domain_loss(s, t, w_s, w_t).item() == pytest.approx(expected, rel=1e-6)


def test_rotate_turns_each_image_by_its_label():
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(8, 3, 2, 2)
    torch.manual_seed(0)
    turned, k = rotate(img)
    quarter = torch.tensor([[2.0, 4.0], [1.0, 3.0]])  # [[1, 2], [3, 4]] a quarter turn anticlockwise
    for t, r in zip(turned, k.tolist()):
        expected = img[0, 0]
        for _ in range(r):
            expected = torch.tensor([[expected[0, 1], expected[1, 1]], [expected[0, 0], expected[1, 0]]])
        assert torch.equal(t[0], expected)
    assert torch.equal(torch.rot90(img[0], 1, dims=(1, 2))[0], quarter)
    assert len(set(k.tolist())) > 1


def test_the_digit_turns_leave_180_degrees_out():
    """The authors' digit set (DsetSSRotRand.py, digit=True): 1 a transpose, 2 a left-right mirror,
    3 a 270-degree turn; a 6 is never turned into a 9."""
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(16, 3, 2, 2)
    expected = {0: [[1.0, 2.0], [3.0, 4.0]], 1: [[1.0, 3.0], [2.0, 4.0]], 2: [[2.0, 1.0], [4.0, 3.0]],
                3: [[3.0, 1.0], [4.0, 2.0]]}
    torch.manual_seed(0)
    turned, k = rotate(img, "digits")
    assert set(k.tolist()) == {0, 1, 2, 3}
    for t, r in zip(turned, k.tolist()):
        assert t[0].tolist() == expected[r]
        assert not torch.equal(t[0], torch.rot90(img[0, 0], 2))
    assert torch.equal(torch.rot90(img[0, 0], 3), torch.tensor(expected[3]))


# --- the updates use their terms ----------------------------------------------------------------

def build(name: str, **hp):
    """A fresh algorithm on the digit network, at lr 10: one step moves the weights by lr x the
    gradients exactly, and a large rate makes the terms' small gradients show in fp32."""
    torch.manual_seed(0)
    hp = {"lr": 10.0} | hp
    cls = algorithms.get(name)
    backbone = backbones.get("digit-cnn")(None, in_channels=3, image_size=28, pretrained=None, num_classes=10)
    return cls(backbone, 10, defaults(cls.space("classification")) | hp, steps=100)


def batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(8, 3, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g),
                 torch.randn(8, 3, 28, 28, generator=g) * 0.5 + 0.3)


def forward(algo, b: Batch):
    feats = algo.featurizer(torch.cat([b.src_x, b.tgt_x]))
    return feats, algo.classifier[:-1](feats), algo.classifier(feats)


def coral_term(algo, b):
    logits = forward(algo, b)[2]
    return coral_loss(logits[:8], logits[8:])


def entmin_term(algo, b):
    return entropy(forward(algo, b)[2][8:]).mean()


# CORAL's and MCC's gradients are tiny on the near-uniform logits of a fresh network: weighted up
@pytest.mark.parametrize("name, weight, value, term, extra", [
    ("entmin", "lambda_ent", 0.1, entmin_term, {})])
def test_an_update_descends_its_defining_term(name, weight, value, term, extra):
    step, b = 50, batch()
    with_term = build(name, **{weight: value}, **extra)
    without = copy.deepcopy(with_term)
    without.hp[weight] = 0.0
    start = copy.deepcopy(with_term)
    # -H ramp=dann: the weight at step 50 of 100 is lambda x (2 / (1 + exp(-10 x 50/99)) - 1) = lambda x 0.9874
    lam = with_term.hp[weight] * (2 / (1 + math.exp(-10 * 50 / 99)) - 1 if extra else 1.0)
    grads = torch.autograd.grad(lam * term(start, b), list(start.parameters()), allow_unused=True)
    with_term.update(b, step)
    without.update(b, step)
    lr = with_term.optims["model"].param_groups[0]["lr"]  # the annealed rate at this step
    moved = [(p_with - p_without, -lr * grad) for p_with, p_without, grad
             in zip(with_term.parameters(), without.parameters(), grads) if grad is not None]
    scale = max(expected.abs().max().item() for _, expected in moved)
    assert scale > 1e-5, f"{name}: the term's step is too small to check in fp32"
    for got, expected in moved:
        # SGD's first step (momentum buffer = gradient): p - lr (g_cls + g_term + wd p); without: p - lr (g_cls + wd p)
        assert torch.allclose(got, expected, atol=1e-3 * scale, rtol=1e-3), name


def test_coral_update_descends_its_term_at_the_default_weight():
    """CORAL at its default weight (1, the digits regime) against the same step without the term:
    every weight moves by -lr x the gradient of the CORAL loss of the logits. The logits start as
    large as training makes them (the last layer x 50) and the target has three times the source's
    contrast: a fresh network's near-uniform logits have almost no covariance to align, which is why
    the paper fixes lambda against the end of training."""
    step, b = 50, batch()
    b = Batch(b.src_x, b.src_y, b.tgt_x * 3)
    cls = algorithms.get("coral")
    torch.manual_seed(0)
    backbone = backbones.get("digit-cnn")(None, in_channels=3, image_size=28, pretrained=None, num_classes=10)
    coral = cls(backbone, 10, defaults(cls.space("classification", "digits")) | {"lr": 10.0}, steps=100)
    assert coral.hp["lambda_coral"] == 1.0
    with torch.no_grad():
        coral.classifier[-1].weight.mul_(50.0)
    without = copy.deepcopy(coral)
    without.hp["lambda_coral"] = 0.0
    start = copy.deepcopy(coral)
    grads = torch.autograd.grad(coral_term(start, b), list(start.parameters()))
    logged = coral.update(b, step)
    without.update(b, step)
    assert logged["coral"] == pytest.approx(coral_term(start, b).item(), rel=1e-4)
    lr = coral.optims["model"].param_groups[0]["lr"]
    scale = max((lr * g).abs().max().item() for g in grads)
    assert scale > 1e-3, "the CORAL term's step is too small to check"
    for p, q, g in zip(coral.parameters(), without.parameters(), grads):
        assert torch.allclose(p - q, -lr * g, atol=1e-3 * scale, rtol=1e-3)


def rotation_term(algo, b):
    return rotation_loss(algo.featurizer, algo.rotation_head, torch.cat([b.src_x, b.tgt_x]))


@pytest.mark.parametrize("extra", [{}, {"ramp": "dann"}])
def test_dan_update_descends_the_mk_mmd_of_its_bottleneck(extra):
    """DAN with its defining term against the same step without it: every weight moves by
    -1.9 x lr x lambda x the gradient of the MK-MMD between the source and target bottleneck
    features (Nesterov's first step: the gradient plus 0.9 x the momentum it just filled); the
    head, which the term does not reach, moves the same. Dropout off: one network on all sides."""
    step, b = 50, batch()
    cls = algorithms.get("dan")
    torch.manual_seed(0)
    backbone = backbones.get("digit-cnn")(None, in_channels=3, image_size=28, pretrained=None, num_classes=10)
    dan = cls(backbone, 10, defaults(cls.space("classification", "digits")) | {"lr": 10.0} | extra, steps=100)
    dan.eval()
    without = copy.deepcopy(dan)
    without.hp["lambda_mmd"] = 0.0
    start = copy.deepcopy(dan)
    f = start.bottleneck(start.featurizer(torch.cat([b.src_x, b.tgt_x])))
    lam = grl_lambda(50 / 99) if extra else 1.0  # -H ramp=dann: lambda_mmd (1) x DANN's lambda at step 50 of 100
    grads = torch.autograd.grad(lam * mk_mmd(f[:8], f[8:]), list(start.parameters()), allow_unused=True)
    logged = dan.update(b, step)
    without.update(b, step)
    assert logged["mmd"] == pytest.approx(mk_mmd(f[:8], f[8:]).item(), rel=1e-4) and logged["mmd"] > 0
    lr = dan.optims["model"].param_groups[0]["lr"]  # TLlib's rate at step 50, the same for every group from scratch
    scale = max((1.9 * lr * g).abs().max().item() for g in grads if g is not None)
    assert scale > 1e-5
    for p, q, g in zip(dan.parameters(), without.parameters(), grads):
        expected = torch.zeros_like(p) if g is None else -1.9 * lr * g
        assert torch.allclose(p - q, expected, atol=1e-3 * scale, rtol=1e-3)
    assert any(g is None for g in grads)  # the head


@pytest.mark.parametrize("name, extra", [("rotation", {"rot_update": "summed"}), ("dann", {"aux": "rotation"})])
def test_an_update_learns_to_predict_rotations(name, extra):
    step, b = 50, batch()
    with_term = build(name, lambda_rot=1.0, **extra)
    without = copy.deepcopy(with_term)
    without.hp["lambda_rot"] = 0.0
    start = copy.deepcopy(with_term)
    torch.manual_seed(3)  # the same random turns in the reference and in both updates
    grads = torch.autograd.grad(rotation_term(start, b), list(start.parameters()), allow_unused=True)
    torch.manual_seed(3)
    with_term.update(b, step)
    torch.manual_seed(3)
    without.update(b, step)
    lr = with_term.optims["model"].param_groups[0]["lr"]
    moved = [(p - q, -lr * g) for p, q, g in zip(with_term.parameters(), without.parameters(), grads) if g is not None]
    scale = max(e.abs().max().item() for _, e in moved)
    assert scale > 1e-5 and any(e.abs().max() > 0 for got, e in moved if got.shape == (4, 100))  # the head moved
    for got, expected in moved:
        assert torch.allclose(got, expected, atol=1e-3 * scale, rtol=1e-3)


def test_rotation_steps_on_its_task_first_then_on_the_labels_from_the_weights_it_left():
    """The authors' order (uda_release utils/train.py): the rotation optimiser steps the featurizer
    and the head by -lr x lambda_rot x the rotation loss's gradient, then the classification
    optimiser steps by -lr x the label loss's gradient taken at those new weights (SGD's first step:
    each momentum buffer is its gradient)."""
    step, b = 50, batch()
    algo = build("rotation")
    assert algo.hp["rot_update"] == "alternating" and algo.hp["lambda_rot"] == 1.0
    start = copy.deepcopy(algo)
    start.anneal(step)
    lr = start.optims["model"].param_groups[0]["lr"]
    shared = list(start.featurizer.parameters()) + list(start.rotation_head.parameters())
    torch.manual_seed(3)  # the same random turns here and in the update
    rot_grads = torch.autograd.grad(rotation_term(start, b), shared)
    with torch.no_grad():
        for p, g in zip(shared, rot_grads):
            p -= lr * g
    labelled = list(start.featurizer.parameters()) + list(start.classifier.parameters())
    cls_grads = torch.autograd.grad(F.cross_entropy(start.predict(b.src_x), b.src_y), labelled)
    with torch.no_grad():
        for p, g in zip(labelled, cls_grads):
            p -= lr * g
    torch.manual_seed(3)
    algo.update(b, step)
    assert max((lr * g).abs().max().item() for g in rot_grads) > 1e-3  # the rotation step is not negligible
    for p, q in zip(algo.parameters(), start.parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4)


def test_cdan_reverses_the_conditional_domain_gradient_and_trains_its_discriminator():
    """One step after the warm-up: the features move by +lr x coefficient x the domain loss's
    gradient (reversed), the discriminator by -lr x its gradient (descent); with the trade-off at
    0 neither moves."""
    step, b = 50, batch()
    cdan = build("cdan")
    cdan.eval()  # no dropout: the two updates and the reference see one network
    no_adv = copy.deepcopy(cdan)
    no_adv.hp["trade_off"] = 0.0
    start = copy.deepcopy(cdan)
    feats, hidden, logits = forward(start, b)
    joint = start.multilinear(hidden, F.softmax(logits.detach(), dim=1))  # conditioned on the predictions
    out = start.discriminator(joint).squeeze(1)
    dom = conditional_domain_loss(out[:8], out[8:])
    lam = start.coefficient(step - start.adversarial_start() + 1)
    assert lam == pytest.approx(grl_lambda(41 / 10000, 10.0))  # 41st adversarial iteration of the authors' 10,000
    featurizer, disc = list(start.featurizer.parameters()), list(start.discriminator.parameters())
    grads = torch.autograd.grad(dom, featurizer + disc)
    cdan.update(b, step)
    no_adv.update(b, step)
    lr = cdan.optims["model"].param_groups[0]["lr"]
    scale = max((lr * lam * g).abs().max().item() for g in grads[: len(featurizer)])
    assert scale > 1e-6
    for p, q, grad in zip(cdan.featurizer.parameters(), no_adv.featurizer.parameters(), grads):
        assert torch.allclose(p - q, lr * lam * grad, atol=1e-3 * scale, rtol=1e-3)  # reversed: + lr lam grad
    d_lr = cdan.optims["discriminator"].param_groups[0]["lr"]
    for p, q, grad in zip(cdan.discriminator.parameters(), no_adv.discriminator.parameters(), grads[len(featurizer):]):
        assert torch.allclose(p - q, -d_lr * grad, atol=1e-6, rtol=1e-3)  # descent on the domain loss


@pytest.mark.parametrize("name", ["coral", "dan", "cdan", "mcc", "entmin", "rotation"])
def test_each_baseline_runs_from_the_cli_and_the_api(tmp_path, name):
    from click.testing import CliRunner

    import dabench
    from dabench.cli import main

    args = ["run", "--algo", name, "--src", "syndigits:200", "--tgt", "uci-digits", "--steps", "4", "--eval-every", "4",
            "--out", str(tmp_path / "cli")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    run = dabench.fit(name, "syndigits:200", "uci-digits", steps=4, eval_every=4, out=str(tmp_path / "api"))
    assert run.records[-1]["step"] == 4 and 0 <= run.records[-1]["tgt-test"]["acc"] <= 1
    assert name in CliRunner().invoke(main, ["list", "algorithms"]).output
