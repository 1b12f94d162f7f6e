"""CDAN: a domain discriminator conditioned on the classifier's predictions (multilinear map)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.layers import mlp, spectral_penalty
from dabench.data import Batch
from dabench.hparams import HParam, int_log2, log_uniform
from dabench_plugins.algorithms.dann import grl_lambda, reverse_grad

MAX_MULTILINEAR = 4096  # above d x K, the paper's randomized multilinear map of this width
EPOCHS = 10  # the digit scripts train 10 epochs; their warm-up and halvings are counted in tenths of the run
ENTROPY_EPS = 1e-5  # the authors' Entropy(): -p log(p + 1e-5)


class Multilinear(nn.Module):
    """T(f, g): the flattened outer product g (x) f, or, when d x K exceeds 4096, the randomized
    map (1/sqrt(width)) (R_f f) * (R_g g) with fixed Gaussian R_f, R_g (CDAN eq. 6-7)."""

    def __init__(self, features: int, classes: int, width: int = MAX_MULTILINEAR):
        super().__init__()
        self.randomized = features * classes > width
        self.out_features = width if self.randomized else features * classes
        if self.randomized:
            self.register_buffer("r_f", torch.randn(features, width))
            self.register_buffer("r_g", torch.randn(classes, width))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.randomized:
            return (f @ self.r_f) * (g @ self.r_g) / math.sqrt(self.out_features)
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """The authors' Entropy(): -sum_k p_k log(p_k + 1e-5) per row of probabilities."""
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(1)


def conditional_domain_loss(src_logits: torch.Tensor, tgt_logits: torch.Tensor,
                            src_w: torch.Tensor | None = None, tgt_w: torch.Tensor | None = None) -> torch.Tensor:
    """The domain term of the authors' loss.CDAN: source labelled 1, target 0. Unweighted, the
    mean logistic loss over the joint batch (ln 2 at chance). CDAN+E: each domain's weights
    divided by their (detached) sum, then the weighted sum over the joint batch divided by the sum
    of all weights (2): half the weighted mean of each domain; the weights keep their gradient."""
    bce = F.binary_cross_entropy_with_logits
    s = bce(src_logits, torch.ones_like(src_logits), reduction="none")
    t = bce(tgt_logits, torch.zeros_like(tgt_logits), reduction="none")
    if src_w is None:
        return torch.cat([s, t]).mean()
    ws, wt = src_w / src_w.detach().sum(), tgt_w / tgt_w.detach().sum()
    return ((ws * s).sum() + (wt * t).sum()) / 2


def discriminator(width: int, hidden: int) -> nn.Sequential:
    """The authors' AdversarialNetwork: fc hidden -> ReLU -> dropout 0.5 -> fc hidden -> ReLU ->
    dropout 0.5 -> fc 1 (a logit; their sigmoid is inside our loss), Xavier-normal weights, zero biases."""
    net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 1))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


class CDAN(ClassificationAlgorithm):
    """Conditional adversarial DA (Long et al., NeurIPS 2018): DANN's adversarial game, with the
    domain discriminator reading the multilinear map of features f and predictions g = softmax.

    As the authors' code (thuml/CDAN, pytorch/loss.py CDAN, network.py AdversarialNetwork and
    calc_coeff): f is the classifier's input (the head's hidden layer), g is detached inside T,
    T(f, g) = g (x) f (randomized to 4096 when d x K is larger, the paper's rule); the
    discriminator reads T through a gradient reversal whose coefficient counts the adversarial
    iterations i, 2 / (1 + exp(-10 i / 10000)) - 1 (0.46 after 1,000, 0.76 after 2,000, 1 after
    10,000), independent of ``--steps``; the domain loss is the mean logistic loss over the joint
    batch, weighted by ``trade_off``. ``-H entropy_conditioning=true`` is CDAN+E: each sample
    weighted by 1 + exp(-H(g)), normalised per domain; the entropy keeps its gradient, reversed
    with the coefficient of the run's iteration (the authors' grl_hook on the entropy).

    Two settings, by the backbone's regime (``dabench list algorithms`` shows both):
    - digits (pytorch/train_uspsmnist.py, MNIST -> USPS, trained from scratch): 64 images per
      domain; the network and the discriminator (fc 500 -> 500) each with their own SGD, lr 0.01,
      momentum 0.9, weight decay 5e-4; the first of 10 epochs (``warmup`` 0.1 of the run) trains
      the classifier alone and leaves the discriminator untouched; the network's rate (not the
      discriminator's) is halved every ``decay_epoch`` 5 of the 10 epochs (at 40% and 90% of the
      run); source and target pass through the network as one batch.
    - imagenet (pytorch/train_image.py, pretrained ResNet-50): 36 images per domain; SGD with
      Nesterov momentum 0.9, lr 0.001 decayed as lr (1 + 0.001 i) ** -0.75, weight decay 5e-4 x 2,
      the new layers (head, discriminator of fc 1024 -> 1024) at 10x; no warm-up; source and target
      through the network separately (batch-norm statistics per domain).
    The network is the benchmark's (the backbone and ERM's fc 100 -> fc K head), not the authors'
    LeNet or ResNet-50 with a 256-d bottleneck.

    ``-H bsp=true`` adds batch spectral penalisation (Chen et al., ICML 2019; thuml/Batch-Spectral-
    Penalization train.py, whose CDAN+E adds it): ``bsp_weight`` (1e-4) x the squared largest
    singular value of the source and of the target features f of the multilinear map, with the
    adversarial term (not during the digit warm-up: their script has none).
    """

    name = "cdan"
    task = "classification"
    hparams = {
        **ClassificationAlgorithm.hparams,
        "lr": HParam(0.01, log_uniform(-3.5, -1.5), "initial SGD learning rate", regimes={"imagenet": 0.001}),
        "batch_size": HParam(64, int_log2(5, 7), "images per domain per step", regimes={"imagenet": 36}),
        "weight_decay": HParam(5e-4, None, "L2 penalty of every optimiser", regimes={"imagenet": 1e-3}),
        "schedule": HParam("step", None, "step: constant, the network's rate halved every decay_epoch of 10 epochs "
                           "(digit scripts); inv: lr (1 + 0.001 i) ** -0.75 per iteration (train_image.py)",
                           choices=("step", "inv"), regimes={"imagenet": "inv"}),
        "decay_epoch": HParam(5, None, "with schedule=step: halve the network's rate every this many of 10 epochs"),
        "warmup": HParam(0.1, None, "fraction of the run before the adversarial term starts (digit scripts: the "
                         "first of 10 epochs)", regimes={"imagenet": 0.0}),
        "trade_off": HParam(1.0, log_uniform(-1, 0.5), "weight of the domain loss"),
        "max_iter": HParam(10000, None, "iterations over which the reversal coefficient rises to 1 (alpha 10)"),
        "disc_hidden": HParam(500, None, "width of the discriminator's two hidden layers", regimes={"imagenet": 1024}),
        "new_lr_mult": HParam(1.0, None, "learning-rate multiplier of the head and the discriminator",
                              regimes={"imagenet": 10.0}),
        "entropy_conditioning": HParam(False, None, "CDAN+E: weight the domain loss by prediction certainty"),
        "bsp": HParam(False, None, "BSP: add bsp_weight x the squared top singular values of the source and the "
                      "target features the domain classifier reads (Chen et al. 2019)"),
        "bsp_weight": HParam(1e-4, None, "weight of the batch spectral penalty when bsp=true"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.classifier = mlp([backbone.out_features, 100, num_classes])
        width = self.classifier[-1].in_features
        self.multilinear = Multilinear(width, num_classes)
        self.discriminator = discriminator(self.multilinear.out_features, self.hp["disc_hidden"])
        self.joint_forward = self.hp["schedule"] == "step"  # the digit scripts' one batch; train_image.py's two
        new, nesterov = self.hp["new_lr_mult"], self.hp["schedule"] == "inv"
        sgd = lambda groups: torch.optim.SGD(groups, lr=self.hp["lr"], momentum=0.9, nesterov=nesterov,  # noqa: E731
                                             weight_decay=self.hp["weight_decay"])
        self.optims["model"] = sgd([{"params": list(backbone.parameters()), "lr": self.hp["lr"]},
                                    {"params": list(self.classifier.parameters()), "lr": self.hp["lr"] * new}])
        self.optims["discriminator"] = sgd([{"params": list(self.discriminator.parameters()), "lr": self.hp["lr"] * new}])

    def adversarial_start(self) -> int:
        """The first step of the adversarial term (the digit scripts' epoch > start_epoch)."""
        return math.ceil(self.hp["warmup"] * self.steps)

    def coefficient(self, iteration: int) -> float:
        """The authors' calc_coeff: 2 / (1 + exp(-10 i / max_iter)) - 1."""
        return grl_lambda(iteration / self.hp["max_iter"], 10.0)

    def set_rates(self, step: int) -> None:
        if self.hp["schedule"] == "inv":
            self.inv(step)
            return
        epoch = math.floor(EPOCHS * step / self.steps) + 1
        for group in self.optims["model"].param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * 0.5 ** (epoch // self.hp["decay_epoch"])

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.set_rates(step)
        x, y = batch.labeled_sources()
        if self.joint_forward:
            feats = self.featurizer(torch.cat([x, batch.tgt_x]))
        else:
            feats = torch.cat([self.featurizer(x), self.featurizer(batch.tgt_x)])
        hidden = self.classifier[:-1](feats)
        logits = self.classifier[-1](hidden)
        cls = F.cross_entropy(logits[: len(x)], y)
        logs = {"cls": cls.item()}
        k = step - self.adversarial_start()  # adversarial iterations before this one
        if k < 0:  # warm-up: the classifier alone; the discriminator is not stepped
            self.optimise(cls, self.optims["model"])
            return logs | {"lambda": 0.0}
        n_src = len(batch.src_x)
        keep = torch.cat([torch.arange(n_src), torch.arange(len(x), len(feats))]).to(feats.device)  # not labelled target
        f, probs = hidden[keep], F.softmax(logits[keep].float(), dim=1).to(hidden.dtype)
        coeff = self.coefficient(k + 1)  # the discriminator's own counter, advanced before its forward
        out = self.discriminator(reverse_grad(self.multilinear(f, probs.detach()), coeff)).squeeze(1)
        weights = (None, None)
        if self.hp["entropy_conditioning"]:
            # w = 1 + exp(-H), H's gradient reversed with the coefficient of the run's iteration
            # count (the scripts pass calc_coeff of the global iteration; the discriminator's own
            # counter starts with the adversarial term)
            w = 1 + torch.exp(-reverse_grad(entropy(probs.float()), self.coefficient(step)))
            weights = (w[:n_src], w[n_src:])
        dom = conditional_domain_loss(out[:n_src], out[n_src:], *weights)
        loss = cls + self.hp["trade_off"] * dom
        if self.hp["bsp"]:
            bsp = spectral_penalty(f[:n_src], f[n_src:])
            loss, logs["bsp"] = loss + self.hp["bsp_weight"] * bsp, bsp.item()
        self.optimise(loss, self.optims["model"], self.optims["discriminator"])
        return logs | {"dom": dom.item(), "lambda": coeff}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
