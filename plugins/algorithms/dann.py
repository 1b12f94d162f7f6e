"""DANN: domain-adversarial training through a gradient reversal layer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.layers import mlp, spectral_penalty
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform, uniform
from dabench_plugins.algorithms.jigen import JiGen, jigsaw_loss
from dabench_plugins.algorithms.rotation import ROTATIONS, Rotation, rotation_loss


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


def reverse_grad(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by -lam on the way back (the GRL)."""
    return _ReverseGrad.apply(x, lam)


def grl_lambda(p: float, gamma: float = 10.0) -> float:
    """lambda_p = 2 / (1 + exp(-gamma p)) - 1: 0 at the start, towards 1 at the end."""
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


RAMP = HParam("none", None, "none: the weight from the first step (the paper); dann: the weight times DANN's "
              "2 / (1 + exp(-10 p)) - 1, rising from 0", choices=("none", "dann"))


def ramped(weight: float, ramp: str, p: float) -> float:
    """A term's weight at progress p: as given (``ramp`` "none"), or times DANN's lambda_p ("dann")."""
    return weight * (grl_lambda(p) if ramp == "dann" else 1.0)


def domain_loss(src_logits: torch.Tensor, tgt_logits: torch.Tensor) -> torch.Tensor:
    """The paper's domain term (JMLR 2016, eq. 18): the mean logistic loss over the source samples
    (label 1) plus the mean over the target samples (label 0); 2 ln 2 when the classifier is at chance."""
    bce = F.binary_cross_entropy_with_logits
    return bce(src_logits, torch.ones_like(src_logits)) + bce(tgt_logits, torch.zeros_like(tgt_logits))


class DANN(ClassificationAlgorithm):
    """Domain-adversarial training: features that fool a domain classifier, through a reversed gradient.

    Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016. A domain classifier learns to tell source
    features from target features; the features learn to fool it through a gradient reversal layer
    (GRL) whose weight follows lambda_p = 2/(1+exp(-gamma p)) - 1, with the learning rate annealed as
    mu_0/(1+10p)^0.75, SGD momentum 0.9, one optimiser for all parts (the GRL makes it a single
    minimisation). The objective is eq. 18 of the JMLR paper: the label loss (mean over the labelled
    samples) plus lambda times the domain term, the mean logistic loss over the source samples
    (domain 1) plus the mean over the target samples (domain 0); at chance that is 2 ln 2 = 1.39.
    A mean over all 2B images of a batch with B of each domain, as several reimplementations write
    it, halves the domain term: the same as ``-H lambda_max=0.5 -H disc_lr_mult=0.5`` (dabench 0.1
    did that; on mnist5k -> mnistm5k it gained more, see benchmarks/RESULTS.md).

    Where the heads sit, per backbone:
    - ``digit-cnn`` (the paper's MNIST architecture): both heads branch from the flattened
      convolutional features (48x4x4 = 768 at 28x28). The label predictor is fc100 -> fc100 -> fc10
      (the backbone's fc100, then this class's fc100 -> fc10); the GRL and the domain classifier
      fc100 -> fc1 sit on the 768 features, so the label predictor's layers never get a reversed
      gradient. Any backbone that sets ``lower_features`` is treated the same way.
    - ``timm:NAME`` and other backbones whose feature vector is the last layer: the GRL and the
      domain classifier (fc ``disc_hidden`` -> fc1) sit on the pooled feature vector, the label head
      (fc100 -> fc K) on the same vector.
    ``-H domain_head=features`` puts the domain classifier on the feature vector for digit-cnn too
    (dabench 0.1; kept as an ablation: the reversed gradient then reaches the label head's input).
    ``-H aux=rotation`` adds the rotation-prediction task of the ``rotation`` algorithm (a linear
    head on the feature vector, source and target images, weight ``lambda_rot``, its ``turns``: no
    180-degree turn on digits), summed into DANN's one step. ``-H aux=jigsaw`` adds JiGen's puzzle
    the same way (``jigen``: 30 tile orders, whole with extra probability 0.7, weight ``lambda_jig``
    0.9, a linear head on the feature vector, on source and target images). ``-H bsp=true`` adds
    batch spectral penalisation (Chen et al., ICML 2019; thuml/Batch-Spectral-Penalization
    train.py): ``bsp_weight`` (1e-4) x the squared largest singular value of the source and of the
    target features the domain classifier reads, a plain (not reversed) gradient.
    """

    name = "dann"
    hparams = {
        **ClassificationAlgorithm.hparams,
        "lambda_max": HParam(1.0, log_uniform(-1, 0.5), "final weight of the reversed domain gradient"),
        "gamma": HParam(10.0, uniform(5, 15), "steepness of the lambda schedule"),
        "disc_hidden": HParam(100, None, "width of the domain classifier's hidden layer"),
        "disc_lr_mult": HParam(1.0, None, "the domain classifier's learning rate as a multiple of lr (paper: 1)"),
        "domain_head": HParam("paper", None, "where the domain classifier reads: paper (conv features where "
                              "the backbone has them) or features (the backbone's feature vector)",
                              choices=("paper", "features")),
        "aux": HParam("none", None, "an auxiliary self-supervised task on source and target images: none, "
                      "rotation (4-way rotation prediction, as the rotation algorithm) or jigsaw (JiGen's puzzle)",
                      choices=("none", "rotation", "jigsaw")),
        "lambda_rot": HParam(1.0, None, "weight of the rotation task when aux=rotation"),
        "turns": Rotation.hparams["turns"],
        "lambda_jig": HParam(0.9, None, "weight of the jigsaw task when aux=jigsaw (JiGen's jig_weight)"),
        "jigsaw_classes": JiGen.hparams["jigsaw_classes"],
        "bias_whole": JiGen.hparams["bias_whole"],
        "bsp": HParam(False, None, "BSP: add bsp_weight x the squared top singular values of the source and the "
                      "target features the domain classifier reads (Chen et al. 2019)"),
        "bsp_weight": HParam(1e-4, None, "weight of the batch spectral penalty when bsp=true"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.classifier = mlp([backbone.out_features, 100, num_classes])
        self.on_conv = bool(getattr(backbone, "lower_features", None)) and self.hp["domain_head"] == "paper"
        width = backbone.lower_features if self.on_conv else backbone.out_features
        self.discriminator = mlp([width, self.hp["disc_hidden"], 1])
        if self.hp["aux"] == "rotation":
            self.rotation_head = nn.Linear(backbone.out_features, ROTATIONS)
        if self.hp["aux"] == "jigsaw":
            self.jigsaw_head = nn.Linear(backbone.out_features, self.hp["jigsaw_classes"] + 1)
        disc = {id(p) for p in self.discriminator.parameters()}
        rest = [p for p in self.parameters() if id(p) not in disc]
        self.optims["model"] = self.sgd([{"params": rest},
                                         {"params": list(self.discriminator.parameters()), "lr_mult": self.hp["disc_lr_mult"]}])

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        x, y = batch.labeled_sources()
        n_src = len(batch.src_x)
        low = self.featurizer.lower(torch.cat([x, batch.tgt_x]))
        feats = self.featurizer.upper(low)
        cls = F.cross_entropy(self.classifier(feats[: len(x)]), y)
        lam = self.hp["lambda_max"] * grl_lambda(self.progress(step), self.hp["gamma"])
        seen = low.flatten(1) if self.on_conv else feats
        dom_in = torch.cat([seen[:n_src], seen[len(x):]])  # source and unlabelled target images only
        logits = self.discriminator(reverse_grad(dom_in, lam)).squeeze(1)
        dom = domain_loss(logits[:n_src], logits[n_src:])
        logs = {"cls": cls.item(), "dom": dom.item(), "lambda": lam}
        loss = cls + dom
        if self.hp["bsp"]:
            bsp = spectral_penalty(dom_in[:n_src], dom_in[n_src:])
            loss, logs["bsp"] = loss + self.hp["bsp_weight"] * bsp, bsp.item()
        if self.hp["aux"] == "rotation":
            rot = rotation_loss(self.featurizer, self.rotation_head, torch.cat([batch.src_x, batch.tgt_x]),
                                self.hp["turns"])
            loss, logs["rot"] = loss + self.hp["lambda_rot"] * rot, rot.item()
        if self.hp["aux"] == "jigsaw":
            jig = jigsaw_loss(self.featurizer, self.jigsaw_head, torch.cat([batch.src_x, batch.tgt_x]),
                              self.hp["jigsaw_classes"], self.hp["bias_whole"])
            loss, logs["jig"] = loss + self.hp["lambda_jig"] * jig, jig.item()
        self.optimise(loss, self.optims["model"])
        return logs

    def predict(self, x):
        return self.classifier(self.featurizer(x))

    @torch.no_grad()
    def embed(self, x):
        """The features the domain classifier reads (the conv features, or the feature vector): where
        DANN aligns the domains, so where ``dabench divergence`` measures it."""
        low = self.featurizer.lower(x)
        return (low.flatten(1) if self.on_conv else self.featurizer.upper(low)).float()
