"""Inter-domain Mixup (domain generalisation), as DomainBed runs it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch, by_domain
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM, domainbed_adam


def random_pairs(groups: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[tuple, tuple]]:
    """Each domain's minibatch paired with the next one in a random order (the last with the
    first), both cut to the shorter length: DomainBed's ``random_pairs_of_minibatches``."""
    perm = torch.randperm(len(groups)).tolist()
    pairs = []
    for i in range(len(groups)):
        (xi, yi), (xj, yj) = groups[perm[i]], groups[perm[(i + 1) % len(groups)]]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


class Mixup(ERM):
    """Inter-domain Mixup (Xu et al. 2020; Yan et al. 2020), DomainBed's: images of two source
    domains mixed, the loss mixed alike.

    As DomainBed (facebookresearch/DomainBed, algorithms.py ``Mixup``, lib/misc.py
    ``random_pairs_of_minibatches``; hparams_registry.py): the source domains paired in a random
    cycle; for each pair, lambda ~ Beta(``mixup_alpha``, ``mixup_alpha``) (0.2, from numpy's global
    generator, which the trainer checkpoints), x = lambda x_i + (1 - lambda) x_j, the loss
    lambda CE(f(x), y_i) + (1 - lambda) CE(f(x), y_j), summed over pairs and divided by the number
    of domains; Adam 1e-3. DG only.
    """

    name = "mixup"
    task = "classification"
    needs_target = False
    dg_only = True
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "mixup_alpha": HParam(0.2, log_uniform(-1, 1), "Beta(alpha, alpha) of the mixing weight"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.optims["model"] = domainbed_adam(self, self.hp)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        groups = list(zip(by_domain(batch.src_x, batch.src_domain), by_domain(batch.src_y, batch.src_domain)))
        objective = 0
        for (xi, yi), (xj, yj) in random_pairs(groups):
            lam = np.random.beta(self.hp["mixup_alpha"], self.hp["mixup_alpha"])
            predictions = self.predict(lam * xi + (1 - lam) * xj)
            objective = objective + lam * F.cross_entropy(predictions, yi) + (1 - lam) * F.cross_entropy(predictions, yj)
        objective = objective / len(groups)
        self.optimise(objective, self.optims["model"])
        return {"loss": objective.item()}
