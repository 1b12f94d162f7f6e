"""MCD against transcriptions of its authors' two iterations (tests/reference/mcd.py): the digit
script (Adam, separate forwards) and the VisDA script (SGD, one forward, class balance), the same
weights and batches; losses and every parameter after every step agree to 1e-5 relative."""
from __future__ import annotations

import pytest
import torch

from dabench.errors import DabenchError
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.mcd import discrepancy
from reference import mcd as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, run_side_by_side, twin

STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")


def build(regime: str = "digits", **hp):
    cls = algorithms.get("mcd")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", regime)) | hp, STEPS)


@pytest.mark.parametrize("regime", ["digits", "imagenet"])
def test_mcd_matches_the_authors_step_for_step(regime):
    algo = build(regime)
    assert algo.hp["setting"] == {"digits": "digits", "imagenet": "visda"}[regime]
    g, c1, c2 = twin(algo.featurizer), twin(algo.c1), twin(algo.c2)
    if regime == "digits":
        solver = ref.DigitSolver(g, c1, c2, 2e-4, 4)
        keys = {"cls_1": "loss_s1", "cls_2": "loss_s2", "dis": "loss_dis"}
    else:
        solver = ref.VisdaTrainer(g, c1, c2, 1e-3, 4)
        keys = {"cls": "loss", "dis": "loss_dis", "balance": "entropy"}

    def reference_step(i, b):
        out = solver.step(b.src_x, b.src_y, b.tgt_x)
        assert_params_match([*algo.featurizer.parameters(), *algo.c1.parameters(), *algo.c2.parameters()],
                            [*g.parameters(), *c1.parameters(), *c2.parameters()], what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, digit_batches(STEPS, batch=16, seed=6))
    assert_losses_match(logs, keys)
    assert logs[-1][0]["dis"] > 0


def test_the_discrepancy_by_hand():
    """Two images, two classes: probabilities (0.5, 0.5) against (e/(1+e), 1/(1+e)) and equal rows
    against equal rows; the mean of |differences| over the 4 entries is (2 |0.5 - e/(1+e)|) / 4."""
    a = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    e = torch.e
    assert float(discrepancy(a, b)) == pytest.approx(2 * abs(0.5 - e / (1 + e)) / 4, rel=1e-6)


def test_the_three_steps_move_what_the_paper_says():
    """Step C moves G alone: with lr 0 for the classifiers (A and B idle), C1 and C2 do not move and
    G does; the discrepancy term of step B pushes the classifiers apart on the target."""
    algo = build(num_k=1)
    b = digit_batches(1, batch=16, seed=1)[0]
    c1 = [p.detach().clone() for p in algo.c1.parameters()]
    for name in ("c1", "c2"):
        for group in algo.optims[name].param_groups:
            group["lr"] = 0.0
    g = [p.detach().clone() for p in algo.featurizer.parameters()]
    algo.update(b, 0)
    assert all(torch.equal(a, p) for a, p in zip(c1, algo.c1.parameters()))
    assert not all(torch.equal(a, p) for a, p in zip(g, algo.featurizer.parameters()))


def test_it_trains_and_predicts_with_both_classifiers(tmp_path):
    result = run(RunConfig(algo="mcd", src="toy-src", tgt="toy-tgt", steps=4, eval_every=2, out=str(tmp_path)))
    assert len(result.records) == 2 and 0 <= result.records[-1]["tgt-test"]["acc"] <= 1
    algo = build()
    x = torch.rand(3, 3, 28, 28)
    algo.eval()
    torch.testing.assert_close(algo.predict(x), algo.c1(algo.featurizer(x)) + algo.c2(algo.featurizer(x)))


def test_domain_generalisation_refuses_it(tmp_path):
    with pytest.raises(DabenchError, match="trains on target images"):
        run(RunConfig(algo="mcd", src="toy-src", tgt="toy-tgt", setting="dg", out=str(tmp_path)))
