"""FixMatch (semi-supervised DA, and unsupervised DA with the source as the labelled set): confident
predictions on weakly augmented images become the labels of strongly augmented copies."""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench.layers import mlp


def _shear(img, v, axis):
    return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                     shear=[math.degrees(math.atan(v)), 0.0] if axis == 0 else [0.0, math.degrees(math.atan(v))])


# Dassl's ``fixmatch_list`` (dassl/data/transforms/randaugment.py): (op, lowest, highest magnitude);
# geometric ops flip their sign with probability 1/2, as there. On uint8 (C, H, W) images.
FIXMATCH_OPS = [
    (lambda img, v: TF.autocontrast(img), 0, 1),
    (lambda img, v: TF.adjust_brightness(img, v), 0.05, 0.95),
    (lambda img, v: TF.adjust_saturation(img, v), 0.05, 0.95),
    (lambda img, v: TF.adjust_contrast(img, v), 0.05, 0.95),
    (lambda img, v: TF.equalize(img), 0, 1),
    (lambda img, v: img, 0, 1),
    (lambda img, v: TF.posterize(img, int(v)), 4, 8),
    (lambda img, v: TF.rotate(img, v if random.random() <= 0.5 else -v), -30, 30),
    (lambda img, v: TF.adjust_sharpness(img, v), 0.05, 0.95),
    (lambda img, v: _shear(img, v if random.random() <= 0.5 else -v, 0), -0.3, 0.3),
    (lambda img, v: _shear(img, v if random.random() <= 0.5 else -v, 1), -0.3, 0.3),
    (lambda img, v: TF.solarize(img, v) if v <= 255 else img, 0, 256),  # PIL: a threshold of 256 inverts nothing
    (lambda img, v: TF.affine(img, angle=0.0, translate=[round((v if random.random() <= 0.5 else -v) * img.shape[-1]), 0],
                              scale=1.0, shear=[0.0, 0.0]), -0.3, 0.3),
    (lambda img, v: TF.affine(img, angle=0.0, translate=[0, round((v if random.random() <= 0.5 else -v) * img.shape[-2])],
                              scale=1.0, shear=[0.0, 0.0]), -0.3, 0.3),
]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (the bench's tensors) to uint8 [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1


def weak(x: torch.Tensor) -> torch.Tensor:
    """FixMatch's weak view for images that must not be mirrored (digits): a random crop of the image
    padded by 12.5% of its side with zeros (Dassl's random_crop, padding 4 at 32 pixels)."""
    n, c, h, w = x.shape
    pad = max(1, round(0.125 * h))
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)  # black, as zero padding of a [0, 1] image
    out = torch.empty_like(x)
    for i in range(n):
        top, left = random.randint(0, 2 * pad), random.randint(0, 2 * pad)
        out[i] = padded[i, :, top:top + h, left:left + w]
    return out


def strong(x: torch.Tensor, n_ops: int = 2) -> torch.Tensor:
    """The weak view, then Dassl's ``RandAugmentFixMatch`` (``n_ops`` ops drawn with replacement,
    each at a uniform magnitude) and ``Cutout`` (one hole of half the side, Dassl's 16 of 32)."""
    x = weak(x)
    images = to_uint8(x)
    out = torch.empty_like(x)
    for i in range(len(images)):
        img = images[i]
        for op, lo, hi in random.choices(FIXMATCH_OPS, k=n_ops):
            img = op(img, random.random() * (hi - lo) + lo)
        out[i] = from_uint8(img)
    h, w = x.shape[-2:]
    length = h // 2
    for i in range(len(out)):  # Cutout: a square centred anywhere, clipped at the border
        cy, cx = random.randrange(h), random.randrange(w)
        out[i, :, max(0, cy - length // 2):min(h, cy + length // 2), max(0, cx - length // 2):min(w, cx + length // 2)] = 0.0
    return out


def fixmatch_loss(logits_strong: torch.Tensor, probs_weak: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dassl's unlabelled loss: the cross-entropy of the strong views to the weak views' argmax,
    counted where the weak prediction is at least ``threshold``, averaged over every image."""
    max_prob, pseudo = probs_weak.max(1)
    mask = (max_prob >= threshold).float()
    return (F.cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean(), mask.mean()


class FixMatch(ClassificationAlgorithm):
    """FixMatch (Sohn et al., NeurIPS 2020) as Dassl trains it (KaiyangZhou/Dassl.pytorch, commit
    c61a1b5: dassl/engine/ssl/fixmatch.py ``forward_backward``, randaugment.py ``fixmatch_list``,
    configs/trainers/ssl/fixmatch/cifar10.yaml, config/defaults.py): the labelled images (source,
    and the labelled target with ``--tgt-labeled N``) and the unlabelled target each get a weak and a
    strong view; the model's predictions on the weak views of both (no gradient) give pseudo-labels
    where their top probability is at least ``threshold`` (0.95); the loss is the cross-entropy of
    the labelled weak views plus ``weight_u`` (1) x the masked cross-entropy of all strong views to
    the pseudo-labels, averaged over all of them (Dassl counts the labelled images' strong views
    too). SGD 0.05, momentum 0.9, weight decay 5e-4, cosine to 0 over the run (Dassl steps it per
    epoch), batch 64; the unlabelled batch is as large as the labelled one (Dassl's CIFAR config
    draws 448). The network is the backbone and ERM's head. Dassl also reads the unlabelled images'
    labels to log the pseudo-labels' accuracy; dabench has none to read.
    """

    name = "fixmatch"
    task = "classification"
    hparams = {
        "lr": HParam(0.05, log_uniform(-2.5, -1), "SGD learning rate (cosine to 0)"),
        "batch_size": HParam(64, None, "images per domain per step"),
        "weight_decay": HParam(5e-4, None, "L2 penalty"),
        "threshold": HParam(0.95, None, "confidence above which a weak prediction labels the strong view"),
        "weight_u": HParam(1.0, None, "weight of the unlabelled loss"),
        "n_ops": HParam(2, None, "RandAugment ops per strong view"),
        "freeze_backbone": ClassificationAlgorithm.hparams["freeze_backbone"],
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.classifier = mlp([backbone.out_features, 100, num_classes])
        self.optims["model"] = torch.optim.SGD(self.parameters(), lr=self.hp["lr"], momentum=0.9,
                                               weight_decay=self.hp["weight_decay"])

    def views(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """(labelled weak, labelled strong, unlabelled weak, unlabelled strong), in Dassl's order."""
        x, _ = batch.labeled_sources()
        return weak(x), strong(x, self.hp["n_ops"]), weak(batch.tgt_x), strong(batch.tgt_x, self.hp["n_ops"])

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.cosine(step)
        _, y = batch.labeled_sources()
        x_w, x_s, u_w, u_s = self.views(batch)
        with torch.no_grad():
            probs = F.softmax(self.predict(torch.cat([x_w, u_w])), dim=1)
        loss_x = F.cross_entropy(self.predict(x_w), y)
        loss_u, keep = fixmatch_loss(self.predict(torch.cat([x_s, u_s])), probs, self.hp["threshold"])
        self.optimise(loss_x + self.hp["weight_u"] * loss_u, self.optims["model"])
        return {"loss_x": loss_x.item(), "loss_u": loss_u.item(), "keep": keep.item()}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
