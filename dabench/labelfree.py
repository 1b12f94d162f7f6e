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

Deep embedded validation (DEV, You et al. 2019) needs a domain classifier per checkpoint and is
not here yet.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dabench.data import Subset, ordered_batches

SPLIT = "tgt-unlabeled"
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
def scores(algo, images, task: str, device: torch.device, batch_size: int, autocast, workers: int = 0) -> dict:
    """``entropy``, ``im`` and ``snd`` of ``algo`` on ``images`` (an unlabelled view's subset). The
    global random state is left as it was (a DataLoader draws its base seed from it), so scoring
    changes nothing about the training that follows."""
    with torch.random.fork_rng(devices=[]):
        return _scores(algo, images, task, device, batch_size, autocast, workers)


def _scores(algo, images, task: str, device: torch.device, batch_size: int, autocast, workers: int) -> dict:
    algo.eval()
    total_h, total_p, count, kept = 0.0, None, 0, []
    g = torch.Generator().manual_seed(0)
    per_batch = max(1, SND_POINTS * batch_size // max(1, len(images)))
    for x in ordered_batches(images, batch_size, workers):
        x = x.to(device, non_blocking=True)
        with autocast():
            logits = algo.predict(x)
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
        return {}
    mean_h = total_h / count
    marginal = (total_p / count).unsqueeze(0)
    return {"entropy": mean_h, "im": entropy_rows(marginal).item() - mean_h, "snd": snd(torch.cat(kept)[:SND_POINTS])}
