"""Label-free validation: scores of a model on unlabelled target images, for model selection
without target labels (``--selection entropy|im|snd``).

At every evaluation the trainer predicts a fixed subset of the unlabelled target train images
(the first 1,000 of a seeded permutation for classification, 50 for segmentation, whose
pixels are scored at the network's output resolution) and records, under ``tgt-unlabeled``:

- ``entropy``: the mean entropy of the predictions (nats; lower is better: confident on the
  target; Grandvalet & Bengio's criterion, a common DA validator);
- ``im``: information maximisation, H(mean p) - mean H(p) (higher is better: confident and
  diverse; Shi & Sha 2012, as pytorch-adapt's IMValidator);
- ``snd``: soft neighbourhood density (Saito et al., ICCV 2021): the L2-normalised softmax vectors'
  similarity matrix over temperature 0.05, each row's softmax (self excluded), mean row entropy
  (higher is better); segmentation samples 1,024 pixels with a fixed generator.

- ``dev`` (classification): deep embedded validation (You et al., ICML 2019), as the authors'
  ``dev.py`` computes it (thuml/Deep-Embedded-Validation; transcribed in tests/reference/dev.py,
  checked by tests/test_selection_sources.py). A domain classifier is trained on the features
  (``Algorithm.embed``, unscaled) of source *train* images (label 1) and the unlabelled target
  images (label 0): sklearn's MLP with hidden layers (d, d, 2), ReLU, fitted on a random 80% of
  those rows once per weight decay in 1e-1, 3e-2, ..., 1e-5, the decay most accurate on the other
  20% kept. It weighs the source-val images, which it never saw: w = p(t|x) / p(s|x) * n_s / n_t
  (n_s source-train rows, n_t target rows). DEV is the importance-weighted source-val loss with
  the paper's control variate, mean(w l) + eta mean(w) - eta, eta = -Cov(w l, w) / Var(w) (eq. 9;
  lower is better), l the cross-entropy of each image.
  Departures, each for a reason: at most 1,000 source-train images (the same fixed subset at every
  evaluation, like the target and source-val ones), where the authors use the whole training set,
  to bound the cost of nine MLP fits per evaluation; one seeded generator for the split and the
  fits (the authors draw from numpy's global one, unseeded), so a run's scores repeat and numpy's
  global state is left alone; p(s|x) floored at 1e-6, where the authors divide by it (a weight
  of inf at 0); eta = 0 when every weight is equal (the authors divide by Var(w) = 0).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dabench.data import Subset, ordered_batches
from dabench.results.selection import LABEL_FREE
from dabench.tasks import task_of

SPLIT = LABEL_FREE  # the records' key, which the selection methods read
SND_POINTS = 1024
SND_TEMPERATURE = 0.05
DEV_DECAYS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)  # the authors' weight-decay grid
DEV_SEED = 0
DEV_MIN_IMAGES = 5  # per domain, for the classifier's 80/20 split to hold both domains


def subset(images, task: str):
    """The fixed images the scores are taken on (the same for every run of the pair)."""
    n = min(len(images), task_of(task).labelfree_images)
    idx = np.sort(np.random.default_rng(12345).permutation(len(images))[:n])
    return Subset(images, idx)


def entropy_rows(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(1)


def snd(p: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density of probability rows ``p`` (n, K)."""
    if len(p) < 2:
        return float("nan")
    z = F.normalize(p.float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-math.inf)
    return entropy_rows(F.softmax(sim, 1)).mean().item()


@torch.no_grad()
def scores(algo, images, task: str, device: torch.device, batch_size: int, autocast, workers: int = 0,
           source_val=None, source_train=None) -> dict:
    """``entropy``, ``im`` and ``snd`` of ``algo`` on ``images`` (an unlabelled view's subset), and
    ``dev`` given labelled ``source_val`` and ``source_train`` subsets (classification). The
    global random state is left as it was (a DataLoader draws its base seed from it), so scoring
    changes nothing about the training that follows."""
    with_dev = (task_of(task).domain_classifier and source_val is not None and source_train is not None
                and len(source_val) > 1 and len(source_train) >= DEV_MIN_IMAGES and len(images) >= DEV_MIN_IMAGES)
    with torch.random.fork_rng(devices=[]):
        out, target_features = _scores(algo, images, task, device, batch_size, autocast, workers, with_dev)
        if out and with_dev:
            out["dev"] = dev(algo, source_train, source_val, target_features, device, batch_size, autocast, workers)
        return out


@torch.no_grad()
def dev(algo, source_train, source_val, ft: np.ndarray, device, batch_size, autocast, workers: int = 0) -> float:
    """Deep embedded validation risk of ``algo`` (lower is better): the domain classifier learns
    from ``source_train``'s features and the target features ``ft``, and weighs the losses of the
    labelled ``source_val`` images; see the module docstring."""
    algo.eval()
    train_feats, feats, losses = [], [], []
    for x, _ in ordered_batches(source_train, batch_size, workers):
        with autocast():
            train_feats.append(algo.embed(x.to(device, non_blocking=True)).float().cpu())
    for x, y in ordered_batches(source_val, batch_size, workers):
        x = x.to(device, non_blocking=True)
        with autocast():
            feats.append(algo.embed(x).float().cpu())
            losses.append(F.cross_entropy(algo.predict(x).float(), y.to(device), reduction="none").cpu())
    algo.train()
    w = density_ratios(torch.cat(train_feats).numpy(), ft, torch.cat(feats).numpy())
    return dev_risk(w, torch.cat(losses).numpy())


def density_ratios(source_train: np.ndarray, target: np.ndarray, source_val: np.ndarray,
                   rng: np.random.RandomState | None = None) -> np.ndarray:
    """w(x) = p_t(x) / p_s(x) at each row of ``source_val`` (features, one row per image), from an
    MLP domain classifier trained on ``source_train`` (label 1) and ``target`` (label 0) rows with
    its weight decay chosen on a held-out 20% of them, as DEV's authors' ``get_weight``. ``rng``
    draws the split and then each fit's initialisation and batch order, in the authors' order
    (the default: a generator seeded with ``DEV_SEED``)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    rng = np.random.RandomState(DEV_SEED) if rng is None else rng
    n_s, d = source_train.shape
    x = np.concatenate([source_train, target])
    y = np.asarray([1] * n_s + [0] * len(target), dtype=np.int32)
    fit_x, held_x, fit_y, held_y = train_test_split(x, y, train_size=0.8, random_state=rng)
    best, best_acc = None, -1.0
    for decay in DEV_DECAYS:
        classifier = MLPClassifier(hidden_layer_sizes=(d, d, 2), activation="relu", alpha=decay, random_state=rng)
        # one BLAS thread: on minibatches of 200 rows, threads spin more than they compute (twenty
        # times the CPU time on a busy 2-core machine); the weights came out bit-identical
        with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)  # 200 epochs without converging, as the authors allow
            classifier.fit(fit_x, fit_y)
        acc = np.mean((held_y == classifier.predict(held_x)).astype(np.float32))
        if acc > best_acc:  # the first of equally accurate decays, as list.index(max) takes
            best, best_acc = classifier, acc
    p = best.predict_proba(source_val)  # columns: classes 0 (target), 1 (source)
    return p[:, 0] / np.maximum(p[:, 1], 1e-6) * n_s / len(target)


def dev_risk(w: np.ndarray, loss: np.ndarray) -> float:
    """DEV's estimate from density ratios ``w`` and losses ``loss`` of the source-val samples:
    mean(w l) + eta mean(w) - eta, eta = -Cov(w l, w) / Var(w), both ddof=1 (You et al. 2019,
    eq. 9; the authors' ``get_dev_risk``), eta = 0 when Var(w) = 0."""
    weighted = w * loss
    var = w.var(ddof=1)
    eta = -np.cov(weighted, w, ddof=1)[0, 1] / var if var > 0 else 0.0
    return float(weighted.mean() + eta * w.mean() - eta)


def _scores(algo, images, task: str, device: torch.device, batch_size: int, autocast, workers: int,
            embed: bool = False) -> tuple[dict, np.ndarray | None]:
    """The scores, and with ``embed`` the images' ``Algorithm.embed`` features (for DEV)."""
    algo.eval()
    total_h, total_p, count, kept, feats = 0.0, None, 0, [], []
    g = torch.Generator().manual_seed(0)
    per_batch = max(1, SND_POINTS * batch_size // max(1, len(images)))
    for x in ordered_batches(images, batch_size, workers):
        x = x.to(device, non_blocking=True)
        with autocast():
            logits = algo.predict(x)
            if embed:
                feats.append(algo.embed(x).float().cpu())
        p = F.softmax(logits.float(), 1)
        if p.ndim == 4:  # pixels as rows
            p = p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])
            rows = p[torch.randperm(len(p), generator=g)[:per_batch].to(p.device)]
        else:
            rows = p
        kept.append(rows.cpu())
        total_h += entropy_rows(p).sum().item()
        total_p = p.sum(0) if total_p is None else total_p + p.sum(0)
        count += len(p)
    algo.train()
    if count == 0:
        return {}, None
    mean_h = total_h / count
    marginal = (total_p / count).unsqueeze(0)
    out = {"entropy": mean_h, "im": entropy_rows(marginal).item() - mean_h, "snd": snd(torch.cat(kept)[:SND_POINTS])}
    return out, (torch.cat(feats).numpy() if embed else None)
