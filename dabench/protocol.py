"""The protocol: which data each part of a run may see.

Protocol "dabench" (the default). Source: train / val (held out, labelled). Target: unlabelled
train; a labelled validation split used only by target-oracle model selection; a test split that
only the evaluation reads (no model selection method is ever given it). With ``--tgt-labeled N``,
N labelled target samples are drawn from target train (seeded by the run, class-balanced) for
semi-supervised and supervised DA. Splits are cut with a fixed seed, so every run of a pair
shares one test split. Source val and target val are 20% of train; for segmentation at most 500
images each (every checkpoint evaluates them at full size; see ``tasks.TASKS``).

Several sources (``--src a,b,c``): each source domain holds out its own 20% for source val, which
evaluation reads pooled (DomainBed's training-domain validation), and training draws one
minibatch of each per step. Setting "dg" (``--setting dg``, domain generalisation): the same
target splits, but no target image reaches training (``Splits.tgt_train`` is None), nor the
label-free scores, so the target is seen by evaluation and target-oracle selection only.

Protocol "paper" (``--protocol paper``): the published setting of the segmentation papers. The
source trains on all its images, the target on all of its train split (unlabelled; labelled
budgets are drawn from all of it), the test split is the target's official one (Cityscapes val),
and nothing is held out, so the last step is the only selection (the papers' selection on
Cityscapes val is the leak this protocol refuses).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from dabench.data import CLASSIFICATION, Domain, ImagesOnly, SourceDomains, Subset, labels_of
from dabench.errors import DabenchError
from dabench.segdata.prepared import use_prepared
from dabench.registry import Spec, datasets
from dabench.tasks import task_of

SPLIT_SEED = 0
SOURCE_VAL = 0.2  # fraction of source train held out for validation
TARGET_VAL = 0.2  # fraction of target train held out (labelled) for target-oracle selection
TARGET_TEST = 0.25  # fraction held out for test when the target has no official test split
SETTINGS = ("uda", "dg")  # domain adaptation (target images in training) or generalisation (none)


def split_rules(task: str, protocol: str = "dabench") -> dict[str, str]:
    """The protocol's rules for this task, as ``config.json`` records them."""
    if protocol == "paper":
        return {"src_val": "none", "tgt_val": "none", "tgt_test": "the target's official test split"}
    cap = f", at most {task_of(task).val_cap} images" if task_of(task).val_cap else ""
    return {"src_val": f"{SOURCE_VAL:.0%} of source train{cap}",
            "tgt_val": f"{TARGET_VAL:.0%} of target train{cap}",
            "tgt_test": f"the target's official test split, or {TARGET_TEST:.0%} of target train"}


@dataclass
class Splits:
    task: str
    classes: list[str]
    image_size: int | tuple[int, int]
    src_train: Dataset
    src_val: Dataset
    tgt_train: ImagesOnly | None  # no labels, by type; None in domain generalisation
    tgt_val: Dataset
    tgt_test: Dataset
    tgt_labeled: Dataset | None  # None in unsupervised DA
    setting: str = "uda"  # "dg": no target image in training

    def sizes(self) -> dict[str, int]:
        names = ["src_train", "src_val", "tgt_train", "tgt_val", "tgt_test", "tgt_labeled"]
        return {n: len(getattr(self, n)) if getattr(self, n) is not None else 0 for n in names}


def resolve_data_root(given: str | Path | None) -> Path | None:
    """The folder of the user's data sets: ``given``, else $DABENCH_DATA, else None; one that is
    not a folder is refused."""
    text = given or os.environ.get("DABENCH_DATA")
    root = Path(text).expanduser() if text else None
    if root is not None and not root.is_dir():
        raise DabenchError(f"The data root {root} does not exist or is not a folder. Pass --data-root DIR (or set "
                           "DABENCH_DATA) to the folder that holds your data sets.")
    return root


def load_domain(text: str | Domain, root: Path | None, image_size=None, prepared: bool = True) -> Domain:
    """A data set by name (``uci-digits``, ``folder:PATH``), or a ``Domain`` given as it is. A
    file-backed segmentation set reads its prepared copy under ``root`` where one matches
    (``prepared=False``: always the originals)."""
    if isinstance(text, Domain):
        return text
    spec = Spec.parse(text)
    factory = datasets.get(spec.name)
    domain = factory(spec.arg, root=root, image_size=image_size)
    domain.name = str(spec)
    return use_prepared(domain, root) if prepared else domain


def _split(n: int, fractions: list[float], salt: str, caps: list[int | None] | None = None) -> list[np.ndarray]:
    """Cut range(n) into len(fractions)+1 parts with a fixed seed; the last part is the rest.
    ``caps``: the most images each part may hold (None: no cap)."""
    perm = np.random.default_rng([SPLIT_SEED, sum(map(ord, salt))]).permutation(n)
    parts, start = [], 0
    for f, cap in zip(fractions, caps or [None] * len(fractions)):
        k = min(max(1, int(round(f * n))), cap or n)
        parts.append(perm[start : start + k])
        start += k
    parts.append(perm[start:])
    return parts


def _target_parts(n: int, task: str = CLASSIFICATION) -> list[np.ndarray]:
    """(test, val, train) indices of a target without an official test split (protocol dabench)."""
    return _split(n, [TARGET_TEST, TARGET_VAL * (1 - TARGET_TEST)], "target", [None, task_of(task).val_cap])


def test_split(domain: Domain, protocol: str = "dabench") -> Dataset:
    """The split a run tests on when ``domain`` is its target: the official test split, or the
    part the protocol holds out of train with its fixed seed (the same for every run)."""
    if domain.test is not None:
        return domain.test
    if protocol == "paper":
        raise DabenchError(f"{domain.name} has no official test split, which --protocol paper tests on.")
    return Subset(domain.train, _target_parts(len(domain.train), domain.task)[0])


def balanced_pick(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices drawn round-robin over classes (seeded): class-balanced as far as the classes allow."""
    rng = np.random.default_rng([seed, 7])
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < n:
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(int(pool.pop()))
    return np.sort(np.asarray(picked, dtype=np.int64))


def _source_parts(sources: list[Domain], protocol: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(val, train) indices of each source domain: 20% held out (capped for segmentation), or
    nothing held out under protocol "paper"."""
    if protocol == "paper":
        return [(np.zeros(0, dtype=np.int64), np.arange(len(s.train))) for s in sources]
    return [tuple(_split(len(s.train), [SOURCE_VAL], "source", [task_of(s.task).val_cap])) for s in sources]


def _pooled(sources: list[Domain], parts: list[np.ndarray]) -> Dataset:
    """One source's split as a Subset; several sources' as SourceDomains (pooled for evaluation,
    one minibatch per domain in training)."""
    subsets = [Subset(s.train, idx) for s, idx in zip(sources, parts)]
    return subsets[0] if len(subsets) == 1 else SourceDomains(subsets)


def _classes(domain: Domain) -> str:
    shown = ", ".join(domain.classes[:5]) + (", ..." if len(domain.classes) > 5 else "")
    return f"{len(domain.classes)}: {shown}"


def check_sources(sources: list[Domain]) -> None:
    """Several source domains must share a task, a label space and, for classification, a size."""
    first = sources[0]
    for s in sources:
        if not s.labeled:
            raise DabenchError(f"The source {s.name} has no labels: give the source as (images, labels).")
        if s.task != first.task:
            raise DabenchError(f"Sources {first.name} and {s.name} are of different tasks ({first.task}, {s.task}).")
        if s.classes != first.classes:
            raise DabenchError(f"Sources {first.name} and {s.name} have different classes ({_classes(first)} vs "
                               f"{_classes(s)}): several sources need one label space (arrays: pass classes=[...]).")
    if len(sources) > 1 and not task_of(first.task).several_sources:
        raise DabenchError("Several source domains (--src a,b) are supported for classification; segmentation "
                           "domains have images of different sizes, which one minibatch cannot hold. Train on one "
                           "source, or make one folder of both (segfolder:PATH).")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DabenchError(f"--src names a domain twice ({', '.join(names)}): list each source once.")


def build_splits(src: Domain | Sequence[Domain], tgt: Domain, tgt_labeled: int | str, seed: int,
                 protocol: str = "dabench", setting: str = "uda") -> Splits:
    """The run's splits. ``src``: one domain or several (multi-source; DG). ``setting`` "dg":
    no target image reaches training (``tgt_train`` is None); the target is tested and, for
    target-oracle selection only, validated, as in DA."""
    sources = [src] if isinstance(src, Domain) else list(src)
    check_sources(sources)
    src = sources[0]
    if src.task != tgt.task:
        raise DabenchError(f"Source {src.name} is a {src.task} data set but target {tgt.name} is {tgt.task}: pick two domains of one task.")
    if tgt.labeled and src.classes != tgt.classes:
        raise DabenchError(
            f"Source {src.name} and target {tgt.name} have different classes ({len(src.classes)} vs {len(tgt.classes)}; "
            f"e.g. {sorted(set(src.classes) ^ set(tgt.classes))[:5]}). Domain adaptation here needs one label space."
        )
    if setting not in SETTINGS:
        raise DabenchError(f"--setting must be one of {', '.join(SETTINGS)}, got '{setting}'.")
    if protocol not in ("dabench", "paper"):
        raise DabenchError(f"--protocol must be dabench or paper, got '{protocol}'.")
    if (len(sources) > 1 or setting == "dg") and tgt.name in {s.name for s in sources}:
        raise DabenchError(f"{tgt.name} is both a source and the target: hold the target out of --src.")
    cap = task_of(src.task).val_cap
    source_parts = _source_parts(sources, "paper" if protocol == "paper" and tgt.labeled else "dabench")
    if not tgt.labeled:  # target images alone (arrays X): nothing to hold out, nothing to test on
        if tgt_labeled:
            raise DabenchError(f"The target {tgt.name} has no labels, so no labelled-target budget can be drawn from "
                               "it: give the target as (images, labels), or train without --tgt-labeled.")
        if setting == "dg":
            raise DabenchError(f"Domain generalisation tests on the held-out target, and {tgt.name} has no labels: "
                               "give the target as (images, labels).")
        nothing = np.zeros(0, dtype=np.int64)
        tgt_val, tgt_train, tgt_test = nothing, np.arange(len(tgt.train)), Subset(tgt.train, nothing)
    elif protocol == "paper":
        if tgt.test is None:
            raise DabenchError(f"--protocol paper tests on the target's official test split, and {tgt.name} has none "
                               "(cityscapes has one: its val split). Use the default protocol (dabench) for this pair.")
        nothing = np.zeros(0, dtype=np.int64)  # no hold-out: the papers train on everything
        tgt_val, tgt_train = nothing, np.arange(len(tgt.train))
        tgt_test: Dataset = tgt.test
    elif tgt.test is not None:
        tgt_val, tgt_train = _split(len(tgt.train), [TARGET_VAL], "target", [cap])
        tgt_test = tgt.test
    else:
        test_idx, tgt_val, tgt_train = _target_parts(len(tgt.train), src.task)
        tgt_test = Subset(tgt.train, test_idx)
    if setting == "dg" and tgt_labeled:
        raise DabenchError("Domain generalisation (--setting dg) sees no target image in training, so it takes no "
                           "labelled-target budget: drop --tgt-labeled, or use --setting uda.")
    train_labeled = Subset(tgt.train, tgt_train)
    if tgt_labeled == "all":
        labeled: Dataset | None = train_labeled
    elif tgt_labeled > len(tgt_train):
        raise DabenchError(
            f"--tgt-labeled {tgt_labeled} asks for more labelled target samples than target train holds "
            f"({len(tgt_train)} images of {tgt.name}). Use at most {len(tgt_train)}."
        )
    elif tgt_labeled > 0:
        pick = np.arange(len(tgt_train))
        if task_of(src.task).balanced_budget:
            pick = balanced_pick(labels_of(train_labeled), tgt_labeled, seed)
        else:
            pick = np.sort(np.random.default_rng([seed, 7]).permutation(len(tgt_train))[:tgt_labeled])
        labeled = Subset(train_labeled, pick)
    else:
        labeled = None
    return Splits(
        task=src.task, classes=src.classes, image_size=src.image_size,
        src_train=_pooled(sources, [train for _, train in source_parts]),
        src_val=_pooled(sources, [val for val, _ in source_parts]),
        tgt_train=ImagesOnly(train_labeled) if setting != "dg" else None, tgt_val=Subset(tgt.train, tgt_val),
        tgt_test=tgt_test, tgt_labeled=labeled, setting=setting,
    )
