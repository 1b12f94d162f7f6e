"""MME against a transcription of its authors' step (tests/reference/mme.py): the same weights and
batches (source, labelled target, unlabelled target), both kinds of classifier (digits: cosine on
the features; imagenet: a 512-unit layer first, the backbone at 0.1 x lr); losses and every
parameter after every step agree to 1e-5 relative."""
from __future__ import annotations

import pytest
import torch

from dabench.data import Batch, Labeled
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.mme import adentropy
from reference import mme as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, run_side_by_side, twin

STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")


def build(regime: str = "digits", **hp):
    cls = algorithms.get("mme")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", regime)) | hp, STEPS)


def semi_batches():
    g = torch.Generator().manual_seed(9)
    out = []
    for b in digit_batches(STEPS, batch=16, seed=8):
        x = torch.rand(5, 3, 28, 28, generator=g) * 2 - 1 + 0.3
        out.append(Batch(b.src_x, b.src_y, b.tgt_x, Labeled(x, torch.randint(10, (5,), generator=g))))
    return out


@pytest.mark.parametrize("regime", ["digits", "imagenet"])
def test_mme_matches_the_authors_step_for_step(regime):
    algo = build(regime)
    G = twin(algo.featurizer)
    if regime == "digits":
        F1 = ref.Predictor(10, algo.featurizer.out_features, 0.05)
        F1.fc.load_state_dict(algo.classifier.fc.state_dict())
        multi = 1.0
    else:
        F1 = ref.Predictor_deep(10, algo.featurizer.out_features, 0.05)
        F1.fc1.load_state_dict(algo.classifier.fc1.state_dict())
        F1.fc2.load_state_dict(algo.classifier.fc.state_dict())
        multi = 0.1
    trainer = ref.Trainer(G, F1, 0.01, multi, 0.1)

    def reference_step(i, b):
        out = trainer.step(i, b.src_x, b.src_y, b.tgt_labeled.x, b.tgt_labeled.y, b.tgt_x)
        assert_params_match([*algo.featurizer.parameters(), *algo.classifier.parameters()],
                            [*G.parameters(), *F1.parameters()], what=f"parameters after step {i}")
        return {"loss": out["loss"], "entropy": -out["loss_t"] / 0.1}

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, semi_batches())
    assert_losses_match(logs, {"cls": "loss", "entropy": "entropy"})


def test_the_minimax_by_hand():
    """adentropy is lamda x sum p log p; through the reversal the classifier's gradient raises the
    entropy and the features' lowers it: one step each way from the same point."""
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(logits, 1)
    assert float(adentropy(logits, 0.1)) == pytest.approx(0.1 * float((p * torch.log(p + 1e-5)).sum()), rel=1e-6)
    algo = build()
    x = torch.rand(8, 3, 28, 28)
    feats = algo.featurizer(x).detach().requires_grad_(True)
    w = algo.classifier.fc.weight
    loss = adentropy(algo.classifier(feats, reverse=True), 0.1)
    gw, gf = torch.autograd.grad(loss, [w, feats])
    entropy = lambda: -float(adentropy(algo.classifier(feats), 1.0).detach())  # noqa: E731
    before = entropy()
    with torch.no_grad():
        w -= 0.5 * gw  # the classifier descends on lamda sum p log p: its entropy rises
    assert entropy() > before
    with torch.no_grad():
        w += 0.5 * gw
        feats -= 5.0 * gf  # the features descend on the reversed gradient: the entropy falls
    assert entropy() < before


def test_it_needs_labelled_target_images(tmp_path):
    from click.testing import CliRunner

    from dabench.cli import main

    r = CliRunner().invoke(main, ["run", "--algo", "mme", "--src", "toy-src", "--tgt", "toy-tgt", "--steps", "2",
                                  "--out", str(tmp_path / "runs")], catch_exceptions=False)
    assert r.exit_code == 2 and "--tgt-labeled" in r.stderr and not (tmp_path / "runs").exists()
    result = run(RunConfig(algo="mme", src="toy-src", tgt="toy-tgt", tgt_labeled=10, steps=4, eval_every=2,
                           out=str(tmp_path / "ok")))
    assert len(result.records) == 2
