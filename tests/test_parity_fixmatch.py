"""FixMatch against a transcription of Dassl's training step (tests/reference/fixmatch.py): the same
weights, batches and views (made by the plugin's augmentation under one random state), the plugin's
cosine rate handed over; losses and every parameter after every step agree to 1e-5 relative, in
unsupervised DA and with labelled target images."""
from __future__ import annotations

import math
import random

import pytest
import torch

from dabench.data import Batch, Labeled
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.fixmatch import fixmatch_loss, strong, weak
from reference import fixmatch as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, run_side_by_side

STEPS = 12

pytestmark = pytest.mark.usefixtures("one_thread")


def build(**hp):
    cls = algorithms.get("fixmatch")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", "digits")) | hp, STEPS)


@pytest.mark.parametrize("labelled", [False, True])
def test_fixmatch_matches_dassl_step_for_step(labelled):
    algo = build(threshold=0.105)  # the untrained network is confident about a few images at most
    model = torch.nn.Sequential(algo.featurizer, algo.classifier)
    twin_model = __import__("copy").deepcopy(model)
    tr = ref.Trainer(twin_model, conf_thre=0.105)
    batches = digit_batches(STEPS, batch=8, seed=16)
    if labelled:
        g = torch.Generator().manual_seed(3)
        batches = [Batch(b.src_x, b.src_y, b.tgt_x, Labeled(torch.rand(3, 3, 28, 28, generator=g) * 2 - 1,
                                                            torch.randint(10, (3,), generator=g))) for b in batches]

    def plugin_step(i, b):
        random.seed(70 + i)
        return algo.update(b, i)

    def reference_step(i, b):
        random.seed(70 + i)
        x_w, x_s, u_w, u_s = algo.views(b)
        _, y = b.labeled_sources()
        out = tr.forward_backward(0.05 * (1 + math.cos(math.pi * i / STEPS)) / 2, x_w, x_s, y, u_w, u_s)
        assert_params_match(model.parameters(), twin_model.parameters(), what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(plugin_step, reference_step, batches)
    assert_losses_match(logs, {"loss_x": "loss_x", "loss_u": "loss_u", "keep": "keep"})
    assert max(a["keep"] for a, _ in logs) > 0  # the unlabelled term was exercised


def test_the_unlabelled_loss_by_hand():
    """Two images: the weak view of the first is sure of class 1 (0.97), of the second unsure: only
    the first counts, its strong view's cross-entropy to class 1 (logits 0, 0: ln 2), over 2 images."""
    probs = torch.tensor([[0.03, 0.97], [0.5, 0.5]])
    loss, keep = fixmatch_loss(torch.zeros(2, 2), probs, 0.95)
    assert float(keep) == 0.5 and float(loss) == pytest.approx(math.log(2) / 2)


def test_every_op_takes_its_whole_magnitude_range():
    """Each op of the list at its lowest and highest magnitude (the draw is uniform in between): a
    uint8 image of the same shape comes back (Solarize at 256 leaves the image as PIL does)."""
    from dabench_plugins.algorithms.fixmatch import FIXMATCH_OPS

    img = (torch.rand(3, 28, 28) * 255).to(torch.uint8)
    for op, lo, hi in FIXMATCH_OPS:
        for v in (lo, hi):
            out = op(img, v)
            assert out.shape == img.shape and out.dtype == torch.uint8
    assert torch.equal(FIXMATCH_OPS[11][0](img, 256), img)


def test_the_views_keep_shape_and_range_and_differ():
    random.seed(0)
    torch.manual_seed(0)
    x = torch.rand(6, 3, 28, 28) * 2 - 1
    w, s = weak(x), strong(x)
    assert w.shape == s.shape == x.shape and float(s.min()) >= -1.0 and float(s.max()) <= 1.0
    assert not torch.equal(w, x) and not torch.allclose(s, w)


def test_it_trains_with_and_without_labelled_target(tmp_path):
    for n in (0, 10):
        result = run(RunConfig(algo="fixmatch", src="toy-src", tgt="toy-tgt", tgt_labeled=n, steps=4, eval_every=2,
                               overrides={"batch_size": 8}, out=str(tmp_path)))
        assert len(result.records) == 2
