"""Source only: empirical risk minimisation on the labelled data, no adaptation."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from dabench.algorithm import Algorithm, mlp
from dabench.data import Batch


class ERM(Algorithm):
    """Source-only training (ERM, Vapnik 1998): the baseline every DA method must beat.

    Trains on source labels (plus labelled target samples when --tgt-labeled N is given). No
    target image passes through the network, so batch-norm statistics never see the target.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.classifier = mlp([backbone.out_features, 100, num_classes])
        self.optims["model"] = self.sgd(self.parameters())

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        x, y = self.labeled_sources(batch)
        loss = F.cross_entropy(self.predict(x), y)
        self.step(loss, self.optims["model"])
        return {"cls": loss.item()}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
