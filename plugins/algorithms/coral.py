"""Deep CORAL: match the second-order statistics of source and target activations."""
from __future__ import annotations

import torch

from dabench.algorithm import pairwise_mean
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.erm import ERM


def covariance(x: torch.Tensor) -> torch.Tensor:
    """The unbiased (n - 1) covariance of the rows of ``x`` (n, d), in fp32: eq. 2 of the paper."""
    x = x.float()
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / max(1, len(x) - 1)


def coral_loss(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """||C_S - C_T||_F^2 / (4 d^2) (Sun & Saenko 2016, eq. 1)."""
    d = src.shape[1]
    return (covariance(src) - covariance(tgt)).pow(2).sum() / (4 * d * d)


class CORAL(ERM):
    """Deep CORAL (Sun & Saenko, ECCV 2016 workshops): source classification plus lambda times the
    CORAL loss between the covariances of source and target activations.

    As the paper: the CORAL loss sits on the last layer (the logits, its fc8), lambda = 1 (the paper
    picks it so that both losses are about equal at the end; ``-H lambda_coral``), ERM's network and
    optimiser otherwise. ``-H coral_layer=features`` puts it on the backbone's feature vector, as
    DomainBed and TLlib do (DomainBed adds the difference of the means; we do not).

    Domain generalisation (``--setting dg``, several sources): the loss between every pair of
    source domains, averaged over the pairs, as DomainBed's CORAL aligns training domains.
    """

    task = "classification"
    hparams = {
        **ERM.hparams,
        "lambda_coral": HParam(1.0, log_uniform(-1, 1), "weight of the CORAL loss"),
        "coral_layer": HParam("logits", None, "where the loss reads: logits (the paper's fc8) or features",
                              choices=("logits", "features")),
    }

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        x, y = self.labeled_sources(batch)
        feats = self.featurizer(self.with_target(x, batch))
        logits = self.classifier(feats)
        cls = torch.nn.functional.cross_entropy(logits[: len(x)], y)
        seen = logits if self.hp["coral_layer"] == "logits" else feats
        coral = pairwise_mean(self.aligned_groups(batch, seen), coral_loss)
        self.step(cls + self.hp["lambda_coral"] * coral, self.optims["model"])
        return {"cls": cls.item(), "coral": coral.item()}
