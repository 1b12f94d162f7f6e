"""MixStyle: a transcription of its authors' layer, of where their ResNet calls it, and of their
trainer's step.

Repository: KaiyangZhou/Dassl.pytorch, commit c61a1b5: dassl/modeling/ops/mixstyle.py lines 53-124
(``MixStyle``: p 0.5, alpha 0.1, eps 1e-6, ``random`` and ``crossdomain`` mixing);
dassl/modeling/backbone/resnet.py lines 107-145 (one ``MixStyle`` module, ms_p 0.5, ms_a 0.1) and
190-205 (``featuremaps``: the same module called after layer1, layer2, layer3 for
``resnet18_ms_l123``). KaiyangZhou/mixstyle-release, commit 16f7cf1: imcls/trainers/vanilla2.py
lines 31-45 (``Vanilla2.forward_backward``: cross-entropy of the model's output, one optimiser step).

Left out: the activation switches (``run_without_mixstyle``), Dassl's optimiser and scheduler
(the step is handed an optimiser), the accuracy it logs. The network is handed in as its stages:
the layer runs after each stage but the last, as ``featuremaps`` calls it after layer1..layer3 of
four.
"""
from __future__ import annotations

import random

import torch
import torch.nn as nn
from torch.nn import functional as F


class MixStyle(nn.Module):
    def __init__(self, p=0.5, alpha=0.1, eps=1e-6, mix="random"):
        super().__init__()
        self.p = p
        self.beta = torch.distributions.Beta(alpha, alpha)
        self.eps = eps
        self.alpha = alpha
        self.mix = mix
        self._activated = True

    def forward(self, x):
        if not self.training or not self._activated:
            return x

        if random.random() > self.p:
            return x

        B = x.size(0)

        mu = x.mean(dim=[2, 3], keepdim=True)
        var = x.var(dim=[2, 3], keepdim=True)
        sig = (var + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()
        x_normed = (x-mu) / sig

        lmda = self.beta.sample((B, 1, 1, 1))
        lmda = lmda.to(x.device)

        if self.mix == "random":
            # random shuffle
            perm = torch.randperm(B)

        elif self.mix == "crossdomain":
            # split into two halves and swap the order
            perm = torch.arange(B - 1, -1, -1)  # inverse index
            perm_b, perm_a = perm.chunk(2)
            perm_b = perm_b[torch.randperm(perm_b.shape[0])]
            perm_a = perm_a[torch.randperm(perm_a.shape[0])]
            perm = torch.cat([perm_b, perm_a], 0)

        else:
            raise NotImplementedError

        mu2, sig2 = mu[perm], sig[perm]
        mu_mix = mu*lmda + mu2 * (1-lmda)
        sig_mix = sig*lmda + sig2 * (1-lmda)

        return x_normed*sig_mix + mu_mix


class MixStyleNet(nn.Module):
    """``featuremaps`` generalised to the stages handed in: the one MixStyle module after each but
    the last, then the rest of the network (pooling, head)."""

    def __init__(self, stages: list[nn.Module], rest: nn.Module, p=0.5, alpha=0.1, mix="random"):
        super().__init__()
        self.stages, self.rest = nn.ModuleList(stages), rest
        self.mixstyle = MixStyle(p=p, alpha=alpha, mix=mix)

    def forward(self, x):
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.stages) - 1:
                x = self.mixstyle(x)
        return self.rest(x)


class Vanilla2:
    def __init__(self, model: nn.Module, optim: torch.optim.Optimizer):
        self.model, self.optim = model, optim

    def forward_backward(self, input, label):
        output = self.model(input)
        loss = F.cross_entropy(output, label)
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        return {"loss": loss.item()}
