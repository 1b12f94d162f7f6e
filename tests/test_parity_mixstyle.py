"""MixStyle against a transcription of its authors' layer and trainer step (tests/reference/mixstyle.py):
the same weights, batches and random state (Python's for the layer's coin, torch's for Beta and
the permutation), the plugin's optimiser handed to the transcription; losses and every parameter
after every step agree to 1e-5 relative."""
from __future__ import annotations

import random

import pytest
import torch

from dabench.errors import DabenchError
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.mixstyle import MixStyleLayer, stage_inputs
from reference import mixstyle as ref
from reference.harness import assert_losses_match, assert_params_match, run_side_by_side
from test_dg import toy_mid  # noqa: F401 - registers the third toy domain
from test_parity_domainbed_dg import dg_batches

STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")


def build(backbone: str = "digit-cnn", **hp):
    cls = algorithms.get("mixstyle")
    torch.manual_seed(0)
    return cls(backbones.get(backbone)(None, image_size=28), 10, defaults(cls.space("classification", "digits")) | hp, STEPS)


def erm():
    cls = algorithms.get("erm")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", "digits")), STEPS)


@pytest.mark.parametrize("mix", ["random", "crossdomain"])
def test_mixstyle_matches_the_authors_step_for_step(mix):
    algo = build(mix=mix)
    algo.train()
    plain = erm()  # the same initial weights without the plugin's hooks (a copy of algo's would carry them)
    assert all(torch.equal(a, b) for a, b in zip(algo.state_dict().values(), plain.state_dict().values()))
    lower = plain.featurizer.lower
    net = ref.MixStyleNet([lower[:3], lower[3:]], torch.nn.Sequential(plain.featurizer.upper, plain.classifier),
                          p=0.5, alpha=0.1, mix=mix)
    net.train()
    optim = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    trainer = ref.Vanilla2(net, optim)
    mixed = []

    def plugin_step(i, b):
        random.seed(50 + i)
        return algo.update(b, i)

    def reference_step(i, b):
        random.seed(50 + i)
        mixed.append(random.random() <= 0.5)
        random.seed(50 + i)
        for group in optim.param_groups:  # ERM's annealed rate, which the plugin keeps
            group["lr"] = 0.01 / (1 + 10 * i / (STEPS - 1)) ** 0.75
        out = trainer.forward_backward(b.src_x, b.src_y)
        assert_params_match([*algo.featurizer.parameters(), *algo.classifier.parameters()], net.parameters(),
                            what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(plugin_step, reference_step, dg_batches(STEPS))
    assert_losses_match(logs, {"cls": "loss"})
    assert 0 < sum(mixed) < STEPS  # some steps mixed, some did not


def test_the_layer_swaps_statistics_by_hand():
    """Two images, cross-domain mixing (the partner of each is the other), the mixing weight 0:
    each image leaves with the other's channel mean and standard deviation; weight 1 gives the
    image back; evaluation mode never mixes."""
    g = torch.Generator().manual_seed(0)
    x = torch.stack([1 + 2 * torch.randn(2, 8, 8, generator=g), -3 + 0.5 * torch.randn(2, 8, 8, generator=g)])
    layer = MixStyleLayer(p=1.0, mix="crossdomain").train()
    for weight, expect in [(0.0, x.flip(0)), (1.0, x)]:
        layer.beta.sample = lambda shape, w=weight: torch.full(shape, w)
        out = layer(x)
        torch.testing.assert_close(out.mean((2, 3)), expect.mean((2, 3)), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.std((2, 3)), expect.std((2, 3)), atol=1e-4, rtol=1e-4)
    assert torch.equal(layer.eval()(x), x)


def test_the_layers_sit_after_every_stage_but_the_last():
    digit = build()
    assert stage_inputs(digit.featurizer) == [digit.featurizer.lower[3]] and len(digit.mixers) == 1
    domainbed = build("domainbed-cnn")
    assert stage_inputs(domainbed.featurizer) == [domainbed.featurizer.lower[i] for i in (3, 6, 9)]
    assert len(build("domainbed-cnn", stages="first-two").mixers) == 2
    # the weights are ERM's: the same names, and at evaluation the same outputs
    plain = erm()
    assert digit.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(4, 3, 28, 28)
    assert torch.equal(digit.eval().predict(x), plain.eval().predict(x))


def test_a_backbone_without_stages_is_refused():
    class Flat(torch.nn.Module):
        out_features = 4

        def forward(self, x):
            return x.flatten(1)[:, :4]

    cls = algorithms.get("mixstyle")
    with pytest.raises(DabenchError, match="where the stages"):
        cls(Flat(), 10, defaults(cls.space("classification", "digits")), STEPS)


@pytest.mark.parametrize("setting", ["dg", "uda"])
def test_it_trains(tmp_path, setting):
    src = "toy-src,toy-mid" if setting == "dg" else "toy-src"
    result = run(RunConfig(algo="mixstyle", src=src, tgt="toy-tgt", setting=setting, steps=4, eval_every=2,
                           overrides={"batch_size": 8}, out=str(tmp_path)))
    assert len(result.records) == 2 and 0 <= result.records[-1]["tgt-test"]["acc"] <= 1
