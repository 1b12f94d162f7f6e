"""DANN as its paper writes the update: Ganin et al., "Domain-Adversarial Training of Neural
Networks", JMLR 17 (2016).

The authors published no PyTorch code (their Caffe branch, ddtm/caffe "grl", holds the layer,
not the digit experiments' solver), so this transcribes the paper:
- section 4.2, eq. 18: E = (1/n) sum_i L_y^i - lambda ((1/n) sum_i L_d^i + (1/n') sum_j L_d^j),
  the domain term the mean logistic loss over the n source samples (domain 0 in the paper's
  notation; the label's name does not change the loss) plus the mean over the n' target samples;
- section 4.2, eqs. 13-14 and the gradient reversal layer's pseudo-function (eq. 19-20): the
  feature extractor descends dL_y/dtheta_f - lambda dL_d/dtheta_f, the label predictor dL_y,
  the domain classifier descends dL_d (the GRL form the paper trains with);
- section 5.2.2: SGD with momentum 0.9, mu_p = 0.01 / (1 + 10 p) ** 0.75, lambda_p = 2 / (1 +
  exp(-10 p)) - 1, p the training progress from 0 to 1; the MNIST architecture of figure 4
  (conv 5x5x32, pool, conv 5x5x48, pool; label predictor fc100, fc100, fc10; domain classifier
  fc100, fc1 on the flattened convolutional features).

Written with explicit gradients (``torch.autograd.grad`` of each loss with respect to each part)
rather than a reversal layer, so that a parity test checks the plugin's reversal against the
equations. The network is handed in: ``lower`` (the convolutions), ``upper`` (fc100), ``label``
(fc100 -> fc10), ``domain`` (fc100 -> fc1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reference.bsp import BSP


def lambda_p(p: float, gamma: float = 10.0) -> float:
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def mu_p(p: float, mu0: float = 0.01, alpha: float = 10.0, beta: float = 0.75) -> float:
    return mu0 / (1.0 + alpha * p) ** beta


class PaperTrainer:
    def __init__(self, lower: nn.Module, upper: nn.Module, label: nn.Module, domain: nn.Module, steps: int,
                 bsp: bool = False):
        self.lower, self.upper, self.label, self.domain, self.steps = lower, upper, label, domain, steps
        self.bsp = bsp  # tests/reference/bsp.py: 0.0001 x BSP of the features the domain classifier reads
        self.theta_f = list(lower.parameters()) + list(upper.parameters())
        self.theta_y, self.theta_d = list(label.parameters()), list(domain.parameters())
        self.optimizer = torch.optim.SGD(self.theta_f + self.theta_y + self.theta_d, lr=0.01, momentum=0.9)

    def step(self, i: int, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor) -> dict[str, float]:
        p = i / max(1, self.steps - 1)
        lam, mu = lambda_p(p), mu_p(p)
        for group in self.optimizer.param_groups:
            group["lr"] = mu
        conv = self.lower(torch.cat([xs, xt]))
        feats = self.upper(conv)
        l_y = F.cross_entropy(self.label(feats[: len(xs)]), ys)
        d = self.domain(conv.flatten(1)).squeeze(1)
        l_d = (F.binary_cross_entropy_with_logits(d[: len(xs)], torch.ones(len(xs)))
               + F.binary_cross_entropy_with_logits(d[len(xs):], torch.zeros(len(xt))))
        g_yf = torch.autograd.grad(l_y, self.theta_f + self.theta_y, retain_graph=True)
        g_df = torch.autograd.grad(l_d, self.theta_f + self.theta_d, allow_unused=True, retain_graph=self.bsp)
        nf = len(self.theta_f)
        grads = [gy - lam * (gd if gd is not None else 0) for gy, gd in zip(g_yf[:nf], g_df[:nf])]  # eq. 13
        out = {"cls": l_y.item(), "dom": l_d.item(), "lambda": lam}
        if self.bsp:  # a plain (not reversed) gradient into the feature extractor
            sigma = BSP(conv.flatten(1))
            g_bf = torch.autograd.grad(0.0001 * sigma, self.theta_f, allow_unused=True)
            grads = [g + (b if b is not None else 0) for g, b in zip(grads, g_bf)]
            out["bsp"] = sigma.item()
        grads += list(g_yf[nf:])  # eq. 14
        grads += list(g_df[nf:])  # the domain classifier descends its loss
        for param, grad in zip(self.theta_f + self.theta_y + self.theta_d, grads):
            param.grad = grad
        self.optimizer.step()
        return out
