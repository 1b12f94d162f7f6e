"""UDAS's augmentations: Domain CutMix, joint AutoAugment, multi-view pseudo-labels.

Most tests build images whose pixels encode their own label, so "the labels followed the
pixels" is a check on every pixel rather than on a picture."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from dabench.augment import (
    GEOMETRIC_OPS,
    IMAGENET_POLICY,
    PHOTOMETRIC_OPS,
    apply_op,
    auto_augment,
    cutmix_box,
    domain_cutmix,
    magnitude,
    sample_lambda,
)
from dabench_plugins.algorithms.udas import (  # UDAS's own multi-view pseudo-labels
    _pixel_map,
    _sampling_theta,
    _warp,
    autoaugment_views,
    invert_views,
    max_confidence_labels,
    pseudo_labels,
)
from dabench.tasks import IGNORE_INDEX


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def encode(labels: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] whose every channel is (label + 1) / 300: never 0, the fill."""
    return ((labels.float() + 1) / 300)[:, None].expand(-1, 3, -1, -1).clone()


def decode(images: torch.Tensor) -> torch.Tensor:
    return (images[:, 0] * 300 - 1).round().long()


def one_hot_image(labels: torch.Tensor, classes: int = 3) -> torch.Tensor:
    """A (N, classes, H, W) image in [-1, 1]: +1 in the label's channel, -1 elsewhere."""
    return F.one_hot(labels, classes).permute(0, 3, 1, 2).float() * 2 - 1


def erode(mask: torch.Tensor) -> torch.Tensor:
    """True where the whole 5x5 neighbourhood is True; outside the image counts as False."""
    padded = F.pad(mask.flatten(0, -3).float()[:, None], (2, 2, 2, 2))
    return (-F.max_pool2d(-padded, 5, 1) > 0.5).view(mask.shape)


def perfect_segmenter(views: torch.Tensor) -> torch.Tensor:
    """The 'network' for one-hot images: the one-hot probabilities of each pixel's brightest channel."""
    return F.one_hot(views.argmax(1), views.shape[1]).permute(0, 3, 1, 2).float()


# Domain CutMix ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.37, 0.5, 0.8, 0.99, 1.0])
def test_cutmix_box_covers_one_minus_lam_of_the_image_and_lies_inside(lam):
    height, width = 37, 53
    g = gen(1)
    for _ in range(20):
        top, left, box_h, box_w = cutmix_box(height, width, lam, g)
        assert abs(box_h - height * math.sqrt(1 - lam)) <= 0.5
        assert abs(box_w - width * math.sqrt(1 - lam)) <= 0.5
        assert abs(box_h * box_w - (1 - lam) * height * width) <= (height + width) / 2 + 0.25
        assert 0 <= top <= height - box_h and 0 <= left <= width - box_w
    assert cutmix_box(height, width, 0.0, g) == (0, 0, height, width)
    assert cutmix_box(height, width, 1.0, g)[2:] == (0, 0)


def test_cutmix_box_rejects_a_lambda_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cutmix_box(10, 10, 1.5)


def test_domain_cutmix_pastes_exactly_one_box_and_labels_follow_the_pixels():
    g = gen(2)
    n, height, width, lam = 4, 20, 30, 0.6
    src_y = torch.randint(0, 10, (n, height, width), generator=g)
    src_y[:, :3] = IGNORE_INDEX
    tgt_y = torch.randint(10, 19, (n, height, width), generator=g)  # target classes tell the domains apart
    src_x, tgt_x = encode(src_y), encode(tgt_y)
    inputs = [t.clone() for t in (src_x, src_y, tgt_x, tgt_y)]

    x, y = domain_cutmix(src_x, src_y, tgt_x, tgt_y, lam, g)

    assert torch.equal(decode(x), y) and torch.equal(x[:, 0], x[:, 2])
    for before, after in zip(inputs, (src_x, src_y, tgt_x, tgt_y)):
        assert torch.equal(before, after)
    side = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
    for i in range(n):
        from_target = (y[i] >= 10) & (y[i] != IGNORE_INDEX)
        rows, cols = from_target.nonzero(as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        box = torch.zeros_like(from_target)
        box[top : top + side[0], left : left + side[1]] = True
        assert torch.equal(from_target, box)
        assert torch.equal(y[i][box], tgt_y[i][box]) and torch.equal(y[i][~box], src_y[i][~box])


def test_domain_cutmix_resizes_a_smaller_target_batch_and_cycles_through_it():
    src_y = torch.zeros(5, 16, 24, dtype=torch.long)
    tgt_y = torch.tensor([11, 12]).view(2, 1, 1).expand(2, 8, 12).clone()  # one class per target image
    x, y = domain_cutmix(encode(src_y), src_y, encode(tgt_y), tgt_y, 0.5, gen(3))

    assert x.shape == (5, 3, 16, 24) and y.shape == (5, 16, 24)
    assert torch.allclose(decode(x).float(), y.float())
    for i in range(5):
        assert set(y[i].unique().tolist()) == {0, 11 + i % 2}
        assert int((y[i] != 0).sum()) == round(16 * math.sqrt(0.5)) * round(24 * math.sqrt(0.5))


def test_sample_lambda_draws_a_reproducible_beta():
    draws = [sample_lambda(1.0, gen(4)) for _ in range(2)]
    assert draws[0] == draws[1]
    g = gen(5)
    many = torch.tensor([sample_lambda(0.5, g) for _ in range(400)])
    assert float(many.min()) >= 0 and float(many.max()) <= 1
    assert abs(float(many.mean()) - 0.5) < 0.06  # Beta(a, a) is symmetric about 1/2
    assert float(((many < 0.1) | (many > 0.9)).float().mean()) > 0.3  # alpha < 1 favours the ends
    with pytest.raises(ValueError, match="alpha"):
        sample_lambda(0.0)


# AutoAugment ---------------------------------------------------------------------------------------


def test_policy_and_magnitudes_are_torchvisions_imagenet_autoaugment():
    reference = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    assert [tuple(p) for p in reference._policies] == list(IMAGENET_POLICY)
    height, width = 40, 70
    for op in GEOMETRIC_OPS + PHOTOMETRIC_OPS:
        theirs = reference._AUGMENTATION_SPACE[op][0](10, height, width)
        ours = torch.tensor([magnitude(op, b, height, width) for b in range(10)], dtype=torch.float64)
        if theirs is None:
            assert (ours == 0).all(), op
        else:
            assert torch.allclose(ours, theirs.double()), op


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("op", GEOMETRIC_OPS)
def test_geometric_ops_move_image_and_labels_together(op, sign):
    y = torch.randint(0, 19, (2, 24, 32), generator=gen(6))
    x = encode(y)
    out_x, out_y = apply_op(x, y, op, sign * magnitude(op, 9, 24, 32))

    moved = out_y != IGNORE_INDEX
    assert not torch.equal(out_y, y) and not moved.all()
    assert torch.equal(decode(out_x)[moved], out_y[moved])
    assert (out_x.permute(0, 2, 3, 1)[~moved] == 0).all()  # mid-grey fill where labels are 255
    assert out_y.dtype == torch.int64


@pytest.mark.parametrize("op", PHOTOMETRIC_OPS)
def test_photometric_ops_change_the_image_only(op):
    g = gen(7)
    y = torch.randint(0, 19, (2, 16, 16), generator=g)
    x = torch.rand(2, 3, 16, 16, generator=g) * 1.6 - 0.8
    out_x, out_y = apply_op(x, y, op, magnitude(op, 7, 16, 16))
    assert torch.equal(out_y, y) and out_y is not y
    assert out_x.shape == x.shape and float(out_x.abs().max()) <= 1 + 1e-6
    assert not torch.allclose(out_x, x)


def test_apply_op_names_the_ops_it_knows_when_given_another():
    with pytest.raises(ValueError, match="ShearX"):
        apply_op(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), "Cutout", 1.0)


def test_auto_augment_is_reproducible_and_keeps_labels_aligned():
    y = torch.randint(0, 19, (24, 16, 16), generator=gen(8))
    x = encode(y)
    out_x, out_y = auto_augment(x, y, gen(9))
    again_x, again_y = auto_augment(x, y, gen(9))

    assert torch.equal(out_x, again_x) and torch.equal(out_y, again_y)
    assert out_x.shape == x.shape and out_y.shape == y.shape and out_y.dtype == torch.int64
    assert float(out_x.abs().max()) <= 1 + 1e-6
    assert set(out_y.unique().tolist()) <= set(range(19)) | {IGNORE_INDEX}
    moved = [i for i in range(24) if not torch.equal(out_y[i], y[i])]
    assert moved, "the ImageNet policy rotates or shears about one image in six"
    for i in moved:  # a geometric op moved them, leaving 255 where nothing of the image arrived
        assert (out_y[i] == IGNORE_INDEX).any()


# Pseudo-labels from views ---------------------------------------------------------------------------


def test_max_confidence_labels_takes_the_most_confident_valid_view():
    probs = torch.tensor(
        [
            [[[0.7, 0.1], [0.5, 0.05]], [[0.2, 0.1], [0.3, 0.05]], [[0.1, 0.8], [0.2, 0.9]]],  # view 0
            [[[0.1, 0.3], [0.4, 0.2]], [[0.8, 0.4], [0.35, 0.7]], [[0.1, 0.3], [0.25, 0.1]]],  # view 1
        ]
    ).unsqueeze(1)  # (k=2, N=1, C=3, 2, 2)
    valid = torch.tensor([[[True, True], [True, False]], [[True, True], [True, True]]]).unsqueeze(1)

    labels, confidence = max_confidence_labels(probs, valid, threshold=0.6)

    # (0,0) view 1 is surer; (0,1) view 0; (1,0) best is 0.5 < 0.6; (1,1) view 0's 0.9 is invalid.
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[[1, 2], [IGNORE_INDEX, 1]]]
    assert torch.allclose(confidence, torch.tensor([[[0.8, 0.8], [0.5, 0.7]]]))
    nowhere, zero = max_confidence_labels(probs, torch.zeros_like(valid), threshold=0.6)
    assert (nowhere == IGNORE_INDEX).all() and (zero == 0).all()


def test_geometric_ops_are_exact_pixel_maps():
    """By hand on a 5x5 ramp: translate by 2 px, rotate by 90 degrees (= torch.rot90), shear x += y."""
    x = torch.arange(25.0).view(1, 1, 5, 5)

    def moved(op, m):
        return _warp(x, _sampling_theta(_pixel_map(op, m, 5, 5), 5, 5).float()[None], padding="zeros")[0, 0]

    assert torch.equal(moved("TranslateX", 2).round(), F.pad(x[0, 0, :, :3], (2, 0)))
    assert torch.allclose(moved("Rotate", 90), torch.rot90(x[0, 0], 1, [0, 1]), atol=1e-4)
    assert moved("ShearX", 1).round()[3].tolist() == [0, 0, 0, 15, 16]


def test_autoaugment_views_invert_back_to_the_labels_away_from_edges(monkeypatch):
    """The views are samples of the AutoAugment policy; mapping each view's output back through its
    recorded geometry recovers the labels (photometric ops off here: they would recolour the one-hot
    test image that the 'perfect segmenter' reads)."""
    import dabench_plugins.algorithms.udas as augment  # the views call photometric from there

    ops = []
    monkeypatch.setattr(augment, "photometric", lambda x, op, m: ops.append(op) or x)
    g = gen(12)
    blocks = torch.randint(0, 3, (2, 4, 6), generator=g)
    labels = blocks.repeat_interleave(12, 1).repeat_interleave(12, 2)  # (2, 48, 72)
    views, params = autoaugment_views(one_hot_image(labels), 8, g)
    assert views.shape == (16, 3, 48, 72) and params.k == 8 and ops  # photometric ops were drawn too
    moved = (params.theta - torch.eye(2, 3)).abs().sum((1, 2)) > 1e-6
    assert 0 < moved.sum() < 16  # some views rotated, sheared or shifted by the policy, some not
    seen = perfect_segmenter(views)

    probs, valid = invert_views(seen, params)

    same_label = erode(labels == 0) | erode(labels == 1) | erode(labels == 2)
    trusted = erode(valid) & same_label  # (k, N, H, W)
    assert trusted.float().mean() > 0.4
    assert (probs.argmax(2) == labels)[trusted].all()
    raw = seen.argmax(1).view(8, 2, 48, 72) == labels
    assert raw.view(16, -1)[moved].float().mean() < 0.95  # without inverting, the moved views disagree


def test_autoaugment_views_recolour_the_images():
    x = torch.rand(2, 3, 16, 16, generator=gen(3)) * 2 - 1
    views, params = autoaugment_views(x, 6, gen(4))
    geometry_only = _warp(x.repeat(6, 1, 1, 1), params.theta, padding="zeros")
    assert not torch.allclose(views, geometry_only, atol=1e-3)  # some photometric op of the policy ran


def test_pseudo_labels_run_all_views_in_one_forward_pass(monkeypatch):
    import dabench_plugins.algorithms.udas as augment  # the views call photometric from there

    monkeypatch.setattr(augment, "photometric", lambda x, op, m: x)  # they would recolour the one-hot image
    blocks = torch.randint(0, 3, (2, 4, 4), generator=gen(13))
    labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)  # (2, 32, 32)
    calls = []

    def teacher(views):
        calls.append(views.shape[0])
        return 20 * perfect_segmenter(views)[:, :, ::2, ::2]  # logits at half resolution

    pseudo, confidence = pseudo_labels(teacher, one_hot_image(labels), k=3, threshold=0.6, generator=gen(14))

    assert calls == [6]
    assert pseudo.shape == labels.shape and pseudo.dtype == torch.int64 and confidence.shape == labels.shape
    assert float((pseudo == labels).float().mean()) > 0.9
    assert torch.equal(pseudo == IGNORE_INDEX, confidence < 0.6)
