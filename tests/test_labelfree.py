"""Label-free model selection: the scores by hand, the methods that read them, and runs that
record them without their training changing."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from dabench import labelfree
from dabench.data import TensorImages
from dabench.runner import RunConfig, run
from dabench.results.selection import LABEL_FREE, choose, select


class Fixed(nn.Module):
    """predict() returns the logits given, one row per image, in order."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.seen = logits, 0

    def predict(self, x):
        torch.rand(1)  # as a DataLoader's base seed or a dropout layer would
        out = self.logits[self.seen: self.seen + len(x)]
        self.seen += len(x)
        return out


def score(logits, batch_size=2):
    images = TensorImages(torch.zeros(len(logits), 1, 2, 2, dtype=torch.uint8), torch.zeros(len(logits), dtype=torch.long))
    from dabench.data import ImagesOnly
    return labelfree.scores(Fixed(logits), ImagesOnly(images), "classification", torch.device("cpu"), batch_size,
                            contextlib.nullcontext)


def test_scores_by_hand():
    certain = torch.tensor([[0.0, -100.0], [-100.0, 0.0]])  # one image per class, both certain
    s = score(certain)
    assert s["entropy"] == pytest.approx(0, abs=1e-6) and s["im"] == pytest.approx(math.log(2), rel=1e-5)
    assert s["snd"] == pytest.approx(0, abs=1e-6)  # each row's one neighbour takes all the weight
    same = torch.zeros(4, 3)  # four identical uniform rows
    s = score(same)
    assert s["entropy"] == pytest.approx(math.log(3)) and s["im"] == pytest.approx(0, abs=1e-6)
    assert s["snd"] == pytest.approx(math.log(3))  # three equally similar neighbours per row


def test_dev_risk_by_hand():
    import numpy as np

    assert labelfree.dev_risk(np.ones(3), np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)  # equal weights: the mean loss
    # weights 1 and 3 on a constant loss: w l = (1, 3), Cov(w l, w) = Var(w) = 2, eta = -1: 2 - 2 + 1 = 1
    assert labelfree.dev_risk(np.array([1.0, 3.0]), np.ones(2)) == pytest.approx(1.0)


def records(**scores):
    """Three evaluations, with tgt-test values that would mislead a method that could read them."""
    return [{"step": 10 * (i + 1), "src-val": {"acc": 0.5}, "tgt-test": {"acc": [0.9, 0.1, 0.2][i]},
             LABEL_FREE: {k: v[i] for k, v in scores.items()}} for i in range(3)]


def test_label_free_methods_pick_their_best_score():
    r = records(entropy=[0.9, 0.2, 0.5], im=[0.1, 0.3, 0.7], snd=[2.0, 1.0, 1.5])
    assert select("entropy", r, "acc") == 1  # lowest entropy
    assert select("im", r, "acc") == 2
    assert select("snd", r, "acc") == 0
    assert choose("im", r, "acc")["step"] == 30
    unscored = [{k: v for k, v in rec.items() if k != LABEL_FREE} for rec in r]
    assert select("entropy", unscored, "acc") == 2  # nothing to read: the last record, like ``last``


def test_a_run_records_the_scores_and_trains_as_without_them(tmp_path, monkeypatch):
    cfg = dict(algo="rotation", src="syndigits:200", tgt="uci-digits", steps=6, eval_every=3)  # draws turns each step
    scored = run(RunConfig(**cfg, out=str(tmp_path / "a")))
    assert all({"entropy", "im", "snd"} <= set(r[LABEL_FREE]) for r in scored.records)
    assert all(0 <= r[LABEL_FREE]["entropy"] <= math.log(10) + 1e-6 for r in scored.records)

    def draw(*args, **kw):  # a scorer that draws random numbers, as a DataLoader over file-backed images does
        torch.rand(100)
        return {}, None

    monkeypatch.setattr(labelfree, "_scores", draw)
    drawing = run(RunConfig(**cfg, out=str(tmp_path / "b")))
    monkeypatch.setattr(labelfree, "_scores", lambda *args, **kw: ({}, None))
    plain = run(RunConfig(**cfg, out=str(tmp_path / "c")))
    steps = lambda r: (r.run_dir / "steps.jsonl").read_text()  # noqa: E731
    assert steps(scored) == steps(drawing) == steps(plain)
    assert [r["tgt-test"] for r in scored.records] == [r["tgt-test"] for r in plain.records]


@pytest.mark.slow
def test_a_run_with_dev_scores_it_with_a_classifier_trained_on_its_source_train_images(tmp_path, monkeypatch):
    seen = []

    def spy(source_train, target, source_val, rng=None):
        seen.append((len(source_train), len(target), len(source_val)))
        return ratios(source_train, target, source_val, rng)

    ratios = labelfree.density_ratios
    monkeypatch.setattr(labelfree, "density_ratios", spy)
    plain = run(RunConfig(algo="erm", src="syndigits:200", tgt="uci-digits", steps=2, eval_every=2, out=str(tmp_path / "a")))
    assert "dev" not in plain.records[0][LABEL_FREE] and not seen  # DEV's fits cost seconds: only with --dev
    result = run(RunConfig(algo="erm", src="syndigits:200", tgt="uci-digits", steps=2, eval_every=2, dev=True,
                           out=str(tmp_path / "b")))
    record, = result.records
    assert record[LABEL_FREE]["dev"] > 0  # an importance-weighted cross-entropy
    splits = result.config["splits"]
    # the classifier learns from the source-train and target images, and weighs the source-val ones
    assert seen == [(min(splits["src_train"], 1000), min(splits["tgt_train"], 1000), min(splits["src_val"], 1000))]


def test_scoring_leaves_the_random_state_as_it_found_it():
    logits = torch.randn(6, 4)
    before = torch.get_rng_state()
    score(logits)
    assert torch.equal(before, torch.get_rng_state())
