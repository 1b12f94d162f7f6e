"""DAN as TLlib trains it: a transcription of one training iteration.

Repository: thuml/Transfer-Learning-Library (the PyTorch port by the DAN authors' lab of their Caffe
code thuml/DAN), commit c4aa59eb565650a552b809411601d0589efbbfe4:
- examples/domain_adaptation/image_classification/dan.py, lines 71-85 (the classifier with its
  bottleneck, SGD with Nesterov momentum over ``get_parameters()``, the LambdaLR schedule, the
  MK-MMD of five Gaussian kernels alpha = 2^k, k = -3..1, linear unless --non-linear) and lines
  138-185 (``train``: source and target through the model separately, cross-entropy plus
  trade-off x the MK-MMD of the bottleneck features, one SGD step, one scheduler step); the
  defaults of lines 220-245 (lr 0.003, lr_gamma 0.0003, lr_decay 0.75, momentum 0.9, wd 5e-4,
  trade-off 1, bottleneck 256) and dan.sh's digit lines (lr 0.01, -b 128, --scratch);
- tllib/alignment/dan.py, lines 78-119 (``MultipleKernelMaximumMeanDiscrepancy.forward`` and
  ``_update_index_matrix``) and 122-130 (``ImageClassifier``: Linear -> ReLU -> Dropout(0.5));
- tllib/modules/kernels.py, lines 56-62 (``GaussianKernel.forward`` with track_running_stats);
  TLlib's five kernels each compute the batch's squared distances from the features; here
  ``MKMMD`` computes them once and hands the same matrix to each (the same values bit for bit, the
  gradients summed in another order; five times faster, which the 10,000-step runs need);
- tllib/modules/classifier.py, lines 78-99 (``Classifier.forward`` and ``get_parameters``).

Left out: data loading, meters, logging, checkpoints, CUDA. The backbone, the bottleneck and the
head are handed in (the parity test gives copies of the plugin's), with TLlib's pool layer the
identity (--no-pool, as its digit scripts run; dabench backbones return pooled vectors).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR


class GaussianKernel(nn.Module):
    """k(x_i, x_j) = exp(-||x_i - x_j||^2 / (2 sigma^2)), sigma^2 = alpha x the mean of the squared
    distances of the batch (recomputed at every call, detached)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.of_distances(squared_distances(X))

    def of_distances(self, d2: torch.Tensor) -> torch.Tensor:
        self.sigma_square = self.alpha * torch.mean(d2.detach())
        return torch.exp(-d2 / (2 * self.sigma_square))


def squared_distances(X: torch.Tensor) -> torch.Tensor:
    """||x_i - x_j||^2 for every pair of rows, as TLlib's kernel computes it."""
    return ((X.unsqueeze(0) - X.unsqueeze(1)) ** 2).sum(2)


def index_matrix(batch_size: int, linear: bool) -> torch.Tensor:
    """The weights TLlib multiplies the (2n, 2n) kernel matrix by, set entry by entry in its order."""
    n = batch_size
    m = torch.zeros(2 * n, 2 * n)
    if linear:
        for i in range(n):
            s1, s2 = i, (i + 1) % n
            t1, t2 = s1 + n, s2 + n
            m[s1, s2] = 1. / float(n)
            m[t1, t2] = 1. / float(n)
            m[s1, t2] = -1. / float(n)
            m[s2, t1] = -1. / float(n)
    else:
        for i in range(n):
            for j in range(n):
                if i != j:
                    m[i][j] = 1. / float(n * (n - 1))
                    m[i + n][j + n] = 1. / float(n * (n - 1))
        for i in range(n):
            for j in range(n):
                m[i][j + n] = -1. / float(n * n)
                m[i + n][j] = -1. / float(n * n)
    return m


class MKMMD(nn.Module):
    def __init__(self, kernels, linear: bool = True):
        super().__init__()
        self.kernels = kernels
        self.linear = linear
        self.index_matrix = None

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        features = torch.cat([z_s, z_t], dim=0)
        n = int(z_s.size(0))
        if self.index_matrix is None or self.index_matrix.size(0) != 2 * n:  # TLlib's _update_index_matrix
            self.index_matrix = index_matrix(n, self.linear).to(z_s.device)
        d2 = squared_distances(features)
        kernel_matrix = sum([kernel.of_distances(d2) for kernel in self.kernels])
        return (kernel_matrix * self.index_matrix).sum() + 2. / float(n - 1)


class Classifier(nn.Module):
    """backbone -> (identity pool) -> bottleneck -> head; (predictions, bottleneck features) in training."""

    def __init__(self, backbone: nn.Module, bottleneck: nn.Module, head: nn.Module, finetune: bool):
        super().__init__()
        self.backbone, self.bottleneck, self.head, self.finetune = backbone, bottleneck, head, finetune

    def forward(self, x):
        f = self.bottleneck(self.backbone(x))
        predictions = self.head(f)
        return (predictions, f) if self.training else predictions

    def get_parameters(self, base_lr: float = 1.0):
        return [{"params": self.backbone.parameters(), "lr": 0.1 * base_lr if self.finetune else 1.0 * base_lr},
                {"params": self.bottleneck.parameters(), "lr": 1.0 * base_lr},
                {"params": self.head.parameters(), "lr": 1.0 * base_lr}]


class TLlibDAN:
    """``main``'s set-up and one iteration of ``train``. Digits (dan.sh): ``lr=0.01, scratch=True``;
    ImageNet-size data: ``lr=0.003, scratch=False``."""

    def __init__(self, backbone: nn.Module, bottleneck: nn.Module, head: nn.Module, lr: float = 0.003,
                 scratch: bool = False, lr_gamma: float = 0.0003, lr_decay: float = 0.75, momentum: float = 0.9,
                 wd: float = 0.0005, trade_off: float = 1.0, non_linear: bool = False):
        self.model = Classifier(backbone, bottleneck, head, finetune=not scratch)
        self.optimizer = SGD(self.model.get_parameters(), lr, momentum=momentum, weight_decay=wd, nesterov=True)
        self.lr_lambda = lambda x: lr * (1. + lr_gamma * float(x)) ** (-lr_decay)
        self.lr_scheduler = LambdaLR(self.optimizer, self.lr_lambda)
        self.mkmmd_loss = MKMMD([GaussianKernel(alpha=2 ** k) for k in range(-3, 2)], linear=not non_linear)
        self.trade_off = trade_off

    def lrs_at(self, iteration: int) -> list[float]:
        """Each parameter group's rate at ``iteration`` (what LambdaLR sets: initial lr x lambda)."""
        return [g["initial_lr"] * self.lr_lambda(iteration) for g in self.optimizer.param_groups]

    def step(self, x_s: torch.Tensor, labels_s: torch.Tensor, x_t: torch.Tensor) -> dict[str, float]:
        self.model.train()
        self.mkmmd_loss.train()
        y_s, f_s = self.model(x_s)
        y_t, f_t = self.model(x_t)
        cls_loss = F.cross_entropy(y_s, labels_s)
        transfer_loss = self.mkmmd_loss(f_s, f_t)
        loss = cls_loss + transfer_loss * self.trade_off
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.lr_scheduler.step()
        return {"cls_loss": cls_loss.item(), "transfer_loss": transfer_loss.item(), "loss": loss.item()}
