"""DomainBed's IRM, V-REx and GroupDRO (domain generalisation): transcriptions of their ``update``.

Repository: facebookresearch/DomainBed, commit b93c22a1cfc3b2428398272c1a116c8de1f4139e,
domainbed/algorithms.py lines 581-634 (``IRM``: ``_irm_penalty``, ``update``, the Adam reset),
lines 745-789 (``VREx``), lines 823-855 (``GroupDRO``), lines 107-111 (ERM's Adam, which all three
inherit); domainbed/hparams_registry.py lines 89-92 (irm_lambda 1e2, irm_penalty_anneal_iters 500),
97-98 (groupdro_eta 1e-2), 110-113 (vrex_lambda 1e1, vrex_penalty_anneal_iters 500), 205-219
(lr 1e-3, weight decay 0 on small images).

Left out: the featurizer and classifier DomainBed builds (handed in as one network: the parity test
gives a copy of the plugin's), the ``device`` strings (CPU here), logging beyond the losses.
``update_count`` is a plain int.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import autograd, nn


def adam(network: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)


class DomainBedIRM:
    def __init__(self, network: nn.Module, irm_lambda: float = 1e2, irm_penalty_anneal_iters: int = 500):
        self.network, self.irm_lambda, self.anneal = network, irm_lambda, irm_penalty_anneal_iters
        self.optimizer = adam(network)
        self.update_count = 0

    @staticmethod
    def _irm_penalty(logits, y):
        scale = torch.tensor(1.).requires_grad_()
        loss_1 = F.cross_entropy(logits[::2] * scale, y[::2])
        loss_2 = F.cross_entropy(logits[1::2] * scale, y[1::2])
        grad_1 = autograd.grad(loss_1, [scale], create_graph=True)[0]
        grad_2 = autograd.grad(loss_2, [scale], create_graph=True)[0]
        result = torch.sum(grad_1 * grad_2)
        return result

    def update(self, minibatches):
        penalty_weight = self.irm_lambda if self.update_count >= self.anneal else 1.0
        nll = 0.
        penalty = 0.

        all_x = torch.cat([x for x, y in minibatches])
        all_logits = self.network(all_x)
        all_logits_idx = 0
        for i, (x, y) in enumerate(minibatches):
            logits = all_logits[all_logits_idx:all_logits_idx + x.shape[0]]
            all_logits_idx += x.shape[0]
            nll += F.cross_entropy(logits, y)
            penalty += self._irm_penalty(logits, y)
        nll /= len(minibatches)
        penalty /= len(minibatches)
        loss = nll + (penalty_weight * penalty)

        if self.update_count == self.anneal:
            self.optimizer = adam(self.network)

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        self.update_count += 1
        return {'loss': loss.item(), 'nll': nll.item(), 'penalty': penalty.item()}


class DomainBedVREx:
    def __init__(self, network: nn.Module, vrex_lambda: float = 1e1, vrex_penalty_anneal_iters: int = 500):
        self.network, self.vrex_lambda, self.anneal = network, vrex_lambda, vrex_penalty_anneal_iters
        self.optimizer = adam(network)
        self.update_count = 0

    def update(self, minibatches):
        if self.update_count >= self.anneal:
            penalty_weight = self.vrex_lambda
        else:
            penalty_weight = 1.0

        nll = 0.

        all_x = torch.cat([x for x, y in minibatches])
        all_logits = self.network(all_x)
        all_logits_idx = 0
        losses = torch.zeros(len(minibatches))
        for i, (x, y) in enumerate(minibatches):
            logits = all_logits[all_logits_idx:all_logits_idx + x.shape[0]]
            all_logits_idx += x.shape[0]
            nll = F.cross_entropy(logits, y)
            losses[i] = nll

        mean = losses.mean()
        penalty = ((losses - mean) ** 2).mean()
        loss = mean + penalty_weight * penalty

        if self.update_count == self.anneal:
            self.optimizer = adam(self.network)

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        self.update_count += 1
        return {'loss': loss.item(), 'nll': nll.item(), 'mean': mean.item(), 'penalty': penalty.item()}


class DomainBedGroupDRO:
    def __init__(self, network: nn.Module, groupdro_eta: float = 1e-2):
        self.network, self.eta = network, groupdro_eta
        self.optimizer = adam(network)
        self.q = torch.Tensor()

    def update(self, minibatches):
        if not len(self.q):
            self.q = torch.ones(len(minibatches))

        losses = torch.zeros(len(minibatches))

        for m in range(len(minibatches)):
            x, y = minibatches[m]
            losses[m] = F.cross_entropy(self.network(x), y)
            self.q[m] *= (self.eta * losses[m].data).exp()

        self.q /= self.q.sum()

        loss = torch.dot(losses, self.q)

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        return {'loss': loss.item(), **{f'q{m}': float(w) for m, w in enumerate(self.q)}}
