"""JiGen: the jigsaw puzzle as an auxiliary self-supervised task (domain generalisation, and
adaptation on target images)."""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dabench.data import Batch
from dabench.hparams import HParam, choice, uniform
from dabench_plugins.algorithms.erm import ERM

GRID = 3  # 3 x 3 tiles, as the authors


@functools.lru_cache(maxsize=None)
def jigsaw_permutations(count: int = 30) -> torch.Tensor:
    """(count, 9) tile orders, picked greedily from the 9! permutations of the 3 x 3 tiles so that
    each is as far as possible (Hamming distance) from the unshuffled order and from every order
    already picked, ties to the first in lexicographic order (the maximal-Hamming rule of Noroozi &
    Favaro 2016, made deterministic). For 30: every order moves at least 7 tiles and differs from
    every other in at least 7 positions. The authors' ``permutations_30.npy`` (not redistributed
    here) is another set: in it two orders differ in only 4 positions and one swaps just the last
    two tiles of the whole image, so their puzzle has closer classes than this one."""
    if not 1 <= count <= 1000:
        raise ValueError(f"jigsaw permutations: 1 to 1000, got {count}")
    every = np.array(list(itertools.permutations(range(GRID * GRID))), dtype=np.int8)
    nearest = (every != np.arange(GRID * GRID)).sum(1)  # distance to the unshuffled order (class 0)
    picked = []
    for _ in range(count):
        k = int(np.argmax(nearest))
        picked.append(every[k])
        nearest = np.minimum(nearest, (every != every[k]).sum(1))
    return torch.tensor(np.stack(picked), dtype=torch.long)


def draw_orders(n: int, count: int, bias: float, device) -> torch.Tensor:
    """Each image's jigsaw class: uniform over 0 (unshuffled) .. ``count``, then 0 with probability
    ``bias`` (the authors' ``bias_whole_image``: P(0) = bias + (1 - bias) / (count + 1))."""
    orders = torch.randint(count + 1, (n,), device=device)
    if bias:
        orders[torch.rand(n, device=device) < bias] = 0
    return orders


def shuffle_tiles(x: torch.Tensor, orders: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """Image i cut into 3 x 3 tiles and put back with tile ``permutations[orders[i] - 1][t]`` at
    position t (the authors' ``[tiles[perm[t]] for t in range(9)]``), unchanged where the order is 0.
    Tiles are H // 3 x W // 3 pixels from the top left; a side that 3 does not divide keeps its last
    H % 3 rows (W % 3 columns) in place (28 x 28 digits: the last row and column)."""
    n, c, h, w = x.shape
    th, tw = h // GRID, w // GRID
    grid = x[:, :, : GRID * th, : GRID * tw].reshape(n, c, GRID, th, GRID, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = grid.reshape(n, GRID * GRID, c, th, tw)
    identity = torch.arange(GRID * GRID, device=x.device)
    table = torch.cat([identity[None], permutations.to(x.device)])  # row 0: unshuffled
    placed = tiles[torch.arange(n, device=x.device)[:, None], table[orders]]
    image = placed.reshape(n, GRID, GRID, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, GRID * th, GRID * tw)
    out = x.clone()
    out[:, :, : GRID * th, : GRID * tw] = image
    return out


def jigsaw_loss(features: nn.Module, head: nn.Module, images: torch.Tensor, count: int, bias: float) -> torch.Tensor:
    """Cross-entropy of the jigsaw head on the features of shuffled images (``dann -H aux=jigsaw``)."""
    orders = draw_orders(len(images), count, bias, images.device)
    return F.cross_entropy(head(features(shuffle_tiles(images, orders, jigsaw_permutations(count)))), orders)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The authors' ``entropy_loss``: -mean over images of sum_k p_k log p_k."""
    p = F.softmax(logits, dim=1)
    return -(p * F.log_softmax(logits, dim=1)).sum(1).mean()


class JiGen(ERM):
    """JiGen (Carlucci et al., CVPR 2019): ERM plus a jigsaw puzzle on the same images, through a
    second linear head on the features the class head reads.

    As the authors' code (fmcarlucci/JigenDG, commit 8522c29: train_jigsaw.py ``_do_epoch``,
    train_DA_jigsaw.py, data/JigsawLoader.py ``JigsawDataset``, run_PACS_photo.sh): each image is
    cut into 3 x 3 tiles and reassembled in one of ``jigsaw_classes`` (30) orders, or left whole
    (class 0), whole with probability ``bias_whole`` (0.7) on top of the uniform draw; the network
    sees the reassembled images; the loss is the class cross-entropy on all of them plus
    ``jig_weight`` (0.9) times the jigsaw cross-entropy (their PACS script's values). The jigsaw
    head is a linear layer on the last hidden layer, beside the class head (their networks:
    ``jigsaw_classifier`` and ``class_classifier`` on the same features; here ERM's head,
    fc100 -> fc K, and fc100 -> fc 31). In UDA the target images get the jigsaw task too, at
    ``target_jig_weight`` (0.9, the source's: the repository's DA script takes it as an argument and
    publishes no value), plus ``entropy_weight`` (0, that script's default) times the entropy of the
    class predictions on the target images left whole. Source and target pass through the network
    separately, as there.

    Not transcribed: their data augmentation (random resized crops, random grayscale tiles; the
    bench trains ERM without it, so the comparison isolates the puzzle), their optimiser (SGD
    0.001 with Nesterov on pretrained AlexNet/ResNet for PACS; here ERM's, as every digit method),
    the tile order set itself (``jigsaw_permutations``: the maximal-Hamming set, where theirs has
    closer orders; see there).
    """

    name = "jigen"
    task = "classification"
    needs_target = False
    hparams = {
        **ERM.hparams,
        "jigsaw_classes": HParam(30, choice([30, 100]), "number of tile orders (besides the whole image)"),
        "bias_whole": HParam(0.7, uniform(0.5, 0.9), "extra probability of leaving an image whole"),
        "jig_weight": HParam(0.9, uniform(0.1, 0.9), "weight of the jigsaw loss on source images"),
        "target_jig_weight": HParam(0.9, uniform(0.1, 0.9), "weight of the jigsaw loss on target images (UDA)"),
        "entropy_weight": HParam(0.0, None, "weight of the entropy of target predictions on whole images (UDA)"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.jigsaw_head = nn.Linear(self.classifier[-1].in_features, self.hp["jigsaw_classes"] + 1)
        self.optims["model"] = self.sgd(self.parameters())

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.classifier[:-1](self.featurizer(x))
        return self.jigsaw_head(hidden), self.classifier[-1](hidden)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.anneal(step)
        count, bias, perms = self.hp["jigsaw_classes"], self.hp["bias_whole"], jigsaw_permutations(self.hp["jigsaw_classes"])
        x, y = batch.labeled_sources()
        orders = draw_orders(len(x), count, bias, x.device)
        jig_logits, class_logits = self.heads(shuffle_tiles(x, orders, perms))
        cls, jig = F.cross_entropy(class_logits, y), F.cross_entropy(jig_logits, orders)
        loss = cls + self.hp["jig_weight"] * jig
        logs = {"cls": cls.item(), "jig": jig.item()}
        if batch.tgt_x is not None:
            t_orders = draw_orders(len(batch.tgt_x), count, bias, x.device)
            t_jig_logits, t_class_logits = self.heads(shuffle_tiles(batch.tgt_x, t_orders, perms))
            t_jig = F.cross_entropy(t_jig_logits, t_orders)
            whole = t_orders == 0  # none in the batch: the authors' mean over no image is NaN; here 0
            t_ent = entropy(t_class_logits[whole]) if whole.any() else t_class_logits.new_zeros(())
            loss = loss + self.hp["target_jig_weight"] * t_jig + self.hp["entropy_weight"] * t_ent
            logs |= {"tgt_jig": t_jig.item(), "tgt_entropy": t_ent.item()}
        self.optimise(loss, self.optims["model"])
        return logs
