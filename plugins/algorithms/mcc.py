"""MCC: minimum class confusion on the target predictions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.entmin import entropy
from dabench_plugins.algorithms.dann import RAMP, ramped
from dabench_plugins.algorithms.erm import ERM


def mcc_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Jin et al. 2020, eqs. 1-6, for a batch of B target logits over K classes:
    Y = softmax(logits / T); W = diag(B (1 + exp(-H_i)) / sum_j (1 + exp(-H_j))), H the entropy of
    Y's rows (detached, as TLlib's reimplementation does); C = Y^T W Y (K x K), each row divided by
    its sum (eq. 5); the loss is the sum of C's off-diagonal entries over K."""
    probs = F.softmax(logits.float() / temperature, dim=1)
    weight = 1 + torch.exp(-entropy(logits.float() / temperature).detach())  # a weight, not a path for gradients
    weight = len(probs) * weight / weight.sum()
    confusion = (probs * weight[:, None]).T @ probs
    confusion = confusion / confusion.sum(1, keepdim=True)
    k = confusion.shape[0]
    return (confusion.sum() - confusion.trace()) / k


class MCC(ERM):
    """Minimum Class Confusion (Jin et al., ECCV 2020): source classification plus mu times the
    class confusion of the target predictions, which pushes the target batch's predicted classes
    apart without any domain discriminator.

    The paper's defaults: temperature T = 2.5, mu = 1 (``-H temperature``, ``-H lambda_mcc``); ERM's
    network and optimiser. The entropy weighting (the paper's eq. 3, uncertainty reweighting) is
    part of the default, as in the paper. ``-H ramp=dann`` (a variant, not the paper): mu rises as
    DANN's lambda does, so the confusion term does not lock in the predictions of a network that
    has not yet learnt the source (the paper fine-tunes a pretrained ResNet).
    """

    task = "classification"
    needs_target = True
    hparams = {
        **ERM.hparams,
        "lambda_mcc": HParam(1.0, log_uniform(-1, 0.5), "weight of the class-confusion loss (mu)"),
        "temperature": HParam(2.5, None, "temperature of the target softmax (T)"),
        "ramp": RAMP,
    }

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        x, y = self.labeled_sources(batch)
        logits = self.predict(torch.cat([x, batch.tgt_x]))
        cls = F.cross_entropy(logits[: len(x)], y)
        mcc = mcc_loss(logits[len(x):], self.hp["temperature"])
        weight = ramped(self.hp["lambda_mcc"], self.hp["ramp"], self.progress(step))
        self.step(cls + weight * mcc, self.optims["model"])
        return {"cls": cls.item(), "mcc": mcc.item()}
