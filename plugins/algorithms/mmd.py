"""Kernel mean-embedding alignment: DAN (unsupervised DA, TLlib's: multi-kernel MMD between source
and target bottleneck features) and MMD (domain generalisation, DomainBed's: Gaussian-kernel MMD
between every pair of source domains)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.layers import pairwise_mean
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench_plugins.algorithms.dann import RAMP, ramped
from dabench_plugins.algorithms.erm import DOMAINBED_ADAM, ERM, domainbed_adam

# TLlib's examples/.../dan.py: GaussianKernel(alpha=2 ** k) for k in -3..1, each with
# track_running_stats (its sigma^2 = alpha x the batch's mean squared distance).
KERNEL_ALPHAS = tuple(2.0 ** k for k in range(-3, 2))
# DomainBed's AbstractMMD.gaussian_kernel: fixed gammas, k(x, y) = exp(-gamma ||x - y||^2).
DOMAINBED_GAMMAS = (0.001, 0.01, 0.1, 1, 10, 100, 1000)
ESTIMATORS = ("linear", "quadratic")


def mmd_weights(n: int, estimator: str = "linear") -> torch.Tensor:
    """The (2n, 2n) weights that turn the kernel matrix of [source; target] into the MMD estimate,
    as TLlib's ``_update_index_matrix`` lays them out.

    ``linear`` (TLlib's default; the linear-time form of DAN eq. 5): the n overlapping pairs
    (i, i+1 mod n), each contributing (k(s_i, s_i+1) + k(t_i, t_i+1) - k(s_i, t_i+1) - k(s_i+1, t_i))
    / n. The entries are set, not added, so for n = 2 the two cross pairs coincide and count once,
    as in TLlib. (The bandwidths need every pairwise distance, so TLlib, and this, compute the
    whole kernel matrix.)
    ``quadratic`` (TLlib's --non-linear): within-domain pairs i != j at 1 / (n (n - 1)), every
    cross-domain pair at -1 / n^2."""
    w = torch.zeros(2 * n, 2 * n)
    if estimator == "linear":
        i = torch.arange(n)
        j = (i + 1) % n
        w[i, j] = 1.0 / n
        w[i + n, j + n] = 1.0 / n
        w[i, j + n] = -1.0 / n
        w[j, i + n] = -1.0 / n
    else:
        within = (1 - torch.eye(n)) / (n * (n - 1))
        w[:n, :n], w[n:, n:] = within, within
        w[:n, n:] = w[n:, :n] = -1.0 / (n * n)
    return w


def kernel_matrix(z: torch.Tensor) -> torch.Tensor:
    """sum_k exp(-||z_i - z_j||^2 / (2 sigma_k^2)) over every pair of rows of ``z``, with
    sigma_k^2 = alpha_k x the mean squared distance over all (2n)^2 pairs, the zero diagonal
    included, detached (TLlib's GaussianKernel with track_running_stats).

    TLlib's five kernel modules each compute the distances again; one shared distance tensor is
    the same function at a fifth of the cost (JAN: 0.33 against 1.14 s per step for 256 rows on one
    CPU thread). Its gradient sums the five parts in another order, which rounds differently in
    float32, so JAN's parity test runs in float64."""
    d2 = (z.unsqueeze(0) - z.unsqueeze(1)).pow(2).sum(2)
    return multi_kernel(d2, d2.detach().mean())


def multi_kernel(d2: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """sum_k exp(-d2 / (2 alpha_k mean)) over ``KERNEL_ALPHAS``: TLlib's five Gaussian kernels at
    squared distances ``d2``, bandwidths scaled by the mean squared distance ``mean``."""
    return sum(torch.exp(-d2 / (2 * (alpha * mean))) for alpha in KERNEL_ALPHAS)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 where it is (half-precision activations are summed in float32)."""
    return x if x.dtype == torch.float64 else x.float()


def mean_squared_distance(z: torch.Tensor) -> torch.Tensor:
    """The mean of ||z_i - z_j||^2 over all pairs of rows, the zero diagonal included, detached:
    2 x the mean squared distance to the centroid (the same quantity as the mean of the whole
    distance matrix, computed in float64 from the centred rows, so nothing cancels)."""
    c = z.detach().double()
    c = c - c.mean(0)
    return (2 * (c.pow(2).sum(1).mean() - c.mean(0).pow(2).sum())).to(z.dtype)


def pair_kernels(z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``kernel_matrix(z)[rows, cols]`` without the matrix: the distances of the listed pairs
    only, the bandwidths from every pair's mean (``mean_squared_distance``). The gradient is the
    full matrix's, whose other entries carry weight 0."""
    return multi_kernel((z[rows] - z[cols]).pow(2).sum(1), mean_squared_distance(z))


def mk_mmd(src: torch.Tensor, tgt: torch.Tensor, estimator: str = "linear") -> torch.Tensor:
    """The squared multi-kernel MMD between source and target activations (equal kernel weights),
    estimated as ``mmd_weights`` says; batches are cut to the smaller one's size, 0 below 2 rows.

    TLlib's value also adds 2 / (n - 1) (a constant meant to make the quadratic estimate positive);
    it moves no gradient and is left out, so identical batches give 0.

    The linear estimate weighs 4n of the (2n)^2 pairs, so only those distances are computed
    (``pair_kernels``: O(n d) memory instead of TLlib's (2n, 2n, d) tensor; a DAN step on 128 + 128
    digits about 2.5 times faster on a CPU); the quadratic estimate needs the whole matrix."""
    src, tgt = src.float().flatten(1), tgt.float().flatten(1)
    n = min(len(src), len(tgt))
    if n < 2:
        return src.new_zeros(())
    z = torch.cat([src[:n], tgt[:n]])
    w = mmd_weights(n, estimator).to(z.device)
    if estimator == "linear":
        rows, cols = w.nonzero(as_tuple=True)
        return (pair_kernels(z, rows, cols) * w[rows, cols]).sum()
    return (kernel_matrix(z) * w).sum()


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 as ||y_j||^2 - 2 x_i.y_j + ||x_i||^2, floored at 1e-30, in DomainBed's
    order of operations (``my_cdist``): at gamma = 1000 the diagonal's rounding error shows in
    the kernel, so another order gives another loss."""
    x_norm = x.pow(2).sum(-1, keepdim=True)
    y_norm = y.pow(2).sum(-1, keepdim=True)
    return torch.addmm(y_norm.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2).add_(x_norm).clamp_min_(1e-30)


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DomainBed's MMD (``AbstractMMD.mmd``, gaussian): mean k(x, x) + mean k(y, y) - 2 mean k(x, y),
    diagonals included, k the sum of exp(-gamma d^2) over ``DOMAINBED_GAMMAS``."""
    def k(a, b):
        d2 = squared_distances(a, b)
        return sum(torch.exp(d2.mul(-g)) for g in DOMAINBED_GAMMAS).mean()
    x, y = x.float().flatten(1), y.float().flatten(1)
    return k(x, x) + k(y, y) - 2 * k(x, y)


class DAN(ClassificationAlgorithm):
    """Deep Adaptation Network (Long et al., ICML 2015): source classification plus lambda times the
    multi-kernel MMD between source and target features. Registered as ``dan``.

    As TLlib (the authors' lab's PyTorch port of their Caffe code thuml/DAN;
    examples/domain_adaptation/image_classification/dan.py, tllib/alignment/dan.py): a bottleneck
    fc ``bottleneck_dim`` -> ReLU -> dropout 0.5 on the backbone's features, a linear head, and the
    MK-MMD on the bottleneck's output alone, weight 1, with the linear estimate over TLlib's
    overlapping pairs (i, i+1 mod n) (DAN eq. 5 takes disjoint quad-tuples); five Gaussian kernels
    with sigma^2 = 2^k x the batch's mean squared distance, k = -3..1, at equal weights (the paper
    learns the weights by a quadratic program; TLlib keeps them equal). Source and target pass through the
    network separately, as TLlib's training loop does (batch-norm statistics per domain).
    Optimiser: SGD, momentum 0.9, Nesterov, weight decay 5e-4, lr x (1 + 0.0003 i)^-0.75 at
    iteration i (TLlib's LambdaLR), the backbone at 0.1 x lr when fine-tuned (``imagenet``) and at
    1 x when trained from scratch (``digits``). Regimes: TLlib's digit script (lenet, --scratch,
    lr 0.01, batch 128; here the digit CNN, whose features are 100-d) and its ImageNet scripts
    (lr 0.003, batch 32).

    Variants (off by default):
    - ``-H estimator=quadratic``: TLlib's --non-linear estimate over all pairs (within-domain pairs
      i != j, every cross pair), less noisy on small batches.
    - ``-H ramp=dann``: the weight rises as DANN's lambda does (not in the references). dabench 0.1
      adapted three layers, logits included, at full weight from the first step, and its features
      collapsed from scratch (benchmarks/RESULTS.md); the ramp was tried against that, and is kept
      for comparison.

    Unsupervised DA only; domain generalisation's MMD is the ``mmd`` plugin (DomainBed's).
    """

    name = "dan"
    task = "classification"
    hparams = {
        **ClassificationAlgorithm.hparams,
        "lr": HParam(0.01, log_uniform(-3, -1.5), "initial SGD learning rate (TLlib: 0.01 digits, 0.003 ImageNet)",
                     regimes={"imagenet": 0.003}),
        "batch_size": HParam(128, None, "images per domain per step", regimes={"imagenet": 32}),
        "weight_decay": HParam(5e-4, None, "L2 penalty"),
        "lr_gamma": HParam(3e-4, None, "lr x (1 + lr_gamma x step) ** -lr_decay (TLlib's schedule)"),
        "lr_decay": HParam(0.75, None, "the power of that schedule"),
        "backbone_lr_mult": HParam(1.0, None, "the backbone's rate as a multiple of lr (TLlib: 1 from scratch, 0.1 "
                                   "fine-tuned)", regimes={"imagenet": 0.1}),
        "bottleneck_dim": HParam(256, None, "width of the bottleneck the MMD reads"),
        "lambda_mmd": HParam(1.0, log_uniform(-1, 0.5), "weight of the MMD (TLlib's trade-off)"),
        "estimator": HParam("linear", None, "UDA MK-MMD estimate: linear (TLlib's default) or quadratic "
                            "(TLlib's --non-linear)", choices=ESTIMATORS),
        "ramp": RAMP,
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        width = self.hp["bottleneck_dim"]
        self.bottleneck = nn.Sequential(nn.Linear(backbone.out_features, width), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(width, num_classes)
        self.optims["model"] = self.tllib_sgd()

    def tllib_sgd(self) -> torch.optim.SGD:
        """TLlib's SGD over ``get_parameters()``: Nesterov momentum 0.9, the backbone at
        ``backbone_lr_mult`` x lr, the bottleneck and head at lr."""
        lr = self.hp["lr"]
        return torch.optim.SGD(
            [{"params": list(self.featurizer.parameters()), "lr": lr * self.hp["backbone_lr_mult"]},
             {"params": list(self.bottleneck.parameters()), "lr": lr},
             {"params": list(self.head.parameters()), "lr": lr}],
            lr=lr, momentum=0.9, weight_decay=self.hp["weight_decay"], nesterov=True)

    def schedule(self, step: int) -> float:
        """TLlib's rate at iteration ``step``: lr (1 + lr_gamma step)^-lr_decay (``ClassificationAlgorithm.inv``),
        times each group's multiple; returns the base rate."""
        self.inv(step, gamma=self.hp["lr_gamma"], power=self.hp["lr_decay"])
        return self.hp["lr"] * (1.0 + self.hp["lr_gamma"] * step) ** -self.hp["lr_decay"]

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, bottleneck features) of images ``x``."""
        f = self.bottleneck(self.featurizer(x))
        return self.head(f), f

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.schedule(step)
        x, y = batch.labeled_sources()
        logits_s, f_s = self.classify(x)
        _, f_t = self.classify(batch.tgt_x)
        cls = F.cross_entropy(logits_s, y)
        n = len(batch.src_x)  # labelled target rows are classified, not aligned
        mmd = mk_mmd(f_s[:n], f_t, self.hp["estimator"])
        weight = ramped(self.hp["lambda_mmd"], self.hp["ramp"], self.progress(step))
        self.optimise(cls + mmd * weight, self.optims["model"])
        return {"cls": cls.item(), "mmd": mmd.item()}

    def predict(self, x):
        return self.classify(x)[0]

    @torch.no_grad()
    def embed(self, x):
        """The bottleneck features, where DAN aligns the domains (``dabench divergence`` measures there)."""
        return self.bottleneck(self.featurizer(x)).float()


class MMD(ERM):
    """DomainBed's MMD for domain generalisation: Gaussian-kernel MMD between every pair of source domains.

    Source classification plus the MMD between the features of every pair of source domains.
    Registered as ``mmd``; DG only.

    As DomainBed (domainbed/algorithms.py, ``AbstractMMD`` with gaussian=True, the class ``MMD``;
    hparams_registry.py): each source domain through the network on its own, the mean of the
    per-domain cross-entropies plus ``mmd_gamma`` (1) times ``gaussian_mmd`` between the featurizer
    outputs (kernels exp(-gamma ||x - y||^2), gamma 1e-3 ... 1e3, fixed; diagonals included),
    averaged over the pairs of domains; Adam, lr 1e-3, no weight decay, 64 images per domain (its
    small-image setting), a constant rate. The network is ERM's (the backbone and the fc 100 -> fc K
    head; DomainBed's head is one linear layer), so the DG rows differ from ERM's in the penalty and
    the optimiser.

    Under ERM's annealed SGD (lr 0.01, momentum 0.9; ``-H optimizer=sgd``, kept to show it) the
    penalty kills the digit CNN's features within 200 steps on every held-out domain tried (every
    feature 0, the MMD 0, the loss ln 10). DomainBed's Adam trains with mnistm5k held out (61.9 %
    at step 600) but not with syndigits held out (chance: the MMD falls to 0 by step 100 while the
    loss stays at ln 10); DomainBed's MNIST featurizer has GroupNorm, the DANN digit CNN has no
    normalisation before its feature ReLU, and on that featurizer (``--backbone domainbed-cnn``)
    the same run trains (benchmarks/RESULTS.md). DomainBed proposes MMD for
    domain generalisation only; between a source and a target, DAN (``dan``) is the method.
    """

    name = "mmd"
    task = "classification"
    needs_target = False
    dg_only = True
    hparams = {
        **ERM.hparams,
        **DOMAINBED_ADAM,
        "mmd_gamma": HParam(1.0, log_uniform(-1, 1), "weight of the MMD between every pair of source domains"),
        "optimizer": HParam("adam", None, "adam: DomainBed's, constant rate; sgd: ERM's annealed SGD (collapses on "
                            "digits4)", choices=("adam", "sgd")),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        if self.hp["optimizer"] == "adam":
            self.optims["model"] = domainbed_adam(self, self.hp)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        if self.hp["optimizer"] == "sgd":
            self.anneal(step)
        feats, cls = self.per_domain(batch)
        mmd = pairwise_mean(feats, gaussian_mmd)
        self.optimise(cls + self.hp["mmd_gamma"] * mmd, self.optims["model"])
        return {"cls": cls.item(), "mmd": mmd.item()}


PREDICTION_SIGMA = 0.92  # TLlib's jan.py: GaussianKernel(sigma=0.92, track_running_stats=False) on the softmax


def jmmd(features: tuple[torch.Tensor, torch.Tensor], predictions: tuple[torch.Tensor, torch.Tensor],
         estimator: str = "quadratic") -> torch.Tensor:
    """The joint MMD of JAN (Long et al. 2017, eq. 8) as TLlib computes it: the kernel matrix of
    [source; target] is the product of the multi-kernel matrix of the features (``kernel_matrix``)
    and a Gaussian kernel of width ``PREDICTION_SIGMA`` on the class probabilities, weighted as
    ``mmd_weights`` says (TLlib's constant 2 / (n - 1) left out, as in ``mk_mmd``)."""
    n = min(len(features[0]), len(features[1]))
    if n < 2:
        return features[0].new_zeros(())
    f = as_float(torch.cat([features[0][:n], features[1][:n]])).flatten(1)
    p = as_float(torch.cat([predictions[0][:n], predictions[1][:n]]))
    d2 = (p.unsqueeze(0) - p.unsqueeze(1)).pow(2).sum(2)
    sigma_square = torch.tensor(PREDICTION_SIGMA * PREDICTION_SIGMA, device=p.device)  # a 0-d tensor, as TLlib keeps it
    joint = kernel_matrix(f) * torch.exp(-d2 / (2 * sigma_square))
    return (joint * mmd_weights(n, estimator).to(joint)).sum()


class JAN(DAN):
    """Joint Adaptation Network (Long et al., ICML 2017): source classification plus the joint MMD
    of the bottleneck features and the class probabilities. Registered as ``jan``.

    As TLlib (the authors' lab's port; examples/domain_adaptation/image_classification/jan.py,
    tllib/alignment/jan.py): DAN's TLlib setting (SGD with Nesterov, lr x (1 + 0.0003 i)^-0.75,
    weight decay 5e-4, lr 0.01 and 128 images per domain on digits from scratch, 0.003 and 32 on
    ImageNet-size data with the backbone at 0.1 x), with JAN's bottleneck (Linear -> BatchNorm ->
    ReLU -> Dropout 0.5), source and target through the network in one batch, and the JMMD: the
    product of DAN's five Gaussian kernels on the features and one Gaussian (sigma 0.92) on the
    softmax, quadratic estimate (TLlib's default for JAN; ``-H estimator=linear`` is its --linear).
    Not offered: TLlib's adversarial JAN (--adversarial).
    """

    name = "jan"
    hparams = {
        **DAN.hparams,
        "lambda_mmd": HParam(1.0, log_uniform(-1, 0.5), "weight of the JMMD (TLlib's trade-off)"),
        "estimator": HParam("quadratic", None, "JMMD estimate: quadratic (TLlib's default for JAN) or linear "
                            "(its --linear)", choices=ESTIMATORS),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        width = self.hp["bottleneck_dim"]
        self.bottleneck = nn.Sequential(nn.Linear(backbone.out_features, width), nn.BatchNorm1d(width), nn.ReLU(),
                                        nn.Dropout(0.5))
        self.optims["model"] = self.tllib_sgd()

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.schedule(step)
        x, y = batch.labeled_sources()
        logits, f = self.classify(torch.cat([x, batch.tgt_x]))  # one batch, as TLlib's jan.py
        n, m = len(batch.src_x), len(x)  # labelled target rows are classified, not aligned
        cls = F.cross_entropy(logits[:m], y)
        probs = (F.softmax(logits[:n], dim=1), F.softmax(logits[m:], dim=1))
        loss_jmmd = jmmd((f[:n], f[m:]), probs, self.hp["estimator"])
        weight = ramped(self.hp["lambda_mmd"], self.hp["ramp"], self.progress(step))
        self.optimise(cls + loss_jmmd * weight, self.optims["model"])
        return {"cls": cls.item(), "jmmd": loss_jmmd.item()}
