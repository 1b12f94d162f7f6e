"""SagNet: style-agnostic networks, trained so that feature statistics (style) cannot predict the class."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.layers import mlp
from dabench.data import Batch
from dabench.hparams import HParam, int_log2, log_uniform

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


class SagNet(ClassificationAlgorithm):
    """Style-agnostic networks: a content network trained on randomised styles, and a style network it must fool.

    Nam et al., "Reducing Domain Gap by Reducing Style Bias", CVPR 2021, sec. 3; the update is
    DomainBed's SagNet (facebookresearch/DomainBed ``domainbed/algorithms.py``, transcribed in
    tests/reference/sagnet.py and checked step for step by tests/test_parity_ccsa_sagnet.py). Three
    sequential steps, each with its own Adam optimiser (default betas, no schedule):
    (1) the feature extractor f and the content network c on CE of style-randomised features;
    (2) the style network s alone on CE of content-randomised features; (3) f alone on ``w_adv``
    times the cross-entropy of s's prediction on content-randomised features against the uniform
    distribution. Each step runs f again and draws its own alpha ~ U(0, 1) per sample and
    permutation (alpha first, as DomainBed, also where content randomisation leaves it unused).
    Randomisation normalises with the unbiased variance + eps 1e-5 and mixes the variance, not
    the std (the paper writes sigma). The content randomisation detaches the partner's content.
    Prediction is c(f(x)), unrandomised; s is never used there.

    Where f ends (``sag_layer``): ``lower`` (default) splits the backbone as the authors' ResNet
    split at a stage (f = ``backbone.lower``, a feature map randomised per channel over H*W; c =
    ``backbone.upper`` + ERM's head, s = a copy of ``backbone.upper`` + its own head);
    ``features`` is DomainBed's placement (f = the whole backbone, the (N, D) feature vector
    randomised over D, c and s heads on it). Defaults per regime (DomainBed's hparams_registry):
    lr 1e-3 and batch 64 on digits, lr 5e-5 and batch 32 on ImageNet-size images, weight decay 0.
    Classification losses use the labelled images (source, plus labelled target samples).

    Variants, off by default: ``-H optimizer=sgd``: dabench's SGD (momentum 0.9, DANN annealed
    rate) for all three parts (dabench 0.1). ``-H sag_p=P``: randomise each sample's style with
    probability P only (a = 1 otherwise; 1 is DomainBed and the authors). ``-H target_styles=true``:
    the batch's unlabelled target images join the randomisation (their styles are the ones to be
    robust to in DA) and the adversarial loss (dabench 0.1); DomainBed ignores unlabelled images.

    The authors' own code (hyeonseobnam/sagnet ``train.py``) differs from DomainBed and is not
    reproduced: one forward for all three losses in the order style, adversarial, content; the
    adversarial step moves only the batch-norm affine parameters before the style stage, its
    gradient clipped to norm 0.1 (a digit CNN without batch norm would get no adversarial update);
    the content step moves every parameter; SGD lr 0.004, weight decay 1e-4, cosine schedule;
    dropout 0.5 before each fc; adversarial loss -log(softmax + 1e-5).
    """

    name = "sagnet"
    needs_target = False  # a DG method first: in DG the styles come from the source domains alone
    hparams = {
        **ClassificationAlgorithm.hparams,
        "lr": HParam(1e-3, log_uniform(-5, -2.5), "learning rate of the three optimisers",
                     regimes={"digits": 1e-3, "imagenet": 5e-5}),
        "batch_size": HParam(64, int_log2(3, 6), "images per domain per step", regimes={"digits": 64, "imagenet": 32}),
        "optimizer": HParam("adam", None, "adam: DomainBed's three Adam optimisers; sgd: momentum 0.9 with the DANN "
                            "annealed rate (dabench 0.1)", choices=("adam", "sgd")),
        "w_adv": HParam(0.1, log_uniform(-2, 1), "weight of the adversarial style loss"),
        "sag_p": HParam(1.0, None, "probability that a sample's style is randomised for the content network"),
        "sag_layer": HParam("lower", None, "lower: randomise the backbone's lower feature map (the authors' split); "
                            "features: the feature vector (DomainBed)", choices=("lower", "features")),
        "target_styles": HParam(False, None, "unlabelled target images join the randomisation and the adversarial loss"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        if self.hp["sag_layer"] == "features":
            self.features = backbone
            self.content = mlp([backbone.out_features, 100, num_classes])
            self.style = mlp([backbone.out_features, 100, num_classes])
        else:
            upper = backbone.upper
            # A parameter-free upper part (timm's pooling head) is shared rather than copied.
            style_upper = copy.deepcopy(upper) if any(True for _ in upper.parameters()) else upper
            self.features = backbone.lower
            self.content = nn.Sequential(upper, mlp([backbone.out_features, 100, num_classes]))
            self.style = nn.Sequential(style_upper, mlp([backbone.out_features, 100, num_classes]))
        for name in ("features", "content", "style"):
            params = getattr(self, name).parameters()
            self.optims[name] = (self.sgd(params) if self.hp["optimizer"] == "sgd" else
                                 torch.optim.Adam(params, lr=self.hp["lr"], weight_decay=self.hp["weight_decay"]))

    def _draw(self, m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """DomainBed's draws for one randomisation: alpha ~ U(0, 1) per sample, then a permutation."""
        alpha = torch.rand(m, device=device)
        return alpha, torch.randperm(m, device=device)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        if self.hp["optimizer"] == "sgd":
            self.anneal(step)
        x, y = batch.labeled_sources()
        images, n = (batch.with_target(x) if self.hp["target_styles"] else x), len(x)
        f_opt, c_opt, s_opt = self.optims["features"], self.optims["content"], self.optims["style"]

        feats = self.features(images)
        m = len(feats)
        alpha, perm = self._draw(m, feats.device)
        if self.hp["sag_p"] < 1:
            alpha = torch.where(torch.rand(m, device=feats.device) < self.hp["sag_p"], alpha, torch.ones_like(alpha))
        cls = F.cross_entropy(self.content(style_randomize(feats, perm, alpha)[:n]), y)
        self.optimise(cls, f_opt, c_opt)

        with torch.no_grad():  # f's gradient from step 2 is discarded by step 3's zero_grad in DomainBed
            feats = self.features(images)
        _, perm = self._draw(m, feats.device)
        style = F.cross_entropy(self.style(content_randomize(feats, perm)[:n]), y)
        self.optimise(style, s_opt)

        feats = self.features(images)
        _, perm = self._draw(m, feats.device)
        adv = uniform_cross_entropy(self.style(content_randomize(feats, perm)))
        self.optimise(self.hp["w_adv"] * adv, f_opt)
        return {"cls": cls.item(), "style": style.item(), "adv": adv.item()}

    def predict(self, x):
        return self.content(self.features(x))
