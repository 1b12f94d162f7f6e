"""MLDG (domain generalisation): meta-learning across source domains, first order, as DomainBed runs it."""
from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch, by_domain
from dabench.hparams import HParam, choice, log_uniform
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM, domainbed_adam


def meta_split(groups: list[tuple[torch.Tensor, torch.Tensor]], meta_test: int) -> list[tuple[tuple, tuple]]:
    """The source domains in a random order, the last ``meta_test`` held out as meta-test; each
    meta-train domain paired with a meta-test one in turn, both cut to the shorter length:
    DomainBed's ``split_meta_train_test``."""
    perm = torch.randperm(len(groups)).tolist()
    pairs = []
    for i, j in zip(perm[:len(groups) - meta_test], itertools.cycle(perm[-meta_test:])):
        (xi, yi), (xj, yj) = groups[i], groups[j]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


class MLDG(ERM):
    """MLDG (Li et al., AAAI 2018, Algorithm 1 / eq. 3), DomainBed's first-order version: the step
    that helps the meta-train domains, checked on a held-out meta-test domain.

    As DomainBed (facebookresearch/DomainBed, algorithms.py ``MLDG``, lib/misc.py
    ``split_meta_train_test``; hparams_registry.py): ``n_meta_test`` (2) of the source domains are
    meta-test each step; for each meta-train domain i (paired with a meta-test domain j), a copy of
    the network takes one Adam step on L_i; the network's gradient gathers (G_i + ``mldg_beta`` (1)
    x the gradient of L_j at the copy's stepped weights) / number of domains, without second
    derivatives; then one Adam step (1e-3). The network itself never runs forward in training, so
    its batch-norm statistics stay as built (as in DomainBed). The logged loss is DomainBed's:
    (sum of L_i + beta L_j) / number of domains. DG only.
    """

    name = "mldg"
    task = "classification"
    needs_target = False
    dg_only = True
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "mldg_beta": HParam(1.0, log_uniform(-1, 1), "weight of the meta-test loss"),
        "n_meta_test": HParam(2, choice([1, 2]), "source domains held out as meta-test each step"),
    }

    @classmethod
    def refuses(cls, hparams: dict, sources: int) -> str | None:
        if (refused := super().refuses(hparams, sources)) is not None:
            return refused
        if sources <= hparams["n_meta_test"]:
            return (f"it holds n_meta_test={hparams['n_meta_test']} source domains out as meta-test each step and needs "
                    f"one more to meta-train on; the run has {sources} source domain(s). Add a source (--src a,b,c) "
                    "or pass -H n_meta_test=1.")
        return None

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.optims["model"] = domainbed_adam(self, self.hp)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        groups = list(zip(by_domain(batch.src_x, batch.src_domain), by_domain(batch.src_y, batch.src_domain)))
        network = nn.Sequential(self.featurizer, self.classifier)
        optim = self.optims["model"]
        optim.zero_grad()
        for p in network.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        beta, objective = self.hp["mldg_beta"], 0.0
        for (xi, yi), (xj, yj) in meta_split(groups, self.hp["n_meta_test"]):
            inner = copy.deepcopy(network)
            inner_opt = domainbed_adam(inner, self.hp)
            inner_loss = F.cross_entropy(inner(xi), yi)
            inner_opt.zero_grad()
            inner_loss.backward()
            inner_opt.step()
            for p, q in zip(network.parameters(), inner.parameters()):
                if q.grad is not None:
                    p.grad.data.add_(q.grad.data / len(groups))
            objective += inner_loss.item()
            outer_loss = F.cross_entropy(inner(xj), yj)
            grads = torch.autograd.grad(outer_loss, list(inner.parameters()), allow_unused=True)
            objective += (beta * outer_loss).item()
            for p, g in zip(network.parameters(), grads):
                if g is not None:
                    p.grad.data.add_(beta * g.data / len(groups))
        optim.step()
        return {"loss": objective / len(groups)}
