"""AFN against a transcription of TLlib's SAFN iteration (tests/reference/afn.py): the same weights,
batches and random state (the block's dropout draws the same masks); losses and every parameter
after every step agree to 1e-5 relative, both regimes."""
from __future__ import annotations

import pytest
import torch

from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.afn import stepwise_norm_loss
from reference import afn as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, run_side_by_side, twin

STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")


def build(regime: str = "digits", **hp):
    cls = algorithms.get("afn")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", regime)) | hp, STEPS)


@pytest.mark.parametrize("regime", ["digits", "imagenet"])
def test_afn_matches_tllib_step_for_step(regime):
    algo = build(regime)
    setting = {"digits": dict(lr=0.01, delta=0.3, trade_off_entropy=0.03),
               "imagenet": dict(lr=0.001, delta=1.0, trade_off_entropy=0.0)}[regime]
    block = ref.Block(algo.featurizer.out_features, 1000, 0.5)
    block.load_state_dict(algo.bottleneck.state_dict())
    tr = ref.TLlibAFN(twin(algo.featurizer), block, twin(algo.head), **setting)
    algo.train()

    def reference_step(i, b):
        out = tr.step(b.src_x, b.src_y, b.tgt_x)
        assert_params_match([*algo.featurizer.parameters(), *algo.bottleneck.parameters(), *algo.head.parameters()],
                            [*tr.backbone.parameters(), *tr.bottleneck.parameters(), *tr.head.parameters()],
                            what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, digit_batches(STEPS, batch=16, seed=12))
    assert_losses_match(logs, {"cls": "cls", "norm": "norm"} | ({"entropy": "entropy"} if regime == "digits" else {}))


def test_the_norm_loss_asks_each_norm_to_grow_by_delta():
    """Norms 3 and 4, delta 0.3: the loss is 0.3^2 = 0.09, and its gradient points along each
    feature (d/df of (||f|| - c)^2 at c = ||f|| + 0.3 is -2 x 0.3 f / ||f||, over the 2 images)."""
    f = torch.tensor([[3.0, 0.0], [0.0, 4.0]], requires_grad=True)
    loss = stepwise_norm_loss(f, 0.3)
    assert float(loss.detach()) == pytest.approx(0.09)
    (grad,) = torch.autograd.grad(loss, f)
    torch.testing.assert_close(grad, torch.tensor([[-0.3, 0.0], [0.0, -0.3]]))


def test_it_trains(tmp_path):
    result = run(RunConfig(algo="afn", src="toy-src", tgt="toy-tgt", steps=4, eval_every=2,
                           overrides={"batch_size": 8}, out=str(tmp_path)))
    assert len(result.records) == 2
