"""Office-31 (Saenko et al., ECCV 2010): 31 office object classes photographed in three domains."""
from __future__ import annotations

from pathlib import Path

from dabench.data import CLASSIFICATION, Domain
from dabench.errors import DabenchError
from dabench.registry import DomainGroup, plugin

from .folder import ImageFiles, scan

DOMAINS = {"amazon": 2817, "dslr": 498, "webcam": 795}  # domain -> images in the published set
CLASSES = [
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
    "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray",
    "mobile_phone", "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector",
    "punchers", "ring_binder", "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can",
]
DEFAULT_SIZE = 224
WHERE = ("Office-31 is the data set of Saenko et al., 'Adapting visual category models to new domains' "
         "(ECCV 2010); it is commonly downloaded through the links in the Transfer-Learning-Library (tllib) "
         "or DomainBed download lists. dabench never downloads: put it under your data root "
         "(--data-root or DABENCH_DATA).")


@plugin("office31", task=CLASSIFICATION, description="Office-31 (amazon | dslr | webcam), ROOT/office31/<domain>/images/<class>/*.jpg")
def office31(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """One Office-31 domain, 31 classes, read from the user's copy. No official test split."""
    if arg not in DOMAINS:
        got = f"'office31:{arg}'" if arg else "'office31' without a domain"
        raise DabenchError(f"Office-31 has three domains; got {got}. Write office31:amazon, office31:dslr "
                           "or office31:webcam.")
    layout = f"<data root>/office31/{arg}/images/<class>/*.jpg"
    if root is None:
        raise DabenchError(f"office31:{arg} reads {layout}, but no data root is set. {WHERE}")
    path = Path(root).expanduser() / "office31" / arg / "images"
    if not path.is_dir():
        raise DabenchError(f"office31:{arg}: no folder {path} (expected layout {layout}, 31 class folders). {WHERE}")
    classes, files, labels = scan(path, f"office31:{arg}")
    if classes != CLASSES:
        missing, extra = sorted(set(CLASSES) - set(classes)), sorted(set(classes) - set(CLASSES))
        raise DabenchError(f"office31:{arg}: {path} should hold the 31 Office-31 class folders. Missing: "
                           f"{', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'}. {WHERE}")
    size = image_size or DEFAULT_SIZE
    info = {"path": str(path), "images": len(files), "published_images": DOMAINS[arg]}
    return Domain(f"office31:{arg}", CLASSIFICATION, classes, ImageFiles(files, labels, size), None, size, info)


OFFICE31 = DomainGroup(tuple(f"office31:{d}" for d in DOMAINS), "Office-31's three domains", name="office31")
