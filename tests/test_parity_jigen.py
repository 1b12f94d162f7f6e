"""JiGen against a transcription of its authors' puzzle and training step (tests/reference/jigen.py):
the same weights, batches and tile orders, ERM's optimiser on both sides; losses and every
parameter after every step agree to 1e-5 relative, in DG (source only) and in UDA (the target's
puzzle and entropy). The order draw is checked against the authors' rule by its distribution."""
from __future__ import annotations

import pytest
import torch

from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.jigen import draw_orders, jigsaw_permutations, shuffle_tiles
from reference import jigen as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, run_side_by_side, twin
from test_dg import toy_mid  # noqa: F401 - registers the third toy domain

STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str = "jigen", **hp):
    cls = algorithms.get(name)
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", "digits")) | hp, STEPS)


@pytest.mark.parametrize("setting", ["dg", "uda"])
def test_jigen_matches_the_authors_step_for_step(setting):
    entropy_weight = 0.1 if setting == "uda" else 0.0  # the entropy term exercised too
    algo = build(entropy_weight=entropy_weight)
    model = ref.JigsawModel(torch.nn.Sequential(twin(algo.featurizer), twin(algo.classifier[:-1])),
                            twin(algo.jigsaw_head), twin(algo.classifier[-1]))
    optim = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = ref.Trainer(model, optim, 0.9, 0.9, entropy_weight)
    puzzles = ref.JigsawImages(jigsaw_permutations(30).tolist())
    batches = digit_batches(STEPS, batch=16, seed=5)
    if setting == "dg":
        batches = [type(b)(b.src_x, b.src_y, None) for b in batches]

    def reference_step(i, b):
        orders = draw_orders(len(b.src_x), 30, 0.7, "cpu")  # the plugin's draw, under the same seed
        t_orders = draw_orders(len(b.tgt_x), 30, 0.7, "cpu") if b.tgt_x is not None else None
        for group in optim.param_groups:
            group["lr"] = 0.01 / (1 + 10 * i / (STEPS - 1)) ** 0.75
        out = trainer.step(puzzles.batch(b.src_x, orders), orders, b.src_y,
                           puzzles.batch(b.tgt_x, t_orders) if t_orders is not None else None, t_orders)
        ours = [*algo.featurizer.parameters(), *algo.classifier[:-1].parameters(), *algo.jigsaw_head.parameters(),
                *algo.classifier[-1].parameters()]
        assert_params_match(ours, model.parameters(), what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, batches)
    keys = {"cls": "class", "jig": "jigsaw"} | ({"tgt_jig": "t_jigsaw", "tgt_entropy": "entropy"} if setting == "uda" else {})
    assert_losses_match(logs, keys)


def test_tiles_move_as_the_permutation_says():
    """A 6 x 6 image whose 2 x 2 tiles each hold their own index: after order k, position t holds
    tile permutations[k - 1][t]; order 0 gives the image back; a 7 x 7 image keeps its last row and
    column."""
    perms = jigsaw_permutations(30)
    index = torch.arange(9).reshape(3, 3).repeat_interleave(2, 0).repeat_interleave(2, 1).float()
    image = index[None, None].repeat(3, 1, 1, 1)  # (3, 1, 6, 6): one image per order below
    out = shuffle_tiles(image, torch.tensor([0, 1, 30]), perms)
    assert torch.equal(out[0], image[0])
    for row, k in ((1, 1), (2, 30)):
        placed = out[row, 0, ::2, ::2].flatten()  # one pixel per tile, row-major positions
        assert placed.tolist() == perms[k - 1].float().tolist()
    big = torch.rand(2, 3, 7, 7)
    moved = shuffle_tiles(big, torch.tensor([5, 17]), perms)
    assert torch.equal(moved[:, :, 6], big[:, :, 6]) and torch.equal(moved[:, :, :, 6], big[:, :, :, 6])
    assert not torch.equal(moved[:, :, :6, :6], big[:, :, :6, :6])


def test_the_order_draw_follows_the_authors_rule():
    """P(whole) = bias + (1 - bias) / (P + 1), each of the P orders (1 - bias) / (P + 1): with 0.7 and
    30, 0.7097 and 0.00968 (200,000 draws: 4 standard errors are 0.004 and 0.0009)."""
    torch.manual_seed(0)
    orders = draw_orders(200_000, 30, 0.7, "cpu")
    freq = torch.bincount(orders, minlength=31).float() / len(orders)
    assert abs(freq[0] - (0.7 + 0.3 / 31)) < 0.004
    assert (freq[1:] - 0.3 / 31).abs().max() < 0.0009


def test_the_permutations_are_far_apart():
    perms = jigsaw_permutations(30)
    apart = (perms[:, None] != perms[None]).sum(-1) + 9 * torch.eye(30, dtype=torch.long)
    assert len({tuple(p) for p in perms.tolist()}) == 30 and apart.min() >= 7
    assert (perms != torch.arange(9)).sum(1).min() >= 7


def test_dann_with_the_jigsaw_task_steps_on_the_sum(monkeypatch):
    """dann -H aux=jigsaw adds lambda_jig x the jigsaw loss of source and target images to DANN's
    one step: with the weight at 0 its parameters move as plain DANN's do, with it they do not."""
    batches = digit_batches(3, batch=8, seed=2)
    plain, zero, on = build("dann"), build("dann", aux="jigsaw", lambda_jig=0.0), build("dann", aux="jigsaw")
    for algo in (plain, zero, on):
        for i, b in enumerate(batches):
            torch.manual_seed(i)
            logs = algo.update(b, i)
    assert logs["jig"] > 0
    same = [torch.equal(a, b) for a, b in zip(plain.classifier.parameters(), zero.classifier.parameters())]
    assert all(same)
    assert not torch.equal(next(plain.featurizer.parameters()), next(on.featurizer.parameters()))


@pytest.mark.parametrize("setting", ["dg", "uda"])
def test_it_trains(tmp_path, setting):
    src = "toy-src,toy-mid" if setting == "dg" else "toy-src"
    result = run(RunConfig(algo="jigen", src=src, tgt="toy-tgt", setting=setting, steps=4, eval_every=2,
                           overrides={"batch_size": 8}, out=str(tmp_path)))
    assert len(result.records) == 2 and 0 <= result.records[-1]["tgt-test"]["acc"] <= 1
