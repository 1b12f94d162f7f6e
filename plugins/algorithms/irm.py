"""Risk penalties across source domains (domain generalisation): IRM and V-REx, as DomainBed runs them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch, by_domain
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM, domainbed_adam


def anneal_iters(rng) -> int:
    """DomainBed's search over the penalty's warm-up: int(10 ** U(0, 4)) steps."""
    return int(10 ** rng.uniform(0, 4))


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IRMv1's penalty of one domain, as DomainBed estimates it without bias: the product of the
    gradients, with respect to a dummy scale w = 1 on the logits, of the risks of the even and the
    odd samples (Arjovsky et al. 2019, eq. of IRMv1; DomainBed's ``IRM._irm_penalty``)."""
    scale = torch.ones((), device=logits.device, requires_grad=True)
    grad_1 = torch.autograd.grad(F.cross_entropy(logits[::2] * scale, y[::2]), [scale], create_graph=True)[0]
    grad_2 = torch.autograd.grad(F.cross_entropy(logits[1::2] * scale, y[1::2]), [scale], create_graph=True)[0]
    return (grad_1 * grad_2).sum()


class _RiskPenalty(ERM):
    """What IRM and V-REx share in DomainBed: every source domain in one forward pass, a risk per
    domain, the penalty at weight 1 for ``*_penalty_anneal_iters`` steps and at its lambda after,
    and Adam's moments cleared at the step the weight jumps (DomainBed builds a new Adam there:
    "it doesn't like the sharp jump in gradient magnitudes"; the rate is constant, so clearing the
    state is the same optimiser, and the trainer's hooks on it stay)."""

    key = ""  # the hyperparameter prefix: irm or vrex

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.optims["model"] = domainbed_adam(self, self.hp)

    def weight(self, step: int) -> float:
        warm = self.hp[f"{self.key}_penalty_anneal_iters"]
        if step == warm:
            self.optims["model"].state.clear()
        return self.hp[f"{self.key}_lambda"] if step >= warm else 1.0

    def risks(self, batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        logits = self.predict(batch.src_x)  # one forward over every domain, as DomainBed's all_x
        return list(zip(by_domain(logits, batch.src_domain), by_domain(batch.src_y, batch.src_domain)))


class IRM(_RiskPenalty):
    """IRM (Arjovsky et al. 2019), DomainBed's: the mean source risk plus the IRMv1 penalty.

    As DomainBed (facebookresearch/DomainBed, algorithms.py ``IRM``; hparams_registry.py): the
    mean over source domains of the cross-entropy, plus ``irm_lambda`` (100) times the mean over
    domains of the IRMv1 penalty (``irm_penalty``), the weight 1 for the first
    ``irm_penalty_anneal_iters`` (500) steps; Adam 1e-3 with its moments reset at that step. The
    loss is not divided by the weight after the warm-up (the IRM authors' code divides; DomainBed
    does not). DG only: it needs several source domains and no target.
    """

    name = "irm"
    task = "classification"
    needs_target = False
    dg_only = True
    key = "irm"
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "irm_lambda": HParam(1e2, log_uniform(-1, 5), "weight of the IRMv1 penalty after the warm-up"),
        "irm_penalty_anneal_iters": HParam(500, anneal_iters, "steps with the penalty at weight 1"),
    }

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        weight = self.weight(step)
        groups = self.risks(batch)
        nll = sum(F.cross_entropy(logits, y) for logits, y in groups) / len(groups)
        penalty = sum(irm_penalty(logits, y) for logits, y in groups) / len(groups)
        loss = nll + weight * penalty
        self.optimise(loss, self.optims["model"])
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


class VREx(_RiskPenalty):
    """V-REx (Krueger et al. 2021), DomainBed's: the mean source risk plus the variance of the risks.

    As DomainBed (algorithms.py ``VREx``; hparams_registry.py): the mean over source domains of
    the cross-entropy plus ``vrex_lambda`` (10) times their variance (population, over domains),
    the weight 1 for the first ``vrex_penalty_anneal_iters`` (500) steps; Adam 1e-3 with its moments
    reset at that step. DG only. (DomainBed logs as ``nll`` the last domain's risk; ``nll`` here is
    the mean it trains on.)
    """

    name = "vrex"
    task = "classification"
    needs_target = False
    dg_only = True
    key = "vrex"
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "vrex_lambda": HParam(1e1, log_uniform(-1, 5), "weight of the variance of the domain risks after the warm-up"),
        "vrex_penalty_anneal_iters": HParam(500, anneal_iters, "steps with the penalty at weight 1"),
    }

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        weight = self.weight(step)
        losses = torch.stack([F.cross_entropy(logits, y) for logits, y in self.risks(batch)])
        mean = losses.mean()
        penalty = ((losses - mean) ** 2).mean()
        loss = mean + weight * penalty
        self.optimise(loss, self.optims["model"])
        return {"loss": loss.item(), "nll": mean.item(), "penalty": penalty.item()}
