"""Model selection as its sources define it: DEV's density ratios and risk against a transcription
of the authors' dev.py (tests/reference/dev.py), on fixed arrays and through the scorer a run
uses; and DEV's ratio pointing the right way (a target-like source-val image weighs more).

(DomainBed's oracle, the other source, is checked on hand-made run folders in test_leaderboard.py.)
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from dabench import labelfree
from dabench.data import ImagesOnly, TensorImages, to_unit_range
from reference import dev as reference

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def gaussians(n_source: int, n_target: int, n_val: int, d: int, shift: float, seed: int = 3):
    """Source-train and source-val rows from N(0, I), target rows from N(mu, I) with |mu| = shift
    along the diagonal; float32, as features come out of a network."""
    g = np.random.RandomState(seed)
    mu = np.full(d, shift / np.sqrt(d))
    return (g.randn(n_source, d).astype(np.float32), (g.randn(n_target, d) + mu).astype(np.float32),
            g.randn(n_val, d).astype(np.float32), mu)


def test_density_ratios_and_risk_match_the_authors_dev_py_on_fixed_arrays():
    source, target, val, _ = gaussians(120, 70, 50, 6, 1.5)
    np.random.seed(11)  # the authors draw from numpy's global generator
    theirs = reference.get_weight(source, target, val)
    ours = labelfree.density_ratios(source, target, val, rng=np.random.RandomState(11))
    assert ours.shape == (50,) and np.array_equal(ours, theirs[:, 0])  # the same draws, the same arithmetic: exact
    loss = np.random.RandomState(5).exponential(size=50)
    assert labelfree.dev_risk(ours, loss) == pytest.approx(reference.get_dev_risk(theirs, loss[:, None]), rel=1e-12)


def test_density_ratios_leave_numpys_global_generator_alone():
    source, target, val, _ = gaussians(40, 30, 10, 3, 1.0)
    before = np.random.get_state()[1].copy()
    first = labelfree.density_ratios(source, target, val)
    assert np.array_equal(before, np.random.get_state()[1])
    assert np.array_equal(first, labelfree.density_ratios(source, target, val))  # seeded: it repeats


class Linear(nn.Module):
    """A network whose features are its input pixels (scaled to unit spread) and whose logits are a
    fixed linear map of them: what the scorer is handed, with nothing to train."""

    def __init__(self, d: int, classes: int = 3):
        super().__init__()
        self.head = nn.Linear(d, classes)
        torch.nn.init.normal_(self.head.weight, generator=torch.Generator().manual_seed(0))

    def embed(self, x):
        return 4 * x.flatten(1)

    def predict(self, x):
        return self.head(self.embed(x))


def as_images(rows: np.ndarray, seed: int) -> TensorImages:
    """Rows as uint8 images (N, d, 1, 1) whose pixels, in [-1, 1] and times 4, give back the rows
    (rounded to a pixel), with random labels."""
    pixels = torch.from_numpy(np.clip(np.round(127.5 + 127.5 * rows / 4), 0, 255).astype(np.uint8))
    labels = torch.randint(0, 3, (len(rows),), generator=torch.Generator().manual_seed(seed))
    return TensorImages(pixels[:, :, None, None], labels)


def test_the_scorer_trains_the_classifier_on_source_train_and_weighs_source_val_as_the_authors_do():
    source, target, val, _ = gaussians(90, 60, 40, 5, 1.5)
    train_ds, target_ds, val_ds = as_images(source, 0), as_images(target, 1), as_images(val, 2)
    algo = Linear(5)
    got = labelfree.scores(algo, ImagesOnly(target_ds), "classification", torch.device("cpu"), 16,
                           contextlib.nullcontext, source_val=val_ds, source_train=train_ds)
    with torch.no_grad():
        features = {k: algo.embed(to_unit_range(ds.images)).numpy() for k, ds in
                    {"train": train_ds, "target": target_ds, "val": val_ds}.items()}
        loss = F.cross_entropy(algo.predict(to_unit_range(val_ds.images)), val_ds.targets, reduction="none").numpy()
    np.random.seed(labelfree.DEV_SEED)
    w = reference.get_weight(features["train"], features["target"], features["val"])
    # float32 losses of the same rows, computed batched on one side and at once on the other
    assert got["dev"] == pytest.approx(reference.get_dev_risk(w, loss[:, None]), rel=1e-6)
    without = labelfree.scores(algo, ImagesOnly(target_ds), "classification", torch.device("cpu"), 16,
                               contextlib.nullcontext, source_val=val_ds)
    assert "dev" not in without and set(without) == {"entropy", "im", "snd"}  # no source-train images, no DEV


def test_dev_weighs_target_like_source_val_images_up():
    # 1.5 standard deviations of shift; the true ratio is p_t / p_s = exp(1.5 z - 1.125), z the
    # coordinate along the shift
    source, target, val, mu = gaussians(300, 150, 200, 8, 1.5)
    z = val @ mu / 1.5
    w = labelfree.density_ratios(source, target, val)
    true = np.exp(1.5 * z - 1.125)
    assert spearmanr(w, true).statistic > 0.8
    assert w[z > 1].mean() > 10 * w[z < -1].mean()  # inverted, the source-like rows would weigh most
    assert 0.5 < w.mean() < 1.5  # E_s[w] = 1; n_s / n_t the wrong way round (n_s = 2 n_t) would give a quarter
    on_target = np.where(z > 0.5, 2.0, 0.1)  # a model that fails where the target lies
    on_source = np.where(z < -0.5, 2.0, 0.1)  # one that fails where it does not
    assert labelfree.dev_risk(w, on_target) > on_target.mean() + 0.5
    assert labelfree.dev_risk(w, on_source) < on_source.mean() - 0.5
    assert labelfree.dev_risk(w, on_target) == pytest.approx(labelfree.dev_risk(true, on_target), abs=0.3)

