"""Representation Self-Challenging (domain generalisation), as DomainBed runs it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch
from dabench.hparams import HParam, uniform
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM, domainbed_adam


class RSC(ERM):
    """Representation Self-Challenging (Huang et al., ECCV 2020), DomainBed's: the features the
    true class leans on most are muted, and the network trains on what is left.

    As DomainBed (facebookresearch/DomainBed, algorithms.py ``RSC``; hparams_registry.py lines
    82-84): one forward over the labelled batch; g, the gradient of the true-class logit with
    respect to the features (eq. 1); per image, the features with g at or above its
    (1 - ``rsc_f_drop_factor``) quantile (1/3 dropped) are muted (eqs. 2-3); the images whose
    true-class probability falls least when muted, below the batch's (1 - ``rsc_b_drop_factor``)
    quantile of the falls, are kept whole (section 3.3: the mask is the union); cross-entropy of the
    classifier on the masked features (eq. 5); Adam 1e-3. Quantiles are linear, as numpy's
    percentile. No domain labels and no target: it runs in DG, and in UDA as a source-only method.
    """

    name = "rsc"
    task = "classification"
    needs_target = False
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "rsc_f_drop_factor": HParam(1 / 3, uniform(0, 0.5), "share of each image's features muted"),
        "rsc_b_drop_factor": HParam(1 / 3, uniform(0, 0.5), "share of the batch whose features are muted"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.optims["model"] = domainbed_adam(self, self.hp)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        x, y = batch.labeled_sources()
        onehot = F.one_hot(y, self.num_classes)
        features = self.featurizer(x)
        logits = self.classifier(features)
        grad = torch.autograd.grad((logits * onehot).sum(), features)[0]
        cut = torch.quantile(grad.detach().double(), 1 - self.hp["rsc_f_drop_factor"], dim=1, keepdim=True)
        mask_f = grad.lt(cut.float()).float()
        muted = self.classifier(features * mask_f)
        fall = (F.softmax(logits, 1) * onehot).sum(1) - (F.softmax(muted, 1) * onehot).sum(1)
        mask_b = fall.lt(torch.quantile(fall.detach().double(), 1 - self.hp["rsc_b_drop_factor"]).float()).float()
        mask = torch.logical_or(mask_f, mask_b.view(-1, 1)).float()
        loss = F.cross_entropy(self.classifier(features * mask), y)
        self.optimise(loss, self.optims["model"])
        return {"loss": loss.item(), "muted": 1 - mask.mean().item()}
