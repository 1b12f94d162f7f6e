"""Margin disparity discrepancy (unsupervised DA): an adversarial classifier head measures how far
the target's decisions can be disputed while the source's hold, and the features shrink it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.data import Batch
from dabench.hparams import HParam, int_log2, log_uniform
from dabench_plugins.algorithms.dann import reverse_grad


def margin_disparity(y_s, y_s_adv, y_t, y_t_adv, margin: float) -> torch.Tensor:
    """MDD (Zhang et al. 2019, eq. 29) as TLlib writes it for classification: per image pair, -margin
    x the adversarial head's cross-entropy to the main head's source predictions, plus the target
    term -nll(log(1 - softmax(adversarial)), main prediction) (log floored: ``shift_log``); the mean
    over the pairs of the sum."""
    source = -margin * F.cross_entropy(y_s_adv, y_s.argmax(1), reduction="none")
    shifted = torch.log(torch.clamp(1.0 - F.softmax(y_t_adv, dim=1) + 1e-6, max=1.0))
    target = -F.nll_loss(shifted, y_t.argmax(1), reduction="none")
    return (source + target).mean()


def head(width_in: int, width: int, num_classes: int) -> nn.Sequential:
    """TLlib's MDD head: Linear -> ReLU -> Dropout(0.5) -> Linear, weights N(0, 0.01), biases 0."""
    layers = nn.Sequential(nn.Linear(width_in, width), nn.ReLU(), nn.Dropout(0.5), nn.Linear(width, num_classes))
    with torch.no_grad():
        for linear in (layers[0], layers[3]):
            linear.weight.normal_(0, 0.01)
            linear.bias.fill_(0.0)
    return layers


class MDD(ClassificationAlgorithm):
    """MDD (Zhang et al., ICML 2019), as TLlib trains it (the authors' lab: examples/domain_adaptation/
    image_classification/mdd.py, tllib/alignment/mdd.py, tllib/modules/grl.py): a bottleneck
    (Linear 1024, init N(0, 0.005) and bias 0.1, BatchNorm, ReLU, Dropout 0.5), a head and an
    adversarial head (each Linear 1024 -> ReLU -> Dropout -> Linear); the adversarial head reads the
    bottleneck through a gradient reversal whose coefficient warms up as 2 x 0.1 / (1 + exp(-i /
    1000)) - 0.1 over iterations i. Loss: source cross-entropy minus ``trade_off`` (1) x the margin
    disparity (margin 4), source and target in one forward. SGD with Nesterov momentum 0.9, weight
    decay 5e-4, lr x (1 + 0.0002 i)^-0.75, the backbone at 0.1 x lr (TLlib builds MDD's classifier
    with its default ``finetune=True`` even for its digit runs). Regimes: its digit script (lr 0.01,
    128 images per domain, lenet from scratch: mdd.sh) and its defaults (lr 0.004, 32).
    """

    name = "mdd"
    task = "classification"
    hparams = {
        "lr": HParam(0.01, log_uniform(-3, -1.5), "initial SGD learning rate", regimes={"digits": 0.01, "imagenet": 0.004}),
        "batch_size": HParam(128, int_log2(5, 7), "images per domain per step", regimes={"digits": 128, "imagenet": 32}),
        "weight_decay": HParam(5e-4, None, "L2 penalty"),
        "lr_gamma": HParam(2e-4, None, "lr x (1 + lr_gamma x step) ** -0.75"),
        "margin": HParam(4.0, None, "the margin gamma of the disparity"),
        "trade_off": HParam(1.0, log_uniform(-1, 0.5), "weight of the margin disparity"),
        "bottleneck_dim": HParam(1024, None, "width of the bottleneck and of both heads"),
        "backbone_lr_mult": HParam(0.1, None, "the backbone's rate as a multiple of lr"),
        "freeze_backbone": ClassificationAlgorithm.hparams["freeze_backbone"],
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        width = self.hp["bottleneck_dim"]
        self.featurizer = backbone
        self.bottleneck = nn.Sequential(nn.Linear(backbone.out_features, width), nn.BatchNorm1d(width), nn.ReLU(),
                                        nn.Dropout(0.5))
        with torch.no_grad():
            self.bottleneck[0].weight.normal_(0, 0.005)
            self.bottleneck[0].bias.fill_(0.1)
        self.head = head(width, width, num_classes)
        self.adv_head = head(width, width, num_classes)
        lr = self.hp["lr"]
        self.optims["model"] = torch.optim.SGD(
            [{"params": list(backbone.parameters()), "lr": lr * self.hp["backbone_lr_mult"]},
             {"params": list(self.bottleneck.parameters()), "lr": lr},
             {"params": list(self.head.parameters()), "lr": lr},
             {"params": list(self.adv_head.parameters()), "lr": lr}],
            lr=lr, momentum=0.9, weight_decay=self.hp["weight_decay"], nesterov=True)

    @staticmethod
    def coefficient(iteration: int) -> float:
        """TLlib's WarmStartGradientReverseLayer(alpha 1, lo 0, hi 0.1, max_iters 1000) at ``iteration``."""
        return 2.0 * 0.1 / (1.0 + math.exp(-iteration / 1000)) - 0.1

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.inv(step, gamma=self.hp["lr_gamma"])
        x, y = batch.labeled_sources()
        n, m = len(batch.src_x), len(x)
        f = self.bottleneck(self.featurizer(torch.cat([x, batch.tgt_x])))
        out, adv = self.head(f), self.adv_head(reverse_grad(f, self.coefficient(step)))
        cls = F.cross_entropy(out[:m], y)
        disparity = margin_disparity(out[:n], adv[:n], out[m:], adv[m:], self.hp["margin"])
        self.optimise(cls - self.hp["trade_off"] * disparity, self.optims["model"])
        return {"cls": cls.item(), "mdd": disparity.item()}

    def predict(self, x):
        return self.head(self.bottleneck(self.featurizer(x)))
