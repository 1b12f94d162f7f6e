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

- ``dev`` (classification): deep embedded validation (You et al., ICML 2019): a logistic-regression
  domain classifier on the features (``Algorithm.embed``) of source-val and the unlabelled target
  images gives density ratios w = (n_s / n_t) p(t|x) / p(s|x) on the source-val images; DEV is the
  importance-weighted source-val loss with the paper's control variate, mean(w l) + eta mean(w) - eta,
  eta = -Cov(w l, w) / Var(w) (lower is better). The classifier is fitted on the same images it
  weights (the paper fits it on training features), C = 1, features standardised.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dabench.data import Subset, ordered_batches
from dabench.selection import LABEL_FREE

SPLIT = LABEL_FREE  # the records' key, which the selection methods read
MAX_IMAGES = {"classification": 1000, "segmentation": 50}
SND_POINTS = 1024
SND_TEMPERATURE = 0.05


def subset(images, task: str):
    """The fixed images the scores are taken on (the same for every run of the pair)."""
    n = min(len(images), MAX_IMAGES[task])
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
           source_val=None) -> dict:
    """``entropy``, ``im`` and ``snd`` of ``algo`` on ``images`` (an unlabelled view's subset). The
    global random state is left as it was (a DataLoader draws its base seed from it), so scoring
    changes nothing about the training that follows."""
    with_dev = task == "classification" and source_val is not None and len(source_val) > 1
    with torch.random.fork_rng(devices=[]):
        out, target_features = _scores(algo, images, task, device, batch_size, autocast, workers, with_dev)
        if out and with_dev:
            out["dev"] = dev(algo, source_val, target_features, device, batch_size, autocast, workers)
        return out


@torch.no_grad()
def dev(algo, source_val, ft: np.ndarray, device, batch_size, autocast, workers: int = 0) -> float:
    """Deep embedded validation risk of ``algo`` (lower is better) from the labelled ``source_val``
    images and the target images' features ``ft``; see the module docstring."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    algo.eval()
    feats, losses = [], []
    for x, y in ordered_batches(source_val, batch_size, workers):
        x = x.to(device, non_blocking=True)
        with autocast():
            feats.append(algo.embed(x).float().cpu())
            losses.append(F.cross_entropy(algo.predict(x).float(), y.to(device), reduction="none").cpu())
    algo.train()
    fs, loss = torch.cat(feats).numpy(), torch.cat(losses).numpy()
    x = StandardScaler().fit_transform(np.concatenate([fs, ft]))
    y = np.r_[np.zeros(len(fs)), np.ones(len(ft))]
    p = LogisticRegression(C=1.0, max_iter=1000).fit(x, y).predict_proba(x[: len(fs)])[:, 1].clip(1e-6, 1 - 1e-6)
    return dev_risk((len(fs) / len(ft)) * p / (1 - p), loss)


def dev_risk(w: np.ndarray, loss: np.ndarray) -> float:
    """DEV's estimate from density ratios ``w`` and losses ``loss`` of the source-val samples:
    mean(w l) + eta mean(w) - eta, eta = -Cov(w l, w) / Var(w) (You et al. 2019, eq. 9)."""
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
