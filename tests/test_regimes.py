"""Defaults by kind of data: the authors' digit setting on the digit CNN, their ImageNet setting on
other backbones; the run records which, and the CLI shows both."""
from __future__ import annotations

import re

import json

from click.testing import CliRunner
from rich.console import Console

from dabench import cli
from dabench import hparams as hp
from dabench.cli import main
from dabench.registry import algorithms
from dabench.runner import regime_of


def test_a_hyperparameter_takes_its_regimes_default():
    p = hp.HParam(0.01, None, "lr", regimes={"imagenet": 0.001})
    assert p.in_regime("digits").default == 0.01 and p.in_regime("imagenet").default == 0.001
    assert p.in_regime(None) is p
    cdan = algorithms.get("cdan")
    assert hp.defaults(cdan.space("classification", "imagenet"))["disc_hidden"] == 1024
    assert hp.defaults(cdan.space("classification", "digits"))["disc_hidden"] == 500
    assert hp.defaults(cdan.space("classification"))["disc_hidden"] == 500  # no regime: the plain default


def test_the_backbone_decides_the_regime():
    assert regime_of("digit-cnn") == "digits" and regime_of("domainbed-cnn") == "digits"
    assert regime_of("timm:resnet18") == "imagenet"
    assert regime_of("no-such-backbone") == "imagenet"  # refused later with its own message


def test_a_run_records_its_regime_and_the_values_used(tmp_path):
    args = ["run", "--algo", "cdan", "--src", "toy-src", "--tgt", "toy-tgt", "--steps", "20", "--eval-every", "20",
            "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    config = json.loads(next(tmp_path.rglob("config.json")).read_text())
    assert config["regime"] == "digits" and config["backbone"] == "digit-cnn"
    assert config["hparams"]["disc_hidden"] == 500 and config["hparams"]["schedule"] == "step"
    steps = [json.loads(line) for line in next(tmp_path.rglob("steps.jsonl")).read_text().splitlines()]
    assert "dom" not in steps[1] and "dom" in steps[2]  # the warm-up tenth (2 of 20 steps) trains the classifier alone


def test_an_unknown_variant_value_exits_2_listing_the_values(tmp_path):
    args = ["run", "--algo", "cdan", "--src", "toy-src", "--tgt", "toy-tgt", "--steps", "2", "-H", "schedule=cosine",
            "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert "must be one of step, inv" in r.output and "Traceback" not in r.output
    assert not any(tmp_path.iterdir()) if tmp_path.exists() else True


def test_list_shows_each_regimes_defaults(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=400))  # no folding inside table cells, whatever the terminal
    out = CliRunner().invoke(main, ["list", "algorithms", "cdan"]).output
    assert "default: digits" in out and "default: imagenet" in out
    assert re.search(r"disc_hidden +│ 500 +│ 1024 +│ not searched +│ width of the discriminator", out)


def test_domainbeds_mnist_cnn_is_its_layers_in_its_order():
    """domainbed/networks.py MNIST_CNN: conv -> ReLU -> GroupNorm(8) four times, then the mean over the map."""
    import torch
    from torch import nn

    from dabench.registry import backbones

    net = backbones.get("domainbed-cnn")(None, image_size=28)
    convs = [m for m in net.lower if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (2, 2)), (128, 128, (3, 3), (1, 1)), (128, 128, (3, 3), (1, 1))]
    kinds = [type(m).__name__ for m in net.lower]
    assert kinds == ["Conv2d", "ReLU", "GroupNorm"] * 4 and all(m.num_groups == 8 for m in net.lower if isinstance(m, nn.GroupNorm))
    x = torch.randn(2, 3, 28, 28)
    assert net(x).shape == (2, 128) and torch.allclose(net(x), net.lower(x).mean((2, 3)))
