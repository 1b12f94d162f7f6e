"""JAN as TLlib trains it: a transcription of one training iteration.

Repository: thuml/Transfer-Learning-Library, commit c4aa59eb565650a552b809411601d0589efbbfe4:
- examples/domain_adaptation/image_classification/jan.py lines 71-96 (the classifier with JAN's
  bottleneck, the JMMD of five Gaussian kernels alpha = 2^k, k = -3..1, on the features times one
  Gaussian of sigma 0.92 without running statistics on the softmax, linear only with --linear;
  SGD with Nesterov over ``get_parameters()`` and the LambdaLR schedule) and lines 165-202
  (``train``: source and target through the model in one batch, chunked, cross-entropy plus
  trade-off x the JMMD, one SGD step, one scheduler step); jan.sh's digit lines (lr 0.01, -b 128,
  --scratch);
- tllib/alignment/jan.py lines 79-93 (``JointMultipleKernelMaximumMeanDiscrepancy.forward``: the
  product over layers of each layer's summed kernels, times the index matrix, plus 2 / (n - 1))
  and 114-123 (``ImageClassifier``: Linear -> BatchNorm1d -> ReLU -> Dropout(0.5));
- tllib/modules/kernels.py lines 49-62 (``GaussianKernel``: a fixed sigma, or alpha x the batch's
  mean squared distance).

Shared with tests/reference/dan.py (the same library): the running-statistics Gaussian kernel, the
index matrix and the classifier wrapper. Left out: the adversarial variant (``Theta``), data
loading, meters, logging, CUDA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR

from reference.dan import Classifier, GaussianKernel, index_matrix, squared_distances


class FixedGaussianKernel(nn.Module):
    """``GaussianKernel(sigma=..., track_running_stats=False)``."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma_square = torch.tensor(sigma * sigma)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.exp(-squared_distances(X) / (2 * self.sigma_square))


class JMMD(nn.Module):
    def __init__(self, kernels, linear: bool = False):
        super().__init__()
        self.kernels = kernels
        self.linear = linear

    def forward(self, z_s, z_t) -> torch.Tensor:
        batch_size = int(z_s[0].size(0))
        # TLlib: .to(z_s[0].device); the features' dtype too, so the parity test can run in float64
        weights = index_matrix(batch_size, self.linear).to(z_s[0])
        kernel_matrix = torch.ones_like(weights)
        for layer_z_s, layer_z_t, layer_kernels in zip(z_s, z_t, self.kernels):
            layer_features = torch.cat([layer_z_s, layer_z_t], dim=0)
            kernel_matrix *= sum([kernel(layer_features) for kernel in layer_kernels])
        return (kernel_matrix * weights).sum() + 2. / float(batch_size - 1)


class TLlibJAN:
    """``main``'s set-up and one iteration of ``train``. Digits (jan.sh): ``lr=0.01, scratch=True``."""

    def __init__(self, backbone: nn.Module, bottleneck: nn.Module, head: nn.Module, lr: float = 0.003,
                 scratch: bool = False, lr_gamma: float = 0.0003, lr_decay: float = 0.75, momentum: float = 0.9,
                 wd: float = 0.0005, trade_off: float = 1.0, linear: bool = False):
        self.model = Classifier(backbone, bottleneck, head, finetune=not scratch)
        self.optimizer = SGD(self.model.get_parameters(), lr, momentum=momentum, weight_decay=wd, nesterov=True)
        self.lr_scheduler = LambdaLR(self.optimizer, lambda x: lr * (1. + lr_gamma * float(x)) ** (-lr_decay))
        self.jmmd_loss = JMMD(([GaussianKernel(alpha=2 ** k) for k in range(-3, 2)], (FixedGaussianKernel(0.92),)),
                              linear=linear)
        self.trade_off = trade_off

    def step(self, x_s: torch.Tensor, labels_s: torch.Tensor, x_t: torch.Tensor) -> dict[str, float]:
        self.model.train()
        x = torch.cat((x_s, x_t), dim=0)
        y, f = self.model(x)
        y_s, y_t = y.chunk(2, dim=0)
        f_s, f_t = f.chunk(2, dim=0)
        cls_loss = F.cross_entropy(y_s, labels_s)
        transfer_loss = self.jmmd_loss((f_s, F.softmax(y_s, dim=1)), (f_t, F.softmax(y_t, dim=1)))
        loss = cls_loss + transfer_loss * self.trade_off
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.lr_scheduler.step()
        return {"cls_loss": cls_loss.item(), "transfer_loss": transfer_loss.item()}
