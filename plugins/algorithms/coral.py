"""Deep CORAL: match the second-order statistics of source and target activations."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dabench.layers import pairwise_mean
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


def mean_cov_penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DomainBed's CORAL penalty (``AbstractMMD.mmd`` with ``gaussian=False``): the mean squared
    difference of the means plus the mean squared difference of the unbiased covariances."""
    mean_a, mean_b = a.float().mean(0, keepdim=True), b.float().mean(0, keepdim=True)
    return (mean_a - mean_b).pow(2).mean() + (covariance(a) - covariance(b)).pow(2).mean()


class CORAL(ERM):
    """Deep CORAL (Sun & Saenko, ECCV 2016 workshops): source classification plus lambda times the
    CORAL loss between the covariances of source and target activations.

    Unsupervised DA, as the authors' Caffe code (VisionLearningGroup/CORAL, code/D-CORAL.zip: the
    CORALLoss layer, and the Office-31 protofile of D-CORAL_Office31.zip): the loss sits on the last
    layer (the logits, their fc8), ||C_S - C_T||_F^2 / (4 d^2) with unbiased covariances and no
    mean term, added to the source cross-entropy with weight lambda (``-H lambda_coral``).
    ``-H coral_layer=features`` puts it on the backbone's feature vector, where TLlib and DomainBed
    read (they also add the difference of the means; we do not).

    lambda: the paper sets it "so that at the end of training the classification loss and the CORAL
    loss are roughly the same"; there is no single published value (the Office-31 logs use 0.8 for
    A->W, 0.05 A->D, 0.001 D->A, 0.0007 W->A, 0.0001 W->D and D->W, all on AlexNet's fc8).
    ImageNet-size data (``imagenet`` regime): 0.8, the one protofile the authors publish (A->W).
    Digits (``digits`` regime; no published digit setting, and TLlib's CORAL is a domain
    generalisation example only): 1, the paper's rule measured on mnist5k -> mnistm5k with the digit
    CNN (2,000 steps at lambda 1, seed 0: over the last 200 steps the cls loss averaged 0.065 and the
    CORAL loss 0.063). On a fresh network the logits are near uniform and the loss is tiny; it grows
    with the logits as the classifier trains, which is why the paper fixes lambda against the end of
    training. ERM's network and annealed SGD (not Caffe's solver or its 10x rate on fc8), as every
    classification method here.

    Domain generalisation (``--setting dg``, several sources, no target): DomainBed's CORAL
    (domainbed/algorithms.py, ``AbstractMMD`` with ``gaussian=False``): each source domain through
    the featurizer on its own, the mean of the per-domain cross-entropies plus ``mmd_gamma`` (1, as
    DomainBed) times ``mean_cov_penalty`` between the featurizer outputs of every pair of domains,
    averaged over the pairs. The DA loss (logits, 1/(4 d^2), no mean term) is not used there.
    DomainBed's Adam is not taken over: the bench's SGD, as for DG ERM.
    """

    name = "coral"
    task = "classification"
    needs_target = False  # runs in domain generalisation: it aligns the source domains there
    hparams = {
        **ERM.hparams,
        "lambda_coral": HParam(1.0, log_uniform(-1, 1), "weight of the CORAL loss (unsupervised DA)",
                               regimes={"digits": 1.0, "imagenet": 0.8}),
        "coral_layer": HParam("logits", None, "where the DA loss reads: logits (the paper's fc8) or features",
                              choices=("logits", "features")),
        "mmd_gamma": HParam(1.0, log_uniform(-1, 1), "domain generalisation: weight of DomainBed's mean + covariance "
                            "penalty between every pair of source domains (DomainBed's mmd_gamma)"),
    }

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        if batch.tgt_x is None:
            return self.update_dg(batch)
        x, y = batch.labeled_sources()
        feats = self.featurizer(batch.with_target(x))
        logits = self.classifier(feats)
        cls = F.cross_entropy(logits[: len(x)], y)
        seen = logits if self.hp["coral_layer"] == "logits" else feats
        coral = pairwise_mean(batch.aligned_groups(seen), coral_loss)
        self.optimise(cls + self.hp["lambda_coral"] * coral, self.optims["model"])
        return {"cls": cls.item(), "coral": coral.item()}

    def update_dg(self, batch: Batch) -> dict[str, float]:
        """DomainBed's ``AbstractMMD.update`` with its mean + covariance penalty."""
        feats, cls = self.per_domain(batch)
        penalty = pairwise_mean(feats, mean_cov_penalty)
        self.optimise(cls + self.hp["mmd_gamma"] * penalty, self.optims["model"])
        return {"cls": cls.item(), "coral": penalty.item()}
