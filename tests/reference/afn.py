"""SAFN (stepwise adaptive feature norm) as TLlib trains it: a transcription of one iteration.

Repository: thuml/Transfer-Learning-Library, commit c4aa59eb565650a552b809411601d0589efbbfe4 (its
port of jihanyang/AFN):
- tllib/normalization/afn.py lines 14-58 (``AdaptiveFeatureNorm``: the detached norm plus delta as
  the target radius), 61-97 (``Block``: fc, batch-norm, ReLU, dropout, the output scaled by
  sqrt(1 - p) in training) and 100-141 (``ImageClassifier``: its initialisation; ``get_parameters``:
  momentum 0.9 for the bottleneck and head only);
- examples/domain_adaptation/image_classification/afn.py lines 71-80 (SGD over those groups at a
  fixed rate, weight decay 5e-4) and 160-181 (``train``: source and target through the model
  separately, cross-entropy + trade_off_norm x (norm loss of f_s + of f_t) + trade_off_entropy x the
  mean entropy of the target softmax); afn.sh's digit line (lr 0.01, -r 0.3, entropy 0.03, -b 128);
- tllib/modules/entropy.py (``entropy``: eps 1e-5, mean over images).

Left out: data loading, meters, logging, CUDA. The backbone and head are handed in, the bottleneck is
TLlib's ``Block`` loaded with the plugin's initial weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD


class AdaptiveFeatureNorm(nn.Module):
    def __init__(self, delta):
        super(AdaptiveFeatureNorm, self).__init__()
        self.delta = delta

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        radius = f.norm(p=2, dim=1).detach()
        assert radius.requires_grad == False  # noqa: E712
        radius = radius + self.delta
        loss = ((f.norm(p=2, dim=1) - radius) ** 2).mean()
        return loss


class Block(nn.Module):
    def __init__(self, in_features: int, bottleneck_dim=1000, dropout_p=0.5):
        super(Block, self).__init__()
        self.fc = nn.Linear(in_features, bottleneck_dim)
        self.bn = nn.BatchNorm1d(bottleneck_dim, affine=True)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout_p)
        self.dropout_p = dropout_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fc(x)
        f = self.bn(f)
        f = self.relu(f)
        f = self.dropout(f)
        if self.training:
            f.mul_(math.sqrt(1 - self.dropout_p))
        return f


def entropy(predictions: torch.Tensor, reduction='none') -> torch.Tensor:
    epsilon = 1e-5
    H = -predictions * torch.log(predictions + epsilon)
    H = H.sum(dim=1)
    if reduction == 'mean':
        return H.mean()
    else:
        return H


class TLlibAFN:
    def __init__(self, backbone, bottleneck, head, lr=0.01, delta=0.3, trade_off_norm=0.05, trade_off_entropy=0.03,
                 weight_decay=5e-4):
        self.backbone, self.bottleneck, self.head = backbone, bottleneck, head
        params = [
            {"params": self.backbone.parameters()},
            {"params": self.bottleneck.parameters(), "momentum": 0.9},
            {"params": self.head.parameters(), "momentum": 0.9},
        ]
        self.optimizer = SGD(params, lr, weight_decay=weight_decay)
        self.adaptive_feature_norm = AdaptiveFeatureNorm(delta)
        self.trade_off_norm, self.trade_off_entropy = trade_off_norm, trade_off_entropy

    def model(self, x):
        f = self.bottleneck(self.backbone(x))
        return self.head(f), f

    def step(self, x_s, labels_s, x_t):
        y_s, f_s = self.model(x_s)
        y_t, f_t = self.model(x_t)
        cls_loss = F.cross_entropy(y_s, labels_s)
        norm_loss = self.adaptive_feature_norm(f_s) + self.adaptive_feature_norm(f_t)
        loss = cls_loss + norm_loss * self.trade_off_norm
        out = {"cls": cls_loss.item(), "norm": norm_loss.item()}
        if self.trade_off_entropy:
            y_t = F.softmax(y_t, dim=1)
            entropy_loss = entropy(y_t, reduction='mean')
            loss += entropy_loss * self.trade_off_entropy
            out["entropy"] = entropy_loss.item()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return out
