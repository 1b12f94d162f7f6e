"""CDAN: a domain discriminator conditioned on the classifier's predictions (multilinear map)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import Algorithm, mlp
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.dann import grl_lambda, reverse_grad
from dabench_plugins.algorithms.entmin import entropy

MAX_MULTILINEAR = 4096  # above d x K, the paper's randomized multilinear map of this width


class Multilinear(nn.Module):
    """T(f, g): the flattened outer product f (x) g, or, when d x K exceeds 4096, the randomized
    map (1/sqrt(width)) (R_f f) * (R_g g) with fixed Gaussian R_f, R_g (CDAN eq. 6-7)."""

    def __init__(self, features: int, classes: int, width: int = MAX_MULTILINEAR):
        super().__init__()
        self.randomized = features * classes > width
        self.out_features = width if self.randomized else features * classes
        if self.randomized:
            self.register_buffer("r_f", torch.randn(features, width))
            self.register_buffer("r_g", torch.randn(classes, width))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.randomized:
            return (f @ self.r_f) * (g @ self.r_g) / math.sqrt(self.out_features)
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


def conditional_domain_loss(src_logits: torch.Tensor, tgt_logits: torch.Tensor,
                            src_w: torch.Tensor | None = None, tgt_w: torch.Tensor | None = None) -> torch.Tensor:
    """The domain term: source labelled 1, target 0, each domain's mean logistic loss, weighted per
    sample when weights are given (CDAN+E: each domain's weights sum to 1)."""
    bce = F.binary_cross_entropy_with_logits
    if src_w is None:
        return bce(src_logits, torch.ones_like(src_logits)) + bce(tgt_logits, torch.zeros_like(tgt_logits))
    s = (bce(src_logits, torch.ones_like(src_logits), reduction="none") * src_w).sum()
    t = (bce(tgt_logits, torch.zeros_like(tgt_logits), reduction="none") * tgt_w).sum()
    return s + t


def entropy_weights(logits: torch.Tensor) -> torch.Tensor:
    """CDAN+E's w = 1 + exp(-H(g)), normalised to sum 1 over the batch (detached)."""
    w = 1 + torch.exp(-entropy(logits.detach()))
    return w / w.sum()


class CDAN(Algorithm):
    """Conditional adversarial DA (Long et al., NeurIPS 2018): DANN's adversarial game, with the
    domain discriminator reading the multilinear map of features f and predictions g = softmax.

    As the paper and its code: the discriminator sees T(f, g) = f (x) g (randomized to 4096 when
    d x K is larger), through a gradient reversal layer with DANN's lambda schedule; g is detached
    inside T (the authors' code), so the adversarial gradient reaches the network through f; the
    discriminator is fc 1024 -> ReLU -> dropout 0.5 -> fc 1024 -> ReLU -> dropout 0.5 -> fc 1.
    ``-H entropy_conditioning=true`` is CDAN+E: each sample's domain loss weighted by
    1 + exp(-H(g)), normalised per domain. ERM's network, head and annealed SGD otherwise.
    """

    task = "classification"
    hparams = {
        **Algorithm.hparams,
        "lambda_max": HParam(1.0, log_uniform(-1, 0.5), "final weight of the reversed domain gradient"),
        "gamma": HParam(10.0, None, "steepness of the lambda schedule"),
        "disc_hidden": HParam(1024, None, "width of the discriminator's two hidden layers"),
        "entropy_conditioning": HParam(False, None, "CDAN+E: weight the domain loss by prediction certainty"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.classifier = mlp([backbone.out_features, 100, num_classes])
        self.multilinear = Multilinear(backbone.out_features, num_classes)
        self.discriminator = mlp([self.multilinear.out_features, self.hp["disc_hidden"], self.hp["disc_hidden"], 1],
                                 dropout=0.5)
        self.optims["model"] = self.sgd(self.parameters())

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        x, y = self.labeled_sources(batch)
        feats = self.featurizer(torch.cat([x, batch.tgt_x]))
        logits = self.classifier(feats)
        cls = F.cross_entropy(logits[: len(x)], y)
        n_src = len(batch.src_x)
        keep = torch.cat([torch.arange(n_src), torch.arange(len(x), len(feats))]).to(feats.device)  # not labelled target
        kept = logits[keep]
        f, g = feats[keep], F.softmax(kept.detach().float(), dim=1).to(feats.dtype)
        lam = self.hp["lambda_max"] * grl_lambda(self.progress(step), self.hp["gamma"])
        out = self.discriminator(reverse_grad(self.multilinear(f, g), lam)).squeeze(1)
        weights = (entropy_weights(kept[:n_src]), entropy_weights(kept[n_src:])) \
            if self.hp["entropy_conditioning"] else (None, None)
        dom = conditional_domain_loss(out[:n_src], out[n_src:], *weights)
        self.step(cls + dom, self.optims["model"])
        return {"cls": cls.item(), "dom": dom.item(), "lambda": lam}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
