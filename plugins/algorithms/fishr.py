"""Fishr (domain generalisation): the variances of per-sample classifier gradients matched across
source domains, as DomainBed runs it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from dabench.data import Batch, by_domain
from dabench.hparams import HParam, int_uniform, log_uniform, uniform
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM, domainbed_adam


def per_sample_gradients(head: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, P): row i is the gradient of sample i's cross-entropy with respect to every parameter of
    ``head`` (flattened, in ``named_parameters`` order), differentiable with respect to ``z`` and the
    parameters (DomainBed gets the same rows from BackPACK's ``BatchGrad`` with create_graph)."""
    params = dict(head.named_parameters())

    def loss(p, zi, yi):
        return F.cross_entropy(functional_call(head, p, (zi.unsqueeze(0),)), yi.unsqueeze(0))

    rows = vmap(grad(loss), in_dims=(None, 0, 0))(params, z, y)
    return torch.cat([rows[k].flatten(1) for k in params], dim=1)


def fishr_penalty(variances: torch.Tensor) -> torch.Tensor:
    """(D, P) gradient variances of D domains -> the mean over domains of the mean squared
    difference to their mean (DomainBed's ``_compute_distance_grads_var``)."""
    return (variances - variances.mean(0, keepdim=True)).pow(2).mean(1).mean()


class Fishr(ERM):
    """Fishr (Rame et al., ICML 2022), DomainBed's: the cross-entropy plus ``lambda`` times the
    spread across source domains of the variance of per-sample gradients of the classifier.

    As DomainBed (facebookresearch/DomainBed, algorithms.py ``Fishr``; lib/misc.py ``MovingAverage``
    and ``l2_between_dicts``; hparams_registry.py ``Fishr``): every source domain in one forward;
    for each sample the gradient of its cross-entropy with respect to the classifier's parameters
    (the whole head: DomainBed extends its whole ``Classifier`` with BackPACK; here the MLP head
    ERM trains, both layers); per domain the variance of those gradients over its samples,
    smoothed by an exponential moving average (``ema`` 0.95, the first step from zero, divided by
    1 - ema so its scale does not depend on ema; the average carried detached); the penalty is the
    mean over domains of the mean squared distance of a domain's variances to their mean over
    domains. Loss: mean cross-entropy over the batch plus 0 x the penalty for the first
    ``penalty_anneal_iters`` (1500) steps and ``lambda`` (1000) x it after, Adam (1e-3, no weight
    decay) with its moments cleared at the step the weight switches on (DomainBed builds a new
    Adam there). The moving averages are kept in the weights, so a resumed run continues them.

    DomainBed's default warm-up is 1,500 of its 5,000 steps: a run of 1,500 steps or fewer never
    switches the penalty on and trains ERM with Adam (the penalty is still logged); set
    ``-H penalty_anneal_iters`` for shorter runs (DomainBed's own search draws it from U(0, 5000)).
    DG only: it needs several source domains.
    """

    name = "fishr"
    task = "classification"
    needs_target = False
    dg_only = True
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "lambda": HParam(1e3, log_uniform(1, 4), "weight of the gradient-variance penalty after the warm-up"),
        "penalty_anneal_iters": HParam(1500, int_uniform(0.0, 5000.0),
                                       "steps with the penalty at weight 0 (Adam restarts when it switches on)"),
        "ema": HParam(0.95, uniform(0.90, 0.99), "moving-average factor of each domain's gradient variances"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.optims["model"] = domainbed_adam(self, self.hp)
        self.register_buffer("ema_variances", torch.zeros(0))  # (domains, head parameters), from the first batch

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "ema_variances")
        if saved is not None:
            self.ema_variances = torch.empty_like(saved, device=self.ema_variances.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weight(self, step: int) -> float:
        warm = self.hp["penalty_anneal_iters"]
        if step == warm != 0:
            self.optims["model"].state.clear()
        return self.hp["lambda"] if step >= warm else 0.0

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        weight = self.weight(step)
        z = self.featurizer(batch.src_x)
        logits = self.classifier(z)
        grads = by_domain(per_sample_gradients(self.classifier, z, batch.src_y), batch.src_domain)
        variances = torch.stack([(g - g.mean(0, keepdim=True)).pow(2).mean(0) for g in grads])
        if self.ema_variances.shape != variances.shape:
            self.ema_variances = torch.zeros_like(variances.detach())
        ema = self.hp["ema"]
        smoothed = ema * self.ema_variances + (1 - ema) * variances
        self.ema_variances = smoothed.detach().clone()
        penalty = fishr_penalty(smoothed / (1 - ema))
        nll = F.cross_entropy(logits, batch.src_y)
        loss = nll + weight * penalty
        self.optimise(loss, self.optims["model"])
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}
