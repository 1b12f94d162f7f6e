"""CCSA: supervised DA that pulls same-class source/target embeddings together and pushes others apart."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import Algorithm, mlp
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform, uniform

# The authors keep every same-class pair and 3x as many random different-class pairs, so a
# quarter of their pair batches are positives. We weight all in-batch pairs to that expectation.
POS_SHARE = 0.25


def pair_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Na, D), (Nb, D) -> (Na, Nb) Euclidean distances, sqrt(max(sum of squares, 1e-8)) as in the
    authors' code, so the gradient stays finite when two embeddings coincide."""
    sq = (a.float()[:, None, :] - b.float()[None, :, :]).pow(2).sum(-1)
    return sq.clamp_min(1e-8).sqrt()


def csa_loss(src_emb: torch.Tensor, src_y: torch.Tensor, tgt_emb: torch.Tensor, tgt_y: torch.Tensor,
             margin: float = 1.0, pos_share: float | None = POS_SHARE) -> torch.Tensor:
    """Contrastive semantic alignment over every (source, labelled target) pair.

    A same-class pair costs d^2 (semantic alignment, L_SA), a different-class pair
    max(0, margin - d)^2 (separation, L_S); no 1/2 factor, as in the authors' code. Same-class
    pairs share ``pos_share`` of the weight and different-class pairs the rest (equal weights
    inside each group); ``pos_share=None`` is the plain mean over all pairs. A batch with pairs
    of one kind only takes the mean over those.
    """
    d = pair_distances(src_emb, tgt_emb)
    same = src_y[:, None] == tgt_y[None, :]
    terms = torch.where(same, d.pow(2), (margin - d).clamp_min(0).pow(2))
    n_pos, n = int(same.sum()), same.numel()
    if pos_share is None or n_pos in (0, n):
        return terms.mean()
    weights = torch.where(same, pos_share / n_pos, (1 - pos_share) / (n - n_pos))
    return (weights * terms).sum()


class CCSA(Algorithm):
    """Classification and contrastive semantic alignment of source and a few labelled target samples.

    Motiian et al., "Unified Deep Supervised Domain Adaptation and Generalization", ICCV 2017,
    sec. 3, weighted as in the authors' code: loss = (1 - alpha) * CE + alpha * (L_SA + L_S). The
    embedding g is the backbone's feature vector and the classifier h is ERM's head, so CCSA
    differs from ERM with --tgt-labeled N only by the alignment term. CE is taken over source and labelled
    target samples together, as ERM does (the authors alternate a source-label and a
    target-label step, which weights the two sets equally).

    Pairs: every (source, labelled target) pair of the batch, a same-class pair costing d^2 and a
    different-class pair max(0, m - d)^2, d the Euclidean distance (authors' code: margin 1,
    alpha 0.25, no 1/2 factor). The authors sample all positive pairs plus 3x as many random
    negatives; instead of sampling, positives get 1/4 of the weight and negatives 3/4, which is
    that sampler's expected loss without its noise, and keeps the alignment term from vanishing
    when there are many classes (a plain mean over pairs would give positives ~1/C of the weight).
    Unlabelled target images are not used.
    """

    target_labels = "required"
    hparams = {
        **Algorithm.hparams,
        "alpha": HParam(0.25, uniform(0.05, 0.75), "weight of the contrastive alignment loss; CE gets 1 - alpha"),
        "margin": HParam(1.0, log_uniform(-1, 1), "distance beyond which different-class pairs cost nothing"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.classifier = mlp([backbone.out_features, 100, num_classes])
        self.optims["model"] = self.sgd(self.parameters())

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        x, y = self.labeled_sources(batch)
        n_src = len(batch.src_x)
        emb = self.featurizer(x)
        cls = F.cross_entropy(self.classifier(emb), y)
        csa = csa_loss(emb[:n_src], y[:n_src], emb[n_src:], y[n_src:], self.hp["margin"])
        alpha = self.hp["alpha"]
        total = (1 - alpha) * cls + alpha * csa
        self.step(total, self.optims["model"])
        return {"cls": cls.item(), "csa": csa.item(), "total": total.item()}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
