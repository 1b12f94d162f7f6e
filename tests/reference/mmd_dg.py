"""DomainBed's MMD (domain generalisation): a transcription of one ``update``.

Repository: facebookresearch/DomainBed, commit b93c22a1cfc3b2428398272c1a116c8de1f4139e,
domainbed/algorithms.py lines 973-1048 (``AbstractMMD`` with gaussian=True, the class ``MMD``
builds: ``my_cdist``, ``gaussian_kernel`` over gammas 1e-3 ... 1e3, ``mmd``, ``update``) and lines
107-111 (ERM's optimiser, Adam, which AbstractMMD inherits); domainbed/hparams_registry.py line
101 (mmd_gamma 1) and lines 205-219 (lr 1e-3 and weight decay 0 on small images).

Left out: the featurizer and classifier DomainBed builds (handed in: the parity test gives copies of
the plugin's backbone and head), the mean-and-covariance kernel of ``CORAL`` (gaussian=False),
logging. The optimiser is built by ``make_optimizer`` (default: DomainBed's Adam), so that a test
can hand the plugin's SGD and check the objective and its gradient step apart from the optimiser.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def adam(params, lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class DomainBedMMD:
    def __init__(self, featurizer: nn.Module, classifier: nn.Module, mmd_gamma: float = 1.0,
                 make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None):
        self.featurizer, self.classifier, self.mmd_gamma = featurizer, classifier, mmd_gamma
        self.network = nn.Sequential(featurizer, classifier)
        self.optimizer = (make_optimizer or (lambda net: adam(net.parameters())))(self.network)

    @staticmethod
    def my_cdist(x1, x2):
        x1_norm = x1.pow(2).sum(dim=-1, keepdim=True)
        x2_norm = x2.pow(2).sum(dim=-1, keepdim=True)
        res = torch.addmm(x2_norm.transpose(-2, -1), x1, x2.transpose(-2, -1), alpha=-2).add_(x1_norm)
        return res.clamp_min_(1e-30)

    def gaussian_kernel(self, x, y, gamma=(0.001, 0.01, 0.1, 1, 10, 100, 1000)):
        D = self.my_cdist(x, y)
        K = torch.zeros_like(D)
        for g in gamma:
            K.add_(torch.exp(D.mul(-g)))
        return K

    def mmd(self, x, y):
        Kxx = self.gaussian_kernel(x, x).mean()
        Kyy = self.gaussian_kernel(y, y).mean()
        Kxy = self.gaussian_kernel(x, y).mean()
        return Kxx + Kyy - 2 * Kxy

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        objective = 0
        penalty = 0
        nmb = len(minibatches)
        features = [self.featurizer(xi) for xi, _ in minibatches]
        classifs = [self.classifier(fi) for fi in features]
        targets = [yi for _, yi in minibatches]
        for i in range(nmb):
            objective += F.cross_entropy(classifs[i], targets[i])
            for j in range(i + 1, nmb):
                penalty += self.mmd(features[i], features[j])
        objective /= nmb
        if nmb > 1:
            penalty /= (nmb * (nmb - 1) / 2)
        self.optimizer.zero_grad()
        (objective + (self.mmd_gamma * penalty)).backward()
        self.optimizer.step()
        if torch.is_tensor(penalty):
            penalty = penalty.item()
        return {"loss": objective.item(), "penalty": penalty}
