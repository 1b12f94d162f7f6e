"""The multi-domain classification benchmarks, read from the user's copies in their published
layouts: PACS, Office-Home, DomainNet and VisDA-2017. dabench never downloads them."""
from __future__ import annotations

from pathlib import Path

from dabench.data import CLASSIFICATION, Domain
from dabench.errors import DabenchError
from dabench.registry import DomainGroup, plugin

from .folder import ImageFiles, scan

DEFAULT_SIZE = 224
ROOT_HINT = "dabench never downloads: put it under your data root (--data-root or DABENCH_DATA)."

PACS_DOMAINS = {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929}
PACS_CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
PACS_WHERE = ("PACS is the data set of Li et al., 'Deeper, Broader and Artier Domain Generalization' (ICCV 2017), "
              "published at domaingeneralization.github.io (the kfold images; DomainBed's download script fetches "
              "the same). " + ROOT_HINT)

OFFICE_HOME_DOMAINS = {"art": ("Art", 2427), "clipart": ("Clipart", 4365), "product": ("Product", 4439),
                       "real": ("Real World", 4357)}
OFFICE_HOME_WHERE = ("Office-Home is the data set of Venkateswara et al., 'Deep Hashing Network for Unsupervised "
                     "Domain Adaptation' (CVPR 2017), published at hemanthdv.org/officeHomeDataset.html. " + ROOT_HINT)

DOMAINNET_DOMAINS = {"clipart": 48129, "infograph": 51605, "painting": 72266, "quickdraw": 172500, "real": 172947,
                     "sketch": 69128}
DOMAINNET_WHERE = ("DomainNet is the data set of Peng et al., 'Moment Matching for Multi-Source Domain Adaptation' "
                   "(ICCV 2019), published at ai.bu.edu/M3SDA: unpack each domain's zip and put its "
                   "<domain>_train.txt and <domain>_test.txt next to the domain folders. " + ROOT_HINT)

VISDA_CLASSES = ["aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant",
                 "skateboard", "train", "truck"]
VISDA_DOMAINS = {"synthetic": ("train", 152397), "real": ("validation", 55388)}
VISDA_WHERE = ("VisDA-2017 is the classification track of Peng et al., 'VisDA: The Visual Domain Adaptation "
               "Challenge' (2017), published at ai.bu.edu/visda-2017 (train.tar: synthetic renderings; "
               "validation.tar: real photos, each with its image_list.txt). " + ROOT_HINT)


def _domain_arg(name: str, arg: str | None, domains) -> str:
    if arg not in domains:
        got = f"'{name}:{arg}'" if arg else f"'{name}' without a domain"
        raise DabenchError(f"{name} has the domains {', '.join(domains)}; got {got}. Write e.g. {name}:{next(iter(domains))}.")
    return arg


def _base(root: Path | None, name: str, layout: str, where: str) -> Path:
    if root is None:
        raise DabenchError(f"{name} reads {layout}, but no data root is set. {where}")
    return Path(root).expanduser()


def _class_folders(name: str, path: Path, expected: list[str] | None, layout: str, where: str):
    if not path.is_dir():
        raise DabenchError(f"{name}: no folder {path} (expected layout {layout}). {where}")
    classes, files, labels = scan(path, name)
    if expected is not None and classes != sorted(expected):
        missing, extra = sorted(set(expected) - set(classes)), sorted(set(classes) - set(expected))
        raise DabenchError(f"{name}: {path} should hold the {len(expected)} class folders. Missing: "
                           f"{', '.join(missing[:8]) or 'none'}; unexpected: {', '.join(extra[:8]) or 'none'}. {where}")
    return classes, files, labels


@plugin("pacs", task=CLASSIFICATION, description="PACS (art_painting | cartoon | photo | sketch), 7 classes, ROOT/PACS/<domain>/<class>/*")
def pacs(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """One PACS domain (Li et al. 2017), 7 classes, in DomainBed's layout. No official test split."""
    arg = _domain_arg("pacs", arg, PACS_DOMAINS)
    layout = f"<data root>/PACS/{arg}/<class>/*.jpg (or .png)"
    path = _base(root, f"pacs:{arg}", layout, PACS_WHERE) / "PACS" / arg
    classes, files, labels = _class_folders(f"pacs:{arg}", path, PACS_CLASSES, layout, PACS_WHERE)
    size = image_size or DEFAULT_SIZE
    info = {"path": str(path), "images": len(files), "published_images": PACS_DOMAINS[arg]}
    return Domain(f"pacs:{arg}", CLASSIFICATION, classes, ImageFiles(files, labels, size), None, size, info)


@plugin("office-home", task=CLASSIFICATION, description="Office-Home (art | clipart | product | real), 65 classes, ROOT/office_home/<Domain>/<class>/*")
def office_home(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """One Office-Home domain (Venkateswara et al. 2017), 65 classes: ROOT/office_home/Art, Clipart,
    Product and 'Real World' (or Real_World, as some tools rename it). No official test split."""
    arg = _domain_arg("office-home", arg, OFFICE_HOME_DOMAINS)
    folder, published = OFFICE_HOME_DOMAINS[arg]
    layout = f"<data root>/office_home/{folder}/<class>/*.jpg (65 class folders)"
    base = _base(root, f"office-home:{arg}", layout, OFFICE_HOME_WHERE) / "office_home"
    path = base / folder
    if not path.is_dir() and (base / folder.replace(" ", "_")).is_dir():
        path = base / folder.replace(" ", "_")
    classes, files, labels = _class_folders(f"office-home:{arg}", path, None, layout, OFFICE_HOME_WHERE)
    if len(classes) != 65:
        raise DabenchError(f"office-home:{arg}: {path} holds {len(classes)} class folders; Office-Home has 65 per "
                           f"domain. {OFFICE_HOME_WHERE}")
    size = image_size or DEFAULT_SIZE
    info = {"path": str(path), "images": len(files), "published_images": published}
    return Domain(f"office-home:{arg}", CLASSIFICATION, classes, ImageFiles(files, labels, size), None, size, info)


def _list_file(name: str, path: Path, base: Path, where: str) -> tuple[list[Path], list[int]]:
    """``relative/path.jpg label`` lines, paths relative to ``base``; every file must exist."""
    if not path.is_file():
        raise DabenchError(f"{name}: no list file {path}. {where}")
    files, labels, missing = [], [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DabenchError(f"{name}: line {n} of {path} is '{line[:80]}'; expected 'relative/path.jpg LABEL'. {where}")
        f = base / parts[0]
        (files if f.is_file() else missing).append(f)
        labels.append(int(parts[1]))
    if missing:
        raise DabenchError(f"{name}: {len(missing)} images listed in {path} are missing (e.g. {missing[0]}). Unpack the "
                           f"archive again next to the list file. {where}")
    return files, labels


@plugin("domainnet", task=CLASSIFICATION, description="DomainNet (clipart | infograph | painting | quickdraw | real | sketch), 345 classes, official train/test lists, ROOT/domainnet")
def domainnet(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """One DomainNet domain (Peng et al. 2019), 345 classes; train and test are the official lists
    (<domain>_train.txt, <domain>_test.txt: 'domain/class/file.jpg label' per line)."""
    arg = _domain_arg("domainnet", arg, DOMAINNET_DOMAINS)
    layout = f"<data root>/domainnet/{arg}/<class>/*.jpg with <data root>/domainnet/{arg}_train.txt and {arg}_test.txt"
    base = _base(root, f"domainnet:{arg}", layout, DOMAINNET_WHERE) / "domainnet"
    if not (base / arg).is_dir():
        raise DabenchError(f"domainnet:{arg}: no folder {base / arg} (expected layout {layout}). {DOMAINNET_WHERE}")
    train_files, train_labels = _list_file(f"domainnet:{arg}", base / f"{arg}_train.txt", base, DOMAINNET_WHERE)
    test_files, test_labels = _list_file(f"domainnet:{arg}", base / f"{arg}_test.txt", base, DOMAINNET_WHERE)
    # the class names as the lists name them (domain/<class>/file.jpg), in label order; DomainNet's
    # order is not Python's sort (The_Eiffel_Tower and the other capitalised names sit among the t's)
    names: dict[int, str] = {}
    for f, label in zip(train_files + test_files, train_labels + test_labels):
        name = f.parent.name
        if names.setdefault(label, name) != name:
            raise DabenchError(f"domainnet:{arg}: label {label} names both {names[label]} and {name} in the lists. "
                               f"{DOMAINNET_WHERE}")
    if sorted(names) != list(range(len(names))):
        raise DabenchError(f"domainnet:{arg}: the lists' labels are not 0..{len(names) - 1} without gaps. {DOMAINNET_WHERE}")
    classes = [names[i] for i in range(len(names))]
    size = image_size or DEFAULT_SIZE
    info = {"path": str(base / arg), "train_images": len(train_files), "test_images": len(test_files),
            "published_images": DOMAINNET_DOMAINS[arg]}
    return Domain(f"domainnet:{arg}", CLASSIFICATION, classes, ImageFiles(train_files, train_labels, size),
                  ImageFiles(test_files, test_labels, size), size, info)


@plugin("visda2017", task=CLASSIFICATION, description="VisDA-2017 classification (synthetic = train/, real = validation/), 12 classes, ROOT/visda2017")
def visda2017(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """One VisDA-2017 domain: ``synthetic`` (train/, 152,397 renderings) or ``real`` (validation/,
    55,388 photos), each read through its image_list.txt. No official test split with labels."""
    arg = _domain_arg("visda2017", arg, VISDA_DOMAINS)
    folder, published = VISDA_DOMAINS[arg]
    layout = f"<data root>/visda2017/{folder}/image_list.txt and <data root>/visda2017/{folder}/<class>/*"
    base = _base(root, f"visda2017:{arg}", layout, VISDA_WHERE) / "visda2017" / folder
    files, labels = _list_file(f"visda2017:{arg}", base / "image_list.txt", base, VISDA_WHERE)
    bad = sorted({lab for lab in labels if not 0 <= lab < len(VISDA_CLASSES)})
    if bad:
        raise DabenchError(f"visda2017:{arg}: labels {bad[:5]} in {base / 'image_list.txt'}; VisDA-2017 has 12 classes "
                           f"(0-11). {VISDA_WHERE}")
    size = image_size or DEFAULT_SIZE
    info = {"path": str(base), "images": len(files), "published_images": published}
    return Domain(f"visda2017:{arg}", CLASSIFICATION, list(VISDA_CLASSES), ImageFiles(files, labels, size), None, size, info)


PACS = DomainGroup(tuple(f"pacs:{d}" for d in PACS_DOMAINS), "PACS's four domains (DomainBed's PACS)", name="pacs")
OFFICE_HOME = DomainGroup(tuple(f"office-home:{d}" for d in OFFICE_HOME_DOMAINS), "Office-Home's four domains",
                          name="office-home")
DOMAINNET = DomainGroup(tuple(f"domainnet:{d}" for d in DOMAINNET_DOMAINS), "DomainNet's six domains", name="domainnet")
