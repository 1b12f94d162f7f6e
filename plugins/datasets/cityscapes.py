"""The street-scene benchmarks of segmentation DA, read from the user's copies in their published
layouts: GTA5 and SYNTHIA-RAND-CITYSCAPES (synthetic sources), Cityscapes (the real target).

All three are mapped into the Cityscapes label space: 19 classes for GTA5 -> Cityscapes, the 16 or 13
of SYNTHIA -> Cityscapes (``cityscapes:16`` / ``cityscapes:13`` pair with ``synthia`` / ``synthia:13``).
Training sizes are those of AdaptSegNet and ADVENT: GTA5 1280x720, SYNTHIA 1280x760, Cityscapes
1024x512; the Cityscapes val split is the test split, scored against its full 2048x1024 labels.
"""
from __future__ import annotations

from pathlib import Path

from dabench.data import SEGMENTATION, Domain
from dabench.errors import DabenchError
from dabench.registry import plugin
from dabench.segdata.pairs import (Pair, SegmentationFiles, Survey, header, listing, lookup_table, pair_up, read_first_channel,
                              scaled, survey, warn_mismatch)

# The Cityscapes label space every street-scene domain maps into (labels.py of the Cityscapes scripts).
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
# Cityscapes label id -> train id; every other id is ignored.
CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                          25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# The class sets ADVENT and later papers report for SYNTHIA -> Cityscapes.
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


def remap(id_to_train: dict[int, int], names: list[str]) -> dict[int, int]:
    """Restrict a Cityscapes-train-id map to a class subset, renumbering into the subset's order:
    e.g. Cityscapes ids -> the 16 SYNTHIA classes."""
    keep = {CITYSCAPES_CLASSES.index(n): i for i, n in enumerate(names)}
    return {src: keep[dst] for src, dst in id_to_train.items() if dst in keep}


def label_space(classes: list[str]) -> dict:
    """The Domain fields of a Cityscapes-label-space domain with ``classes``: each class's Cityscapes
    colour, and on the 16 SYNTHIA classes the 13-class mean the SYNTHIA -> Cityscapes tables report
    beside the 16-class one (no paper reports it on a 19-class GTA5 table)."""
    subsets = {"mIoU13": list(SYNTHIA_13)} if list(classes) == SYNTHIA_16 else {}
    return {"class_subsets": subsets, "colours": {c: PALETTE[c] for c in classes}}

GTA5_SIZE, CITYSCAPES_SIZE, SYNTHIA_SIZE = (1280, 720), (1024, 512), (1280, 760)
ROOT_HINT = "dabench never downloads: put it under your data root (--data-root or DABENCH_DATA)."
GTA5_WHERE = ("GTA5 is the data set of Richter et al., 'Playing for Data: Ground Truth from Computer Games' (ECCV "
              "2016), published at download.visinf.tu-darmstadt.de/data/from_games/ (24,966 frames in 10 parts; "
              "unpack every part's images/ and labels/ into <data root>/gta5/images and <data root>/gta5/labels). "
              + ROOT_HINT)
CITYSCAPES_WHERE = ("Cityscapes (Cordts et al., CVPR 2016) is published at cityscapes-dataset.com (free registration): "
                    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip and unpack both into "
                    "<data root>/cityscapes. " + ROOT_HINT)
SYNTHIA_WHERE = ("SYNTHIA (Ros et al., CVPR 2016) is published at synthia-dataset.net: download SYNTHIA-RAND-CITYSCAPES "
                 "(9,400 frames) and unpack it in <data root>/synthia (RGB/ and GT/LABELS/ there or in its RAND_CITYSCAPES/). " + ROOT_HINT)

# SYNTHIA-RAND-CITYSCAPES class id (first channel of GT/LABELS/*.png) -> class, from the set's README,
# as mapped by DACS (data/synthia_dataset.py) and DAFormer (tools/convert_datasets/synthia.py).
# Terrain (16), truck (18) and train (20) are listed there but do not occur.
SYNTHIA_CLASS_IDS = {3: "road", 4: "sidewalk", 2: "building", 21: "wall", 5: "fence", 7: "pole",
                     15: "traffic light", 9: "traffic sign", 6: "vegetation", 1: "sky", 10: "person", 17: "rider",
                     8: "car", 19: "bus", 12: "motorcycle", 11: "bicycle"}
SYNTHIA_ID_TO_TRAIN = {k: CITYSCAPES_CLASSES.index(v) for k, v in SYNTHIA_CLASS_IDS.items()}
ID_FORMATS = ("8-bit palette PNG", "8-bit grey PNG")  # label files that hold Cityscapes label ids


def _base(root: Path | None, name: str, folder: str, layout: str, where: str) -> Path:
    if root is None:
        raise DabenchError(f"{name} reads {layout}, but no data root is set. {where}")
    return Path(root).expanduser() / folder


def _need(folder: Path, name: str, layout: str, where: str) -> None:
    if not folder.is_dir():
        raise DabenchError(f"{name}: no folder {folder} (expected layout {layout}). {where}")


def _need_formats(s: Survey, allowed: tuple[str, ...], name: str, why: str) -> None:
    odd = {f: n for f, n in s.label_formats.items() if f not in allowed}
    if odd:
        found = ", ".join(f"{f} ({n})" for f, n in odd.items())
        raise DabenchError(f"{name}: expected the labels as published, {' or '.join(allowed)}; found {found}. {why}")


def _classes(arg: str | None, name: str) -> list[str]:
    sets = {None: CITYSCAPES_CLASSES, "19": CITYSCAPES_CLASSES, "16": SYNTHIA_16, "13": SYNTHIA_13}
    if arg not in sets:
        raise DabenchError(f"{name}: the class set is 19 (the default), 16 or 13 (the SYNTHIA -> Cityscapes subsets); "
                           f"got '{arg}'. Write {name}, {name}:16 or {name}:13.")
    return list(sets[arg])


@plugin("gta5", task=SEGMENTATION, description="GTA5 (Richter et al. 2016), 19 classes, ROOT/gta5/images/*.png + labels/*.png")
def gta5(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """GTA5 frames with palette-PNG labels holding Cityscapes label ids, mapped to the 19 train ids.
    No official test split. A few published labels differ in size from their frame: both are resized
    to the training size (1280x720, or --image-size as the height), the label nearest."""
    if arg:
        raise DabenchError(f"gta5 takes no argument (got 'gta5:{arg}'); it always has the 19 Cityscapes classes.")
    layout = "<data root>/gta5/images/NNNNN.png and <data root>/gta5/labels/NNNNN.png"
    base = _base(root, "gta5", "gta5", layout, GTA5_WHERE)
    for sub in ("images", "labels"):
        _need(base / sub, "gta5", layout, GTA5_WHERE)
    pairs = pair_up(listing(base / "images", (".png",)), listing(base / "labels", (".png",)), "gta5",
                    f"Each {base}/images/NNNNN.png needs {base}/labels/NNNNN.png.")
    if not pairs:
        raise DabenchError(f"gta5: {base}/images holds no .png frames (expected layout {layout}). {GTA5_WHERE}")
    s = survey(pairs)
    _need_formats(s, ID_FORMATS, "gta5", "GTA5's labels are palette PNGs whose indices are label ids; colour "
                  "(RGB) copies lose them. Unpack the labels again from the published archives.")
    warn_mismatch(s, "gta5")
    size = scaled(GTA5_SIZE, image_size, "gta5")
    train = SegmentationFiles(pairs, size, size, lookup_table(CITYSCAPES_ID_TO_TRAIN), name="gta5")
    info = {"path": str(base), "images": len(pairs), "published_images": 24_966, **s.info(),
            "source": "Richter et al., ECCV 2016: download.visinf.tu-darmstadt.de/data/from_games/"}
    return Domain("gta5", SEGMENTATION, list(CITYSCAPES_CLASSES), train, None, size, info, **label_space(CITYSCAPES_CLASSES))


def _cityscapes_pairs(base: Path, split: str, name: str, layout: str) -> list[Pair]:
    image_dir, label_dir = base / "leftImg8bit" / split, base / "gtFine" / split
    for folder in (image_dir, label_dir):
        _need(folder, name, layout, CITYSCAPES_WHERE)
    images: dict[str, str] = {}
    labels: dict[str, str] = {}
    for found, folder, suffix in ((images, image_dir, "_leftImg8bit.png"), (labels, label_dir, "_gtFine_labelIds.png")):
        for city in sorted(d for d in folder.iterdir() if d.is_dir()):
            found |= {f"{city.name}/{k}": p for k, p in listing(city, (suffix,), strip=suffix).items()}
    pairs = pair_up(images, labels, f"{name} ({split})", f"Each {image_dir}/<city>/<name>_leftImg8bit.png needs "
                    f"{label_dir}/<city>/<name>_gtFine_labelIds.png.")
    if not pairs:
        raise DabenchError(f"{name}: no images in {image_dir}/<city>/*_leftImg8bit.png (expected layout {layout}). "
                           f"{CITYSCAPES_WHERE}")
    return pairs


@plugin("cityscapes", task=SEGMENTATION, description="Cityscapes (Cordts et al. 2016), 19 classes (or :16, :13), test = val, ROOT/cityscapes")
def cityscapes(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """Cityscapes fine annotations: train = the train split, test = the val split (500 images) scored
    at the labels' full resolution. ``cityscapes:16`` and ``cityscapes:13`` keep the SYNTHIA classes."""
    classes = _classes(arg, "cityscapes")
    name = "cityscapes" if arg is None else f"cityscapes:{arg}"
    layout = ("<data root>/cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
              "<data root>/cityscapes/gtFine/{train,val}/<city>/*_gtFine_labelIds.png")
    base = _base(root, name, "cityscapes", layout, CITYSCAPES_WHERE)
    train_pairs = _cityscapes_pairs(base, "train", name, layout)
    val_pairs = _cityscapes_pairs(base, "val", name, layout)
    why = "Use the *_gtFine_labelIds.png files of gtFine_trainvaltest.zip as published."
    s, vs = survey(train_pairs), survey(val_pairs)
    for x in (s, vs):
        _need_formats(x, ID_FORMATS, name, why)
    warn_mismatch(s, name)
    size = scaled(CITYSCAPES_SIZE, image_size, name)
    lut = lookup_table(remap(CITYSCAPES_ID_TO_TRAIN, classes))
    train = SegmentationFiles(train_pairs, size, size, lut, name=name)
    full = header(val_pairs[0][1])[0]  # the stored label size (2048x1024): one size, so test batches stack
    test = SegmentationFiles(val_pairs, size, full, lut, name=f"{name} (val)")
    info = {"path": str(base), "train_images": len(train_pairs), "test_images (val split)": len(val_pairs),
            "published_images": "2,975 train, 500 val", **s.info(), **vs.info("test_", pairs_resized=False),
            "test_label_size": f"{full[0]}x{full[1]} (stored resolution; predictions are upsampled to it)",
            "source": "Cordts et al., CVPR 2016: cityscapes-dataset.com (leftImg8bit_trainvaltest.zip, "
                      "gtFine_trainvaltest.zip)"}
    return Domain(name, SEGMENTATION, classes, train, test, size, info, **label_space(classes))


@plugin("synthia", task=SEGMENTATION, description="SYNTHIA-RAND-CITYSCAPES (Ros et al. 2016), 16 classes (or :13), ROOT/synthia")
def synthia(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """SYNTHIA-RAND-CITYSCAPES: RGB/*.png with 16-bit GT/LABELS/*.png (class id in the first channel),
    on the 16 classes it shares with Cityscapes (``synthia:13``: the 13 of the other papers' second
    table). No official test split."""
    if arg not in (None, "16", "13"):
        raise DabenchError(f"synthia: the class set is 16 (the default) or 13; got '{arg}'. SYNTHIA has no terrain, "
                           "truck or train, so there is no 19-class version. Write synthia or synthia:13.")
    classes = SYNTHIA_13 if arg == "13" else SYNTHIA_16
    name = "synthia" if arg is None else f"synthia:{arg}"
    layout = ("<data root>/synthia/RGB/*.png and <data root>/synthia/GT/LABELS/*.png (or under "
              "<data root>/synthia/RAND_CITYSCAPES/, where the archive unpacks them)")
    base = _base(root, name, "synthia", layout, SYNTHIA_WHERE)
    if not (base / "RGB").is_dir() and (base / "RAND_CITYSCAPES" / "RGB").is_dir():
        base = base / "RAND_CITYSCAPES"  # the published archive's own top folder
    for sub in ("RGB", "GT/LABELS"):
        _need(base / sub, name, layout, SYNTHIA_WHERE)
    pairs = pair_up(listing(base / "RGB", (".png",)), listing(base / "GT" / "LABELS", (".png",)), name,
                    f"Each {base}/RGB/NAME.png needs {base}/GT/LABELS/NAME.png.")
    if not pairs:
        raise DabenchError(f"{name}: {base}/RGB holds no .png frames (expected layout {layout}). {SYNTHIA_WHERE}")
    s = survey(pairs)
    _need_formats(s, ("16-bit RGB PNG",), name, "Labels re-saved by an 8-bit tool (PIL, imageio) keep only the "
                  "high byte of each id; unpack GT/LABELS again from the published archive.")
    warn_mismatch(s, name)
    size = scaled(SYNTHIA_SIZE, image_size, name)
    lut = lookup_table(remap(SYNTHIA_ID_TO_TRAIN, classes))
    train = SegmentationFiles(pairs, size, size, lut, read_first_channel, name=name)
    info = {"path": str(base), "images": len(pairs), "published_images": 9_400, **s.info(),
            "source": "Ros et al., CVPR 2016: synthia-dataset.net (SYNTHIA-RAND-CITYSCAPES)"}
    return Domain(name, SEGMENTATION, list(classes), train, None, size, info, **label_space(classes))
