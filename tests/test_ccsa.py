"""CCSA: the contrastive alignment loss has the authors' form, and training on it works."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dabench.data import Batch, Labeled
from dabench.hparams import defaults
from dabench_plugins.algorithms.ccsa import (CCSA, contrastive_loss, csa_loss, keras_cross_entropy, paired_distances,
                                             sample_pairs)
from dabench_plugins.backbones.digit_cnn import digit_cnn
pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_matches_hand_computation():
    src, src_y = torch.tensor([[0.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 1])
    tgt, tgt_y = torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    # Pair distances: (0,0)-(0,1) = 1, same class -> 1^2 = 1; (3,0)-(0,1) = sqrt(10) = 3.162,
    # different class, beyond margin 2 -> max(0, 2 - 3.162)^2 = 0.
    # Plain mean over the 2 pairs: (1 + 0) / 2 = 0.5. Default weighting, positives 1/4 and
    # negatives 3/4: 0.25 * 1 + 0.75 * 0 = 0.25.
    assert csa_loss(src, src_y, tgt, tgt_y, margin=2.0, pos_share=None).item() == pytest.approx(0.5)
    assert csa_loss(src, src_y, tgt, tgt_y, margin=2.0).item() == pytest.approx(0.25)


def test_loss_inside_the_margin_matches_hand_computation():
    src, src_y = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1])
    tgt, tgt_y = torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    # Negative pair (1,0)-(0,1): d = sqrt(2), cost (2 - sqrt 2)^2 = 0.343146.
    neg = (2 - math.sqrt(2)) ** 2
    assert csa_loss(src, src_y, tgt, tgt_y, margin=2.0, pos_share=None).item() == pytest.approx((1 + neg) / 2)
    assert csa_loss(src, src_y, tgt, tgt_y, margin=2.0).item() == pytest.approx(0.25 * 1 + 0.75 * neg)


def test_positives_keep_a_quarter_of_the_weight_whatever_the_number_of_classes():
    torch.manual_seed(0)
    src, tgt = torch.randn(30, 4), torch.randn(10, 4)
    src_y, tgt_y = torch.arange(30) % 10, torch.arange(10)  # 30 positive pairs out of 300
    pos = csa_loss(src, src_y, tgt, tgt_y, margin=1e-3)  # margin ~0: negatives cost nothing
    same = src_y[:, None] == tgt_y[None, :]
    d2 = torch.cdist(src, tgt).pow(2)
    assert pos.item() == pytest.approx(0.25 * d2[same].mean().item(), rel=1e-5)


def test_same_class_pairs_pull_together():
    s = torch.tensor([[2.0, 1.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0]])
    csa_loss(s, torch.tensor([3]), t, torch.tensor([3])).backward()
    # d(d^2)/ds = 2 (s - t): a descent step moves s straight towards t.
    assert torch.allclose(s.grad, 2 * (s.detach() - t))
    assert torch.dot(-s.grad[0], (t - s.detach())[0]) > 0


def test_different_class_pairs_push_apart_inside_the_margin_and_cost_nothing_beyond():
    t, y_s, y_t = torch.tensor([[0.0, 0.0]]), torch.tensor([0]), torch.tensor([1])
    near = torch.tensor([[0.3, 0.4]], requires_grad=True)  # d = 0.5 < margin 1
    loss = csa_loss(near, y_s, t, y_t, margin=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.25)  # (1 - 0.5)^2
    assert torch.dot(-near.grad[0], (near.detach() - t)[0]) > 0  # descent moves it away from t
    far = torch.tensor([[3.0, 4.0]], requires_grad=True)  # d = 5 > margin 1
    loss = csa_loss(far, y_s, t, y_t, margin=1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(far.grad, torch.zeros_like(far))


def test_gradient_is_finite_when_embeddings_coincide():
    s = torch.zeros(2, 3, requires_grad=True)
    csa_loss(s, torch.tensor([0, 1]), torch.zeros(1, 3), torch.tensor([0])).backward()
    assert torch.isfinite(s.grad).all()


def test_needs_labelled_target_samples():
    assert CCSA.target_labels == "required"
    assert CCSA.description().startswith("Classification and contrastive semantic alignment")


def test_update_lowers_the_total_loss():
    torch.manual_seed(0)
    algo = CCSA(digit_cnn(image_size=28), 4, defaults(CCSA.hparams), steps=30)
    src_y, tgt_y = torch.arange(8) % 4, torch.arange(4)
    src_x = torch.randn(8, 3, 28, 28) + src_y.view(-1, 1, 1, 1) * 0.5
    tgt_x = torch.randn(4, 3, 28, 28) + tgt_y.view(-1, 1, 1, 1) * 0.5 + 0.3
    batch = Batch(src_x, src_y, torch.randn(8, 3, 28, 28), Labeled(tgt_x, tgt_y))
    first = algo.update(batch, 0)
    for step in range(1, 30):
        last = algo.update(batch, step)
    assert set(first) == {"cls", "csa", "total", "cls_tgt", "csa_tgt", "total_tgt"}
    assert first["total"] == pytest.approx(0.75 * first["cls"] + 0.25 * first["csa"], rel=1e-5)
    assert first["total_tgt"] == pytest.approx(0.75 * first["cls_tgt"] + 0.25 * first["csa_tgt"], rel=1e-5)
    assert last["total"] < first["total"]
    assert algo.predict(tgt_x).shape == (4, 4)


def test_pairs_are_every_positive_and_three_times_as_many_negatives():
    src_y, tgt_y = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3]), torch.tensor([0, 1])
    torch.manual_seed(0)
    i, j = sample_pairs(src_y, tgt_y)
    same = src_y[i] == tgt_y[j]
    assert int(same.sum()) == 4 and len(i) == 16  # 4 positives and 3 x 4 = 12 negatives (here all there are)
    assert {(a, b) for a, b in zip(i[same].tolist(), j[same].tolist())} == {(0, 0), (3, 0), (1, 1), (4, 1)}
    assert len({(a, b) for a, b in zip(i.tolist(), j.tolist())}) == 16  # no pair twice
    assert not same[:4].all()  # shuffled: the positives are not simply first
    i, j = sample_pairs(src_y, tgt_y, limit=5)
    assert len(i) == 5
    i, _ = sample_pairs(torch.tensor([2, 3]), torch.tensor([0, 1]))
    assert len(i) == 0  # no shared class, no pair


def test_contrastive_loss_of_aligned_pairs_matches_hand_computation():
    a, b = torch.tensor([[0.0, 0.0], [0.3, 0.4], [3.0, 4.0]]), torch.zeros(3, 2)
    d = paired_distances(a, b)
    assert torch.allclose(d, torch.tensor([1e-4, 0.5, 5.0]))  # sqrt(max(0, 1e-8)) for coinciding points
    # same, different (inside the margin 1), different (beyond): mean of 1e-8, (1 - 0.5)^2 = 0.25, 0
    loss = contrastive_loss(d, torch.tensor([True, False, False]))
    assert loss.item() == pytest.approx((1e-8 + 0.25 + 0) / 3)


def test_keras_cross_entropy_is_cross_entropy_until_a_probability_is_clipped():
    logits, y = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]), torch.tensor([0, 2])
    assert keras_cross_entropy(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    far = torch.tensor([[0.0, 40.0]], requires_grad=True)
    loss = keras_cross_entropy(far, torch.tensor([0]))
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(1e-7), rel=1e-6) and torch.equal(far.grad, torch.zeros(1, 2))


def test_the_second_step_learns_the_labelled_target_samples_labels():
    """The authors' second train_on_batch has CE on the target stream with the target labels: the
    logged target CE is the model's CE on the paired target images, after the first step."""
    torch.manual_seed(0)
    algo = CCSA(digit_cnn(image_size=28), 4, defaults(CCSA.hparams), steps=1)
    algo.classifier[0].p = 0.0  # no dropout, so the CE can be recomputed
    src_y, tgt_y = torch.arange(8) % 4, torch.tensor([3, 2, 1, 0])
    batch = Batch(torch.randn(8, 3, 28, 28), src_y, None, Labeled(torch.randn(4, 3, 28, 28), tgt_y))
    seen = []
    algo.optims["model"].register_step_post_hook(lambda o, a, k: seen.append(copy.deepcopy(algo.state_dict())))
    torch.manual_seed(1)
    i, j = sample_pairs(src_y, tgt_y)
    torch.manual_seed(1)
    logs = algo.update(batch, 0)
    after_first = copy.deepcopy(algo)
    after_first.load_state_dict(seen[0])
    with torch.no_grad():
        expected = keras_cross_entropy(after_first.predict(batch.tgt_labeled.x[j]), tgt_y[j]).item()
        swapped = keras_cross_entropy(after_first.predict(batch.tgt_labeled.x[j]), src_y[i]).item()
    assert logs["cls_tgt"] == pytest.approx(expected, rel=1e-5)
    assert logs["cls_tgt"] != pytest.approx(swapped, rel=1e-3)
