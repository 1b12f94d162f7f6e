"""The Cityscapes label space shared by every segmentation domain, and its colours.

Datasets map their own label ids to these train ids (255 = ignore); the shipped synthetic pair
uses a subset of the names. Class sets: 19 (GTA5 -> Cityscapes), 16 and 13 (SYNTHIA ->
Cityscapes, the sets ADVENT and later papers report).
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255  # the one ignore label (here, not in metrics, so the leaderboard imports it without torch)

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
# Cityscapes label id -> train id (labels.py of the Cityscapes scripts); every other id is ignored.
CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                          25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SYNTHIA_16 = [c for c in CITYSCAPES_CLASSES if c not in ("terrain", "truck", "train")]
SYNTHIA_13 = [c for c in SYNTHIA_16 if c not in ("wall", "fence", "pole")]

# The Cityscapes colour of each class (labels.py), keyed by name so subsets keep their colours.
PALETTE = {
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70), "wall": (102, 102, 156),
    "fence": (190, 153, 153), "pole": (153, 153, 153), "traffic light": (250, 170, 30),
    "traffic sign": (220, 220, 0), "vegetation": (107, 142, 35), "terrain": (152, 251, 152),
    "sky": (70, 130, 180), "person": (220, 20, 60), "rider": (255, 0, 0), "car": (0, 0, 142),
    "truck": (0, 0, 70), "bus": (0, 60, 100), "train": (0, 80, 100), "motorcycle": (0, 0, 230),
    "bicycle": (119, 11, 32),
}


def lookup_table(id_to_train: dict[int, int], size: int = 256) -> np.ndarray:
    """A uint8 table ``lut[label_id] = train_id`` (255 for ids not in the map), for ``lut[label]``."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in id_to_train.items():
        lut[src] = dst
    return lut


def remap(id_to_train: dict[int, int], names: list[str]) -> dict[int, int]:
    """Restrict a Cityscapes-train-id map to a class subset, renumbering into the subset's order:
    e.g. Cityscapes ids -> the 16 SYNTHIA classes."""
    keep = {CITYSCAPES_CLASSES.index(n): i for i, n in enumerate(names)}
    return {src: keep[dst] for src, dst in id_to_train.items() if dst in keep}


def colorize(label: np.ndarray, classes: list[str]) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 colours; ignored pixels black."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for i, name in enumerate(classes):
        colours[i] = PALETTE.get(name, ((i * 67) % 256, (i * 149) % 256, (i * 211) % 256))
    return colours[label]
