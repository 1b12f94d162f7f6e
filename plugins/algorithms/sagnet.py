"""SagNet: style-agnostic networks, trained so that feature statistics (style) cannot predict the class."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import Algorithm, mlp
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform

EPS = 1e-5  # added to the variance before the square root, as in the authors' code and DomainBed


def _normalize(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a feature map into content and style: (N, C, H, W) -> (N, C, H*W) normalised content,
    and the per-channel mean and variance (unbiased, as torch.var) over the H*W positions.

    A map with a single position (or a flat (N, D) vector) has no spatial statistics, so they
    are then taken over its channels, as DomainBed does for pooled features. Computed in float32."""
    flat = x.float().reshape(len(x), x.shape[1] if x.ndim == 4 else 1, -1)
    if flat.shape[-1] == 1:
        flat = flat.reshape(len(x), 1, -1)
    mean = flat.mean(-1, keepdim=True)
    var = flat.var(-1, keepdim=True, correction=int(flat.shape[-1] > 1))
    return (flat - mean) / (var + eps).sqrt(), mean, var


def style_randomize(x: torch.Tensor, perm: torch.Tensor, alpha: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Keep each sample's normalised content; give it the statistics mu' = a mu(x) + (1 - a) mu(x[perm])
    and var' = a var(x) + (1 - a) var(x[perm]), a = ``alpha`` per sample (1: unchanged, 0: the partner's)."""
    content, mean, var = _normalize(x, eps)
    a = alpha.reshape(-1, 1, 1).to(mean)
    mean = a * mean + (1 - a) * mean[perm]
    var = a * var + (1 - a) * var[perm]
    return (content * (var + eps).sqrt() + mean).reshape(x.shape).to(x.dtype)


def content_randomize(x: torch.Tensor, perm: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The partner's normalised content (detached) with the sample's own statistics:
    sigma(x) * (x' - mu(x')) / sigma(x') + mu(x), x' = x[perm]."""
    content, mean, var = _normalize(x, eps)
    return (content[perm].detach() * (var + eps).sqrt() + mean).reshape(x.shape).to(x.dtype)


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the uniform distribution over classes; log(C) at its minimum."""
    return -F.log_softmax(logits.float(), dim=1).mean(1).mean()


class SagNet(Algorithm):
    """Style-agnostic networks: a content network trained on randomised styles, and a style network it must fool.

    Nam et al., "Reducing Domain Gap by Reducing Style Bias", CVPR 2021, sec. 3; three steps per
    update as in DomainBed's SagNet: (1) the feature extractor f (``backbone.lower``) and the
    content network (``backbone.upper`` + ERM's head) on CE of style-randomised features;
    (2) the style network (a copy of ``backbone.upper`` + its own head) alone on CE of
    content-randomised features; (3) f alone on ``w_adv`` times the cross-entropy of the style
    network's prediction against the uniform distribution. Randomisation acts on f's feature
    map with per-channel statistics over H*W (AdaIN). Prediction is the content network on
    unrandomised features; the style network is never used there.

    Choices: the variance is interpolated, not the std (the paper writes sigma; the authors' code
    and DomainBed mix var, unbiased, eps 1e-5). Each sample's style is randomised with
    probability ``sag_p`` (a = 1 otherwise), a ~ U(0, 1); ``sag_p=1`` is the authors' code and
    DomainBed. Content randomisation for the style network is always on. Styles come from the
    whole batch, unlabelled target images included (in DA they are the styles to be robust
    to); classification losses use the labelled samples only, and the adversarial loss, which
    needs no label, every image. f is updated on all its parameters in step 3, without the
    authors' gradient clipping, as DomainBed does.
    """

    needs_target = False  # a DG method first: in DG the styles come from the source domains alone
    hparams = {
        **Algorithm.hparams,
        "w_adv": HParam(0.1, log_uniform(-2, 1), "weight of the adversarial style loss"),
        "sag_p": HParam(0.5, None, "probability that a sample's style is randomised for the content network"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        upper = backbone.upper
        # A parameter-free upper part (timm's pooling head) is shared rather than copied.
        style_upper = copy.deepcopy(upper) if any(True for _ in upper.parameters()) else upper
        self.features = backbone.lower
        self.content = nn.Sequential(upper, mlp([backbone.out_features, 100, num_classes]))
        self.style = nn.Sequential(style_upper, mlp([backbone.out_features, 100, num_classes]))
        self.optims["features"] = self.sgd(self.features.parameters())
        self.optims["content"] = self.sgd(self.content.parameters())
        self.optims["style"] = self.sgd(self.style.parameters())

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        x, y = self.labeled_sources(batch)
        images, n = self.with_target(x, batch), len(x)
        f_opt, c_opt, s_opt = self.optims["features"], self.optims["content"], self.optims["style"]

        feats = self.features(images)
        m = len(feats)
        alpha = torch.rand(m, device=feats.device)
        alpha = torch.where(torch.rand(m, device=feats.device) < self.hp["sag_p"], alpha, torch.ones_like(alpha))
        mixed = style_randomize(feats, torch.randperm(m, device=feats.device), alpha)
        cls = F.cross_entropy(self.content(mixed[:n]), y)
        self.step(cls, f_opt, c_opt)

        feats = self.features(images)  # f has moved; step 2 does not train it, step 3 does
        swapped = content_randomize(feats.detach(), torch.randperm(m, device=feats.device))
        style = F.cross_entropy(self.style(swapped[:n]), y)
        self.step(style, s_opt)

        swapped = content_randomize(feats, torch.randperm(m, device=feats.device))
        adv = uniform_cross_entropy(self.style(swapped))
        self.step(self.hp["w_adv"] * adv, f_opt)
        return {"cls": cls.item(), "style": style.item(), "adv": adv.item()}

    def predict(self, x):
        return self.content(self.features(x))
