"""How far apart the domains are in a model's features: the proxy A-distance (PAD).

Ben-David et al. (NeurIPS 2007) bound the target error by the source error plus the A-distance
between the domains; Ganin et al. (JMLR 2016, section 5.1.4) estimate it as PAD = 2 (1 - 2 err),
where err is the test error of a linear classifier trained to tell source features from target
features. PAD is 0 when the classifier is at chance (the features do not tell the domains
apart) and 2 when it separates them perfectly.

    from dabench.divergence import divergence
    report = divergence("runs/mnist5k_to_mnistm5k/dann/seed0-1a2b3c4d")   # {"start": {...}, "selected": {...}}

``dabench divergence RUN_DIR`` measures it at the start of the run (the network as built from
the run's seed and --pretrained weights) and at the selected step, on images no training step
read: source validation and target test (images only; their class labels are not used).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dabench.errors import DabenchError
from dabench.tasks import task_of

C_GRID = (0.01, 0.1, 1.0, 10.0)


def proxy_a_distance(fs: np.ndarray, ft: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(PAD, err) of features ``fs`` (source) and ``ft`` (target), each (N, D): a logistic
    regression on standardised features, its C picked by 3-fold cross-validation on one half of
    each domain, tested on the other half. Equal counts per domain keep chance at 0.5."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(fs), len(ft))
    if n < 6:
        raise DabenchError(f"The proxy A-distance needs at least 6 images per domain; got {len(fs)} and {len(ft)}.")
    rng = np.random.default_rng(seed)
    fs, ft = fs[rng.permutation(len(fs))[:n]], ft[rng.permutation(len(ft))[:n]]
    half = n // 2
    x_train = np.concatenate([fs[:half], ft[:half]])
    x_test = np.concatenate([fs[half:], ft[half:]])
    y_train = np.r_[np.zeros(half), np.ones(half)]
    y_test = np.r_[np.zeros(n - half), np.ones(n - half)]
    model = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                         {"logisticregression__C": list(C_GRID)}, cv=3)
    model.fit(x_train, y_train)
    err = float((model.predict(x_test) != y_test).mean())
    return 2 * (1 - 2 * err), err


def pad_interval(err: float, n_test: int, z: float = 1.96) -> list[float]:
    """The 95% interval of PAD from the Wilson interval of the domain classifier's error on its
    ``n_test`` test images (PAD falls as the error rises, so the ends swap)."""
    centre = (err + z * z / (2 * n_test)) / (1 + z * z / n_test)
    half = z * math.sqrt(err * (1 - err) / n_test + z * z / (4 * n_test * n_test)) / (1 + z * z / n_test)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return [2 * (1 - 2 * hi), 2 * (1 - 2 * lo)]


def pick(dataset, n: int, seed: int) -> list[int]:
    """The n images of ``dataset`` a measurement reads (a seeded pick, in index order)."""
    return np.sort(np.random.default_rng([seed, 5]).permutation(len(dataset))[:n]).tolist()


def _features(algorithm, dataset, n: int, device: torch.device, seed: int) -> np.ndarray:
    """``embed`` of n images of ``dataset`` (``pick``), read through its unlabelled view."""
    from dabench.data import ImagesOnly

    images = ImagesOnly(dataset)
    pick_ = pick(images, n, seed)
    algorithm.eval()
    return np.concatenate([algorithm.embed(images.get_batch(pick_[i : i + 64]).to(device)).cpu().numpy()
                           for i in range(0, len(pick_), 64)])


@dataclass
class Measured:
    """A run's network at its start and at its selected step, and held-out images of each domain."""

    trained: Any  # dabench.api.Run: the selected step's model
    start: Any  # the algorithm as built from the run's seed and --pretrained weights (step 0)
    src_set: Any
    src_name: str  # "src-val" (or "src-train" where the protocol kept no validation split)
    tgt_set: Any
    tgt_name: str  # "tgt-test" (or "tgt-train")
    n: int  # images per domain


def measured(run_dir: str | Path, *, selection: str | None, images: int, data_root: str | Path | None,
             device: str, what: str) -> Measured:
    """Reload a run's models and data sets for a measurement ``what`` (divergence, embed) of its features."""
    from dabench.api import load
    from dabench.protocol import build_splits, resolve_data_root, load_domain
    from dabench.runner import build_algorithm

    if images < 6:
        raise DabenchError(f"--images must be at least 6, got {images}.")
    trained = load(run_dir, selection=selection, device=device)
    config = trained.config
    if config["src"].startswith("arrays-") or config["tgt"].startswith("arrays-"):
        raise DabenchError(f"{what} reloads the run's data sets by name; this run was given arrays. Use "
                           "Run.algorithm.embed on your arrays (dabench.divergence.proxy_a_distance measures them).")
    root = resolve_data_root(data_root)
    task = task_of(config["task"])
    src = load_domain(config["src"], root, task.load_size(config.get("image_size"), trained.input_size))
    tgt = load_domain(config["tgt"], root, task.load_size(config.get("image_size"), src.image_size))
    splits = build_splits(src, tgt, 0, config["seed"], config.get("protocol", "dabench"))
    src_set, src_name = (splits.src_val, "src-val") if len(splits.src_val) else (splits.src_train, "src-train")
    tgt_set, tgt_name = (splits.tgt_test, "tgt-test") if len(splits.tgt_test) else (splits.tgt_train, "tgt-train")
    n = min(images, len(src_set), len(tgt_set))
    start = build_algorithm(config, task.network_size(trained.input_size), trained.device, config.get("pretrained"))
    return Measured(trained, start, src_set, src_name, tgt_set, tgt_name, n)


def divergence(run_dir: str | Path, *, selection: str | None = None, images: int = 1000,
               data_root: str | Path | None = None, device: str = "auto") -> dict:
    """PAD at the start of a run and at its selected step; also written to ``divergence.json``."""
    m = measured(run_dir, selection=selection, images=images, data_root=data_root, device=device, what="divergence")
    trained, seed = m.trained, m.trained.config["seed"]
    report: dict = {"images_per_domain": m.n, "source": m.src_name, "target": m.tgt_name}
    for name, algorithm, step in (("start", m.start, 0), ("selected", trained.algorithm, trained.step)):
        fs = _features(algorithm, m.src_set, m.n, trained.device, seed)
        ft = _features(algorithm, m.tgt_set, m.n, trained.device, seed + 1)
        pad, err = proxy_a_distance(fs, ft, seed)
        report[name] = {"step": step, "pad": pad, "error": err, "pad_95": pad_interval(err, 2 * (m.n - m.n // 2))}
    report["selected"]["selection"] = trained.selection
    if trained.run_dir is not None:
        (trained.run_dir / "divergence.json").write_text(json.dumps(report, indent=2))
    return report
