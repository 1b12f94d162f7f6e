"""SagNet's training step, transcribed from DomainBed's SagNet.

Repository facebookresearch/DomainBed, commit b93c22a1cfc3b2428398272c1a116c8de1f4139e
(2024-12-31), ``domainbed/algorithms.py`` lines 1126-1245 (class SagNet):
- lines 1175-1182: one Adam optimiser each for network_f, network_c and network_s, lr and weight
  decay from the hyperparameters (``hparams_registry.py``: lr 1e-3 on small images, 5e-5
  otherwise; weight decay 0; ``sag_w_adv`` 0.1).
- lines 1184-1214: forward_c = network_c(randomize(network_f(x), "style")), forward_s =
  network_s(randomize(network_f(x), "content")); randomize draws alpha ~ U(0, 1) per sample, then
  a permutation, normalises by the mean and the unbiased variance (+ eps 1e-5) per sample over the
  last dimension (per channel over H*W for a 4-D map), then mixes mean and variance with the
  partner's (style) or takes the partner's detached normalised content (content).
- lines 1216-1242: update: zero f and c, CE of forward_c, step f and c; zero s, CE of forward_s,
  step s; zero f, w_adv * -mean log_softmax(forward_s) over classes and batch, step f; it logs the
  adversarial loss already multiplied by w_adv.

Left out: DomainBed's Featurizer and Classifier construction (the three networks are handed in)
and the ``unlabeled`` argument, which SagNet ignores. The authors' own code (hyeonseobnam/sagnet)
trains differently; the plugin's docstring lists how.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SagNetReference:
    def __init__(self, network_f: nn.Module, network_c: nn.Module, network_s: nn.Module, hparams: dict):
        self.network_f, self.network_c, self.network_s = network_f, network_c, network_s

        def opt(p):
            return torch.optim.Adam(p, lr=hparams["lr"], weight_decay=hparams["weight_decay"])

        self.optimizer_f = opt(self.network_f.parameters())
        self.optimizer_c = opt(self.network_c.parameters())
        self.optimizer_s = opt(self.network_s.parameters())
        self.weight_adv = hparams["sag_w_adv"]

    def parameters(self) -> list[torch.Tensor]:
        return [*self.network_f.parameters(), *self.network_c.parameters(), *self.network_s.parameters()]

    def forward_c(self, x):
        return self.network_c(self.randomize(self.network_f(x), "style"))

    def forward_s(self, x):
        return self.network_s(self.randomize(self.network_f(x), "content"))

    def randomize(self, x, what="style", eps=1e-5):
        sizes = x.size()
        alpha = torch.rand(sizes[0], 1)

        if len(sizes) == 4:
            x = x.view(sizes[0], sizes[1], -1)
            alpha = alpha.unsqueeze(-1)

        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True)

        x = (x - mean) / (var + eps).sqrt()

        idx_swap = torch.randperm(sizes[0])
        if what == "style":
            mean = alpha * mean + (1 - alpha) * mean[idx_swap]
            var = alpha * var + (1 - alpha) * var[idx_swap]
        else:
            x = x[idx_swap].detach()

        x = x * (var + eps).sqrt() + mean
        return x.view(*sizes)

    def update(self, minibatches):
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])

        self.optimizer_f.zero_grad()
        self.optimizer_c.zero_grad()
        loss_c = F.cross_entropy(self.forward_c(all_x), all_y)
        loss_c.backward()
        self.optimizer_f.step()
        self.optimizer_c.step()

        self.optimizer_s.zero_grad()
        loss_s = F.cross_entropy(self.forward_s(all_x), all_y)
        loss_s.backward()
        self.optimizer_s.step()

        self.optimizer_f.zero_grad()
        loss_adv = -F.log_softmax(self.forward_s(all_x), dim=1).mean(1).mean()
        loss_adv = loss_adv * self.weight_adv
        loss_adv.backward()
        self.optimizer_f.step()

        return {"loss_c": loss_c.item(), "loss_s": loss_s.item(), "loss_adv": loss_adv.item()}
