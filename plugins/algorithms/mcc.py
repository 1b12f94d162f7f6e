"""MCC: minimum class confusion on the target predictions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch
from dabench.hparams import HParam, int_log2, log_uniform
from dabench_plugins.algorithms.cdan import entropy
from dabench_plugins.algorithms.dann import RAMP, ramped
from dabench_plugins.algorithms.erm import ERM


def mcc_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Jin et al. 2020, eqs. 1-6, for a batch of B target logits over K classes, as the authors'
    train_image_office.py computes it: Y = softmax(logits / T); W = diag(B (1 + exp(-H_i)) / sum_j
    (1 + exp(-H_j))), H the entropy of Y's rows (-sum p log(p + 1e-5), detached); C = Y^T W Y (K x
    K), divided by its row sums (eq. 5; the code divides column j by row j's sum, the same since C
    is symmetric); the loss is the sum of C's off-diagonal entries over K."""
    probs = F.softmax(logits.float() / temperature, dim=1)
    weight = 1 + torch.exp(-entropy(probs).detach())  # a weight, not a path for gradients
    weight = len(probs) * weight / weight.sum()
    confusion = (probs * weight[:, None]).T @ probs
    confusion = confusion / confusion.sum(1)
    k = confusion.shape[0]
    return (confusion.sum() - confusion.trace()) / k


class MCC(ERM):
    """Minimum Class Confusion (Jin et al., ECCV 2020): source classification plus mu times the
    class confusion of the target predictions, which pushes the target batch's predicted classes
    apart without any domain discriminator.

    The loss as the authors' code (thuml/Versatile-Domain-Adaptation, pytorch/train_image_office.py):
    temperature T = 2.5, the entropy weighting (eq. 3), mu = 1 (``-H lambda_mcc``), from the first
    step; SGD with Nesterov momentum 0.9, weight decay 1e-3 (their 5e-4 x decay_mult 2), the rate
    lr (1 + 0.001 i) ** -0.75 at iteration i (counted in iterations, not progress). Two settings,
    by the backbone's regime:
    - digits: TLlib's from-scratch digit script (examples/.../mcc.sh, MNIST -> USPS with -a lenet
      --scratch; TLlib's MCC is by the paper's first author): lr 0.01, 128 images per domain,
      every layer at 1x, source and target through the network as one batch.
    - imagenet: the authors' script: lr 0.001, 28 images per domain, the new layers (the head) at
      10x, source and target through the network separately (batch-norm statistics per domain).
    The network is the benchmark's (the backbone and ERM's fc 100 -> fc K head), not LeNet or
    ResNet-50 with a 256-d bottleneck.

    ``-H ramp=dann`` (a variant, not the paper): mu rises as DANN's lambda does.
    """

    name = "mcc"
    task = "classification"
    hparams = {
        **ERM.hparams,
        "lr": HParam(0.01, log_uniform(-3.5, -1.5), "initial SGD learning rate, lr (1 + 0.001 i) ** -0.75",
                     regimes={"imagenet": 0.001}),
        "batch_size": HParam(128, int_log2(5, 7), "images per domain per step", regimes={"imagenet": 28}),
        "weight_decay": HParam(1e-3, None, "L2 penalty"),
        "new_lr_mult": HParam(1.0, None, "learning-rate multiplier of the head", regimes={"imagenet": 10.0}),
        "forward": HParam("joint", None, "joint: source and target through the network as one batch (TLlib); "
                          "separate: one pass each (the authors' script)", choices=("joint", "separate"),
                          regimes={"imagenet": "separate"}),
        "lambda_mcc": HParam(1.0, log_uniform(-1, 0.5), "weight of the class-confusion loss (mu)"),
        "temperature": HParam(2.5, None, "temperature of the target softmax (T)"),
        "ramp": RAMP,
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        lr = self.hp["lr"]
        self.optims["model"] = torch.optim.SGD(
            [{"params": list(backbone.parameters()), "lr": lr},
             {"params": list(self.classifier.parameters()), "lr": lr * self.hp["new_lr_mult"]}],
            lr=lr, momentum=0.9, nesterov=True, weight_decay=self.hp["weight_decay"])

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.inv(step)
        x, y = batch.labeled_sources()
        if self.hp["forward"] == "joint":
            logits = self.predict(torch.cat([x, batch.tgt_x]))
            src_logits, tgt_logits = logits[: len(x)], logits[len(x):]
        else:
            src_logits, tgt_logits = self.predict(x), self.predict(batch.tgt_x)
        cls = F.cross_entropy(src_logits, y)
        mcc = mcc_loss(tgt_logits, self.hp["temperature"])
        weight = ramped(self.hp["lambda_mcc"], self.hp["ramp"], self.progress(step))
        self.optimise(cls + weight * mcc, self.optims["model"])
        return {"cls": cls.item(), "mcc": mcc.item()}
