"""Group DRO (domain generalisation): the worst source domain weighted up, as DomainBed runs it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch, by_domain
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM, domainbed_adam


class GroupDRO(ERM):
    """Group DRO (Sagawa et al. 2020, Algorithm 1), DomainBed's: the source risks weighted by q.

    As DomainBed (facebookresearch/DomainBed, algorithms.py ``GroupDRO``; hparams_registry.py):
    each source domain through the network on its own; q starts at 1 per domain, and every step
    q_m *= exp(``groupdro_eta`` (0.01) x risk_m), q /= sum q, and the loss is sum_m q_m risk_m;
    Adam 1e-3, constant. q is kept in the weights (a resumed run continues it). DG only.
    """

    name = "groupdro"
    task = "classification"
    needs_target = False
    dg_only = True
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "groupdro_eta": HParam(1e-2, log_uniform(-3, -1), "step size of the exponentiated update of the domain weights"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.optims["model"] = domainbed_adam(self, self.hp)
        self.register_buffer("q", torch.ones(0))  # one weight per source domain, from the first batch

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        q = state_dict.get(prefix + "q")
        if q is not None:
            self.q = torch.empty_like(q, device=self.q.device)  # the saved run's number of domains
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        xs, ys = by_domain(batch.src_x, batch.src_domain), by_domain(batch.src_y, batch.src_domain)
        if not len(self.q):
            self.q = torch.ones(len(xs), device=batch.src_x.device)
        losses = torch.stack([F.cross_entropy(self.predict(x), y) for x, y in zip(xs, ys)])
        self.q *= (self.hp["groupdro_eta"] * losses.detach()).exp()
        self.q /= self.q.sum()
        loss = torch.dot(losses, self.q)
        self.optimise(loss, self.optims["model"])
        return {"loss": loss.item(), **{f"q{m}": float(w) for m, w in enumerate(self.q)}}
