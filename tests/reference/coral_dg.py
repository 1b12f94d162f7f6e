"""DomainBed's CORAL (domain generalisation), from its repository.

Repository facebookresearch/DomainBed, commit b93c22a1cfc3b2428398272c1a116c8de1f4139e,
domainbed/algorithms.py:
- lines 973-985: ``AbstractMMD``, which ``CORAL`` (lines 1061-1069) builds with ``gaussian=False``
  (kernel type ``mean_cov``);
- lines 1004-1021: ``mmd`` for ``mean_cov``: mean squared difference of the means plus mean squared
  difference of the unbiased covariances;
- lines 1023-1048: ``update``: each domain's minibatch through the featurizer on its own, the
  classifier on each, the per-domain cross-entropies averaged, the penalty summed over pairs i < j
  and divided by the number of pairs, ``objective + mmd_gamma * penalty`` in one optimiser step.
domainbed/hparams_registry.py line 101: ``mmd_gamma`` 1 by default.

Left out: DomainBed's optimiser (Adam) is handed in; the bench trains every classification method,
ERM included, with its shared annealed SGD.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mmd_mean_cov(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mean_x = x.mean(0, keepdim=True)
    mean_y = y.mean(0, keepdim=True)
    cent_x = x - mean_x
    cent_y = y - mean_y
    cova_x = (cent_x.t() @ cent_x) / (len(x) - 1)
    cova_y = (cent_y.t() @ cent_y) / (len(y) - 1)
    mean_diff = (mean_x - mean_y).pow(2).mean()
    cova_diff = (cova_x - cova_y).pow(2).mean()
    return mean_diff + cova_diff


class DomainBedCORAL:
    def __init__(self, featurizer: nn.Module, classifier: nn.Module, mmd_gamma: float,
                 optimizer: torch.optim.Optimizer):
        self.featurizer, self.classifier = featurizer, classifier
        self.mmd_gamma, self.optimizer = mmd_gamma, optimizer

    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        objective = 0
        penalty = 0
        nmb = len(minibatches)
        features = [self.featurizer(xi) for xi, _ in minibatches]
        classifs = [self.classifier(fi) for fi in features]
        targets = [yi for _, yi in minibatches]
        for i in range(nmb):
            objective += F.cross_entropy(classifs[i], targets[i])
            for j in range(i + 1, nmb):
                penalty += mmd_mean_cov(features[i], features[j])
        objective /= nmb
        if nmb > 1:
            penalty /= (nmb * (nmb - 1) / 2)
        self.optimizer.zero_grad()
        (objective + (self.mmd_gamma * penalty)).backward()
        self.optimizer.step()
        if torch.is_tensor(penalty):
            penalty = penalty.item()
        return {"loss": objective.item(), "penalty": penalty}
