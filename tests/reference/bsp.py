"""BSP: the authors' batch spectral penalty and where their training adds it.

Repository: thuml/Batch-Spectral-Penalization, commit 83b557f: train.py lines 289-295 (``BSP``:
the feature batch cut into its source and target halves, the squared largest singular value of
each, summed) and lines 389-396 / 494-499 (``sigma_loss = 0.0001 * sigma`` added to the
classification and transfer losses of CDAN+E and of DANN, the same backward and step).

tests/reference/cdan.py (``DigitTrainer(bsp=True)``) and tests/reference/dann.py
(``PaperTrainer(bsp=True)``) add ``0.0001 * BSP(feature)`` to their losses as that script does,
on the features their domain classifier reads. Left out: their CDAN/DANN iteration itself (an
ImageNet ResNet-50 script; the digit transcriptions above are the methods' own).
"""
from __future__ import annotations

import torch


def BSP(feature):
    feature_s = feature.narrow(0, 0, int(feature.size(0) / 2))
    feature_t = feature.narrow(0, int(feature.size(0) / 2), int(feature.size(0) / 2))
    _, s_s, _ = torch.svd(feature_s)
    _, s_t, _ = torch.svd(feature_t)
    sigma = torch.pow(s_s[0], 2) + torch.pow(s_t[0], 2)
    return sigma
