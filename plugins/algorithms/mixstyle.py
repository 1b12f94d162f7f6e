"""MixStyle (domain generalisation): feature statistics of two images mixed inside the network, as
its authors' layer (Dassl) does."""
from __future__ import annotations

import random

import torch
from torch import nn

from dabench.errors import DabenchError
from dabench.hparams import HParam, choice, uniform
from dabench_plugins.algorithms.erm import ERM


class MixStyleLayer(nn.Module):
    """The authors' layer (KaiyangZhou/Dassl.pytorch, dassl/modeling/ops/mixstyle.py ``MixStyle``,
    commit c61a1b5): in training, with probability ``p``, each image's channel means and standard
    deviations over H x W (detached) are replaced by a Beta(alpha, alpha) mix of its own and another
    image's. ``random``: the other image is a random permutation of the batch; ``crossdomain``: the
    batch reversed and each half shuffled (built for batches of two domains in two halves)."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6, mix: str = "random"):
        super().__init__()
        self.p, self.alpha, self.eps, self.mix = p, alpha, eps, mix
        self.beta = torch.distributions.Beta(alpha, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or random.random() > self.p:
            return x
        n = x.size(0)
        mu = x.mean(dim=[2, 3], keepdim=True)
        sig = (x.var(dim=[2, 3], keepdim=True) + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()
        normed = (x - mu) / sig
        lmda = self.beta.sample((n, 1, 1, 1)).to(x.device)
        if self.mix == "random":
            perm = torch.randperm(n)
        else:
            b, a = torch.arange(n - 1, -1, -1).chunk(2)
            perm = torch.cat([b[torch.randperm(b.shape[0])], a[torch.randperm(a.shape[0])]])
        mu_mix = mu * lmda + mu[perm] * (1 - lmda)
        sig_mix = sig * lmda + sig[perm] * (1 - lmda)
        return normed * sig_mix + mu_mix

    def pre_hook(self, module: nn.Module, args: tuple) -> tuple:
        return (self(args[0]), *args[1:])


def stage_inputs(backbone: nn.Module) -> list[nn.Module]:
    """The modules that begin each stage after the first, in order: a ResNet's ``layer2`` ..
    ``layer4`` (timm), or, in a backbone whose ``lower`` is a plain stack, every convolution after
    the first (the digit CNN: its second convolution; DomainBed's MNIST CNN: its last three)."""
    layers = dict(backbone.named_modules())
    resnet = [m for name, m in layers.items() if name.rsplit(".", 1)[-1] in ("layer2", "layer3", "layer4")]
    if len(resnet) == 3:
        return resnet
    lower = getattr(backbone, "lower", None)
    if isinstance(lower, nn.Sequential):
        convs = [m for m in lower if isinstance(m, nn.Conv2d)]
        if len(convs) > 1:
            return convs[1:]
    raise DabenchError(f"mixstyle does not know where the stages of this backbone ({type(backbone).__name__}) "
                       "begin: it needs a ResNet (layer1..layer4) or a backbone whose lower part is a stack of "
                       "convolutions. Use another --backbone, or erm.")


class MixStyle(ERM):
    """MixStyle (Zhou et al., ICLR 2021): ERM with the authors' MixStyle layer after the early
    stages of the network. Not one of DomainBed's algorithms: the source is the authors' code.

    As the authors (KaiyangZhou/mixstyle-release, imcls: ``Vanilla2`` trainer, plain cross-entropy;
    the layer and the ResNets that carry it in KaiyangZhou/Dassl.pytorch, dassl/modeling/ops/
    mixstyle.py and backbone/resnet.py ``resnet18_ms_l123``): p 0.5, alpha 0.1, random mixing;
    the layer after every stage but the last (``stages=all-but-last``: a ResNet's layer1, layer2
    and layer3, the authors' PACS setting; the digit CNN's first convolution block; ``first-two``:
    layer1 and layer2, their Office-Home setting). Active in training only; the network's weights
    and forward at evaluation are ERM's. The authors publish no digit setting; the optimiser is
    ERM's here (theirs for PACS: SGD 0.001, cosine, batch 64, an ImageNet ResNet-18), so the
    comparison with ERM isolates the layer. Needs no domain labels (random mixing), so UDA runs it
    source-only; ``-H mix=crossdomain`` is the authors' two-domain mixing (the batch reversed, its
    halves shuffled), meant for batches of two domains.
    """

    name = "mixstyle"
    task = "classification"
    needs_target = False
    hparams = {
        **ERM.hparams,
        "mixstyle_p": HParam(0.5, choice([0.1, 0.3, 0.5, 0.7]), "probability that a MixStyle layer mixes a batch"),
        "mixstyle_alpha": HParam(0.1, uniform(0.1, 0.3), "Beta(alpha, alpha) of the mixing weight"),
        "mix": HParam("random", None, "random: a random partner; crossdomain: the authors' two-domain halves",
                      choices=("random", "crossdomain")),
        "stages": HParam("all-but-last", None, "after which stages: all-but-last (the authors' PACS l123) or "
                         "first-two (their Office-Home l12)", choices=("all-but-last", "first-two")),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        starts = stage_inputs(backbone)
        if self.hp["stages"] == "first-two":
            starts = starts[:2]
        self.mixers = nn.ModuleList(MixStyleLayer(self.hp["mixstyle_p"], self.hp["mixstyle_alpha"], mix=self.hp["mix"])
                                    for _ in starts)
        for module, mixer in zip(starts, self.mixers):
            module.register_forward_pre_hook(mixer.pre_hook)
