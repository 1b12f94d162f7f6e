"""Fish (domain generalisation): gradient matching by a first-order inner loop, as DomainBed runs it."""
from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import nn

from dabench.data import Batch, by_domain
from dabench.hparams import HParam, choice
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM, domainbed_adam


class Fish(ERM):
    """Fish (Shi et al., ICLR 2022), DomainBed's: a copy of the network steps through the source
    domains one after another, and the network moves ``meta_lr`` of the way to it.

    As DomainBed (facebookresearch/DomainBed, algorithms.py ``Fish``, networks.py ``WholeFish``,
    lib/misc.py ``ParamDict``; hparams_registry.py lines 59-60): each step the inner network is
    reset to the network's weights; one Adam step (1e-3) on each source domain's cross-entropy in
    turn, the inner Adam's moments carried from step to step (the only optimiser: the network itself
    is never stepped by gradient); then every entry of the network's state (weights and batch-norm
    statistics) becomes w + ``meta_lr`` (0.5) (w_inner - w). The logged loss is the last domain's.
    DG only: the inner loop runs over source domains.
    """

    name = "fish"
    task = "classification"
    needs_target = False
    dg_only = True
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "meta_lr": HParam(0.5, choice([0.05, 0.1, 0.5]), "share of the way the network moves to the inner network"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.inner = copy.deepcopy(nn.Sequential(self.featurizer, self.classifier))
        self.optims = {"inner": domainbed_adam(self.inner, self.hp)}

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        network = nn.Sequential(self.featurizer, self.classifier)
        self.inner.load_state_dict(network.state_dict())
        for x, y in zip(by_domain(batch.src_x, batch.src_domain), by_domain(batch.src_y, batch.src_domain)):
            loss = F.cross_entropy(self.inner(x), y)
            self.optimise(loss, self.optims["inner"])
        meta, inner, lr = network.state_dict(), self.inner.state_dict(), self.hp["meta_lr"]
        network.load_state_dict({k: meta[k] + lr * (inner[k] + (-meta[k])) for k in meta})
        return {"loss": loss.item()}
