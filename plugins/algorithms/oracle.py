"""Trained on labelled target data: the upper bound adaptation methods are measured against."""
from __future__ import annotations

from dabench.data import Batch
from dabench_plugins.algorithms.erm import ERM


class Oracle(ERM):
    """Target oracle: supervised training on labelled target training samples (all by default).

    Not a domain adaptation method: it reads target labels that UDA methods never get, and
    tells how much of the gap is left to close. Source data is not used. With --tgt-labeled N it
    trains on N labelled target images only: the supervised baseline of a data-efficiency curve.
    """

    name = "oracle"
    task = "any"
    target_labels = "all"
    needs_target = False  # it trains on the labelled target set, not on batch.tgt_x

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.poly(step) if self.segmentation else self.anneal(step)
        loss = self.supervised_loss([(batch.tgt_labeled.x, batch.tgt_labeled.y)])
        self.optimise(loss, self.optims["model"])
        return {"seg" if self.segmentation else "cls": loss.item()}
