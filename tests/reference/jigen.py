"""JiGen: a transcription of its authors' puzzle construction and training step.

Repository: fmcarlucci/JigenDG, commit 8522c29: data/JigsawLoader.py lines 47-98
(``JigsawDataset``: ``get_tile``, ``__getitem__``: tiles of a 3 x 3 grid, ``[tiles[perm[t]] for t
in range(9)]`` for order > 0, ``make_grid(x, 3, padding=0)`` for whole-image networks),
train_jigsaw.py lines 79-114 (``_do_epoch``: class loss on every image, the jigsaw loss at
``jig_weight``), train_DA_jigsaw.py lines 55-56 (``entropy_loss``) and 84-107 (the target's jigsaw
loss at ``target_weight`` and the entropy of its whole images at ``entropy_weight``), models/mnist.py
lines 49-54 (two linear heads, jigsaw then class, on the same features); run_PACS_photo.sh
(jigsaw_n_classes 30, jig_weight 0.9, bias_whole_image 0.7).

Left out: file reading and PIL (the tiles are cut from the image tensor: a PIL crop of a box of
whole pixels is the same slice), the tile augmentations and normalisation, the data loader's
random draw of each image's order (handed in: the parity test draws the orders as the plugin
does, and tests/test_parity_jigen.py checks their distribution against the authors' rule),
``classify_only_sane`` and the target-in-source branch (off in the authors' scripts), logging.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as func


class JigsawImages:
    def __init__(self, permutations: torch.Tensor, grid_size: int = 3):
        self.permutations = permutations
        self.grid_size = grid_size

    def get_tile(self, img, n):
        h = img.shape[-2] // self.grid_size
        w = img.shape[-1] // self.grid_size
        y = int(n / self.grid_size)
        x = n % self.grid_size
        return img[:, y * h:(y + 1) * h, x * w:(x + 1) * w]

    def item(self, img, order):
        n_grids = self.grid_size ** 2
        tiles = [None] * n_grids
        for n in range(n_grids):
            tiles[n] = self.get_tile(img, n)
        if order == 0:
            data = tiles
        else:
            data = [tiles[self.permutations[order - 1][t]] for t in range(n_grids)]
        data = torch.stack(data, 0)
        grid = torchvision.utils.make_grid(data, self.grid_size, padding=0)
        # a side 3 does not divide: the rows and columns the tiles leave out stay as they were
        out = img.clone()
        out[:, :grid.shape[-2], :grid.shape[-1]] = grid
        return out

    def batch(self, images, orders):
        return torch.stack([self.item(img, int(o)) for img, o in zip(images, orders)])


class JigsawModel(nn.Module):
    def __init__(self, features: nn.Module, jigsaw_classifier: nn.Module, class_classifier: nn.Module):
        super().__init__()
        self.features = features
        self.jigsaw_classifier = jigsaw_classifier
        self.class_classifier = class_classifier

    def forward(self, x):
        x = self.features(x)
        return self.jigsaw_classifier(x), self.class_classifier(x)


def entropy_loss(x):
    return torch.sum(-func.softmax(x, 1) * func.log_softmax(x, 1), 1).mean()


class Trainer:
    def __init__(self, model, optimizer, jig_weight=0.9, target_weight=0.9, entropy_weight=0.0):
        self.model, self.optimizer = model, optimizer
        self.jig_weight, self.target_weight, self.target_entropy = jig_weight, target_weight, entropy_weight

    def step(self, data, jig_l, class_l, tdata=None, tjig_l=None):
        criterion = nn.CrossEntropyLoss()
        self.optimizer.zero_grad()
        jigsaw_logit, class_logit = self.model(data)
        jigsaw_loss = criterion(jigsaw_logit, jig_l)
        class_loss = criterion(class_logit, class_l)
        loss = class_loss + jigsaw_loss * self.jig_weight
        out = {"class": class_loss.item(), "jigsaw": jigsaw_loss.item()}
        if tdata is not None:
            target_jigsaw_logit, target_class_logit = self.model(tdata)
            target_jigsaw_loss = criterion(target_jigsaw_logit, tjig_l)
            target_entropy_loss = entropy_loss(target_class_logit[tjig_l == 0])
            loss = loss + target_jigsaw_loss * self.target_weight + target_entropy_loss * self.target_entropy
            out |= {"t_jigsaw": target_jigsaw_loss.item(), "entropy": target_entropy_loss.item()}
        loss.backward()
        self.optimizer.step()
        return out
