"""Entropy minimisation: source classification plus low-entropy predictions on the target."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.erm import ERM


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The Shannon entropy (nats) of each row's softmax, in fp32."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


class EntMin(ERM):
    """Entropy minimisation (Grandvalet & Bengio, NeurIPS 2004), the unlabelled-data term of
    semi-supervised learning used as a DA baseline: cross-entropy on the labelled images plus
    lambda times the mean entropy of the predictions on the unlabelled target images.

    The paper publishes no code; this follows its Section 2 (the criterion C = L - lambda H_emp,
    maximised): L the log-likelihood of the labelled images, H_emp the empirical entropy of the
    model's posteriors, where a labelled image's posterior is its one-hot label (entropy 0) and an
    unlabelled image's is the softmax. Per step, negated and averaged over a batch: mean
    cross-entropy of the labelled images + lambda x mean entropy (nats, exact log-softmax) of the
    target images; the paper's sums and 1/n fold into lambda, which it sets by cross-validation.
    TLlib's entropy term (tllib/modules/entropy.py, used by its AFN example) is the same mean entropy
    with -p log(p + 1e-5); ADVENT's divides by log K (bits per class), for segmentation maps.

    ERM's network and optimiser. lambda = 0.1 by default, TLlib's ``--trade-off-entropy`` in its AFN
    runs (``-H lambda_ent``, searched over 10^U(-2, 0)).
    """

    name = "entmin"
    task = "classification"
    hparams = {**ERM.hparams, "lambda_ent": HParam(0.1, log_uniform(-2, 0), "weight of the target entropy")}

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        x, y = batch.labeled_sources()
        logits = self.predict(torch.cat([x, batch.tgt_x]))
        cls = F.cross_entropy(logits[: len(x)], y)
        ent = entropy(logits[len(x):]).mean()
        self.optimise(cls + self.hp["lambda_ent"] * ent, self.optims["model"])
        return {"cls": cls.item(), "ent": ent.item()}
