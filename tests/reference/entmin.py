"""Entropy minimisation (Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization",
NeurIPS 2004): no code was published, so this transcribes the paper's criterion, Section 2.

Each example i carries a label indicator z_i: for a labelled example the one-hot row of its class,
for an unlabelled one a row of ones. With f_k(x) the model's posterior (the softmax of the logits):
- the conditional log-likelihood L(theta; L_n) = sum_i log(sum_k z_ik f_k(x_i)) (the labelled
  examples' log-posterior of their class; an unlabelled example adds log 1 = 0);
- g_k(x, z) = z_k f_k(x) / sum_l z_l f_l(x), and the empirical entropy
  H_emp(Y | X, Z; L_n) = -(1/n) sum_i sum_k g_k(x_i, z_i) log g_k(x_i, z_i) (0 for a labelled
  example, whose g is one-hot; the entropy of f for an unlabelled one);
- the criterion C(theta, lambda; L_n) = L - lambda H_emp, maximised.
One step here ascends C on a batch of n_l labelled and n_u unlabelled examples (n = n_l + n_u), scaled
by 1 / n_l so that its likelihood part is the mean cross-entropy. The paper's weight ``lam_paper``
therefore matches a per-batch loss "mean CE + lambda x mean target entropy" at
lam_paper = lambda x n x n_l / n_u, a constant the paper's cross-validated lambda absorbs.

The optimiser is handed in (the paper's experiments fit logistic models by conjugate gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def criterion(logits: torch.Tensor, z: torch.Tensor, lam_paper: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C(theta, lambda; L_n) on one batch, with its two parts L and H_emp."""
    f = F.softmax(logits, dim=1)
    likelihood = torch.log((z * f).sum(1)).sum()
    g = z * f / (z * f).sum(1, keepdim=True)
    g_log_g = torch.where(g > 0, g * torch.log(g.clamp_min(1e-38)), torch.zeros_like(g))  # 0 log 0 = 0
    h_emp = -g_log_g.sum() / len(logits)
    return likelihood - lam_paper * h_emp, likelihood, h_emp


class EntropyMinimisation:
    def __init__(self, net: nn.Module, num_classes: int, lam_paper: float, optimizer: torch.optim.Optimizer):
        self.net, self.num_classes, self.lam_paper, self.optimizer = net, num_classes, lam_paper, optimizer

    def step(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, lr: float) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        z = torch.cat([F.one_hot(y_l, self.num_classes).float(), torch.ones(len(x_u), self.num_classes)])
        logits = self.net(torch.cat([x_l, x_u]))
        c, likelihood, h_emp = criterion(logits, z, self.lam_paper)
        self.optimizer.zero_grad()
        (-c / len(x_l)).backward()
        self.optimizer.step()
        n, n_l, n_u = len(z), len(x_l), len(x_u)
        # the two parts in the per-batch units of the plugin's log: mean CE, mean target entropy
        return {"ce": -likelihood.item() / n_l, "entropy": h_emp.item() * n / n_u}
