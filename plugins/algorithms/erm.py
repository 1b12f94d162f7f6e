"""Source only: empirical risk minimisation on the labelled data, no adaptation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm, SegmentationAlgorithm
from dabench.data import CLASSIFICATION, SEGMENTATION, Batch, by_domain, concat
from dabench.hparams import HParam, int_log2, log_uniform
from dabench.layers import mlp, seg_loss

# DomainBed's optimiser (facebookresearch/DomainBed, hparams_registry.py lines 205-233,
# algorithms.py lines 107-111): Adam at a constant rate, no weight decay by default; on small
# images (its MNIST sets: the digits regime) 1e-3 and 64 images per domain, on ImageNet-size
# images (PACS, Office-Home, DomainNet ...: the imagenet regime) 5e-5 and 32. Its DG methods here
# (mmd, irm, vrex, groupdro, ...) train with it; ``domainbed_adam`` builds it. The random-search
# distributions are the small images' (DomainBed draws lr from 10^U(-5, -3.5) and the batch from
# 2^U(3, 5.5) on large images).
DOMAINBED_ADAM = {
    "lr": HParam(1e-3, log_uniform(-4.5, -2.5), "Adam's learning rate (DomainBed: 1e-3 on small images, 5e-5 on "
                 "ImageNet-size ones, constant)", regimes={"digits": 1e-3, "imagenet": 5e-5}),
    "batch_size": HParam(64, int_log2(3, 9), "images per source domain per step (DomainBed: 64 on small images, 32 "
                         "on ImageNet-size ones)", regimes={"digits": 64, "imagenet": 32}),
    "weight_decay": HParam(0.0, None, "L2 penalty (DomainBed's default: 0)"),
}


def domainbed_adam(module: nn.Module, hp: dict) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])


class ERM(ClassificationAlgorithm, SegmentationAlgorithm):
    """Source-only training (ERM, Vapnik 1998): the baseline every DA method must beat.

    Trains on source labels (plus labelled target samples when --tgt-labeled N is given). No
    target image passes through the network, so batch-norm statistics never see the target.
    Classification: the backbone's features, an MLP head, SGD with the DANN annealed rate.
    Segmentation: the segmenter's main logits (plus ``aux_weight`` x its auxiliary head, as
    multi-level AdaptSegNet trains it), SGD with poly decay, heads at 10x.
    """

    name = "erm"
    task = "any"
    needs_target = False  # also the domain-generalisation baseline (--setting dg)
    spaces = {CLASSIFICATION: ClassificationAlgorithm.hparams, SEGMENTATION: SegmentationAlgorithm.hparams}

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        if self.segmentation:
            self.optims["model"] = self.seg_sgd(backbone)
        else:
            self.classifier = mlp([backbone.out_features, 100, num_classes])
            self.optims["model"] = self.sgd(self.parameters())

    def supervised_loss(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The summed supervised loss over labelled groups; one forward per group."""
        if not self.segmentation:
            x, y = concat(parts)
            return F.cross_entropy(self.predict(x), y)
        total = 0.0
        for x, y in parts:
            main, aux = self.featurizer(x)
            total = total + seg_loss(main, y) + (self.hp["aux_weight"] * seg_loss(aux, y) if aux is not None else 0.0)
        return total

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.poly(step) if self.segmentation else self.anneal(step)
        loss = self.supervised_loss(batch.labeled_parts())
        self.optimise(loss, self.optims["model"])
        return {"seg" if self.segmentation else "cls": loss.item()}

    def per_domain(self, batch: Batch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """DomainBed's ``AbstractMMD`` forward over the source domains of ``batch``: each domain through
        the featurizer on its own (a batch-norm network normalises each by its own statistics); the
        features per domain and the mean of the per-domain cross-entropies."""
        xs, ys = by_domain(batch.src_x, batch.src_domain), by_domain(batch.src_y, batch.src_domain)
        feats = [self.featurizer(x) for x in xs]
        cls = sum(F.cross_entropy(self.classifier(f), y) for f, y in zip(feats, ys)) / len(feats)
        return feats, cls

    def predict(self, x):
        if self.segmentation:
            return self.featurizer(x)[0]
        return self.classifier(self.featurizer(x))
