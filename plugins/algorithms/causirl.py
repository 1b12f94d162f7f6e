"""CausIRL (domain generalisation): a distance between two random parts of the batch, as DomainBed runs it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch, by_domain
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.coral import mean_cov_penalty
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM, domainbed_adam
from dabench_plugins.algorithms.mmd import gaussian_mmd


class CausIRLCORAL(ERM):
    """CausIRL with the CORAL distance (Chevalley et al. 2022), DomainBed's: the mean source risk
    plus the distance between the features of two random parts of the batch.

    As DomainBed (facebookresearch/DomainBed, algorithms.py ``AbstractCausIRL``, ``CausIRL_CORAL``;
    hparams_registry.py): each source domain through the network on its own; each domain's
    features cut at a random index (numpy's global generator, checkpointed by the trainer) into a
    first and a second part, the parts of all domains pooled; the loss is the mean of the
    per-domain cross-entropies plus ``mmd_gamma`` (1) times the distance between the pools (here
    DomainBed's CORAL distance: means and covariances; 0 when a pool has fewer than two rows);
    Adam 1e-3. Unlike CORAL, the penalty needs no domain labels to pair domains: it matches
    interventional parts of one mixture. DG only, as DomainBed runs it.
    """

    name = "causirl-coral"
    task = "classification"
    needs_target = False
    dg_only = True
    distance = staticmethod(mean_cov_penalty)
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "mmd_gamma": HParam(1.0, log_uniform(-1, 1), "weight of the distance between the two parts"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.optims["model"] = domainbed_adam(self, self.hp)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        xs, ys = by_domain(batch.src_x, batch.src_domain), by_domain(batch.src_y, batch.src_domain)
        features = [self.featurizer(x) for x in xs]
        objective = 0
        first, second = [], []
        for f, y in zip(features, ys):
            objective = objective + F.cross_entropy(self.classifier(f) + 1e-16, y)
            cut = np.random.randint(0, len(f))
            first.append(f[:cut])
            second.append(f[cut:])
        first, second = torch.cat(first), torch.cat(second)
        penalty = (torch.nan_to_num(self.distance(first, second)) if len(first) > 1 and len(second) > 1
                   else torch.zeros(()))
        objective = objective / len(features)
        self.optimise(objective + self.hp["mmd_gamma"] * penalty, self.optims["model"])
        return {"loss": objective.item(), "penalty": penalty.item()}


class CausIRLMMD(CausIRLCORAL):
    """CausIRL with the MMD distance (Chevalley et al. 2022), DomainBed's: ``causirl-coral`` with
    DomainBed's Gaussian-kernel MMD (gamma 1e-3 ... 1e3) between the two parts. DG only."""

    name = "causirl-mmd"
    task = "classification"
    needs_target = False
    dg_only = True
    distance = staticmethod(gaussian_mmd)
