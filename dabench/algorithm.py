"""The base class every algorithm plugin subclasses.

An algorithm is a ``torch.nn.Module`` with a declared hyperparameter space, an ``update(batch,
step)`` that trains on one batch and returns the losses to log, and a ``predict(x)`` that returns
logits. It owns its optimisers (``self.optims``) so the trainer can checkpoint them; learning-rate
schedules are functions of ``step`` so that a resumed run needs no scheduler state.
"""
from __future__ import annotations

import math

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from dabench.data import CLASSIFICATION, SEGMENTATION, Batch, concat  # noqa: F401 - concat: the 0.1 path
from dabench.hparams import HParam, choice, int_log2, log_uniform
from dabench.nets import SegNet
from dabench.layers import level_outputs, mlp, pairwise_mean, seg_loss, upsample  # noqa: F401 - the 0.1 path

# Who may see target labels, and how many. The protocol enforces these before training starts.
TARGET_LABELS = {
    "optional": "uses labelled target samples if --tgt-labeled N > 0 is given",
    "required": "needs --tgt-labeled N > 0 (supervised DA)",
    "all": "trains on every labelled target training sample (an upper bound, not adaptation)",
}


FREEZE_HELP = ("train the heads only: the backbone (a segmenter's encoder) keeps its loaded weights (--pretrained) "
               "and batch-norm statistics")


@dataclass(frozen=True)
class Stage:
    """One stage of a multi-stage method (UDAS: translate, adapt, self-train rounds). The trainer
    runs stages in order on one global step count, shows each with its own progress bar, and
    checkpoints at every stage end, so a run resumes inside any stage. ``evaluate`` False: the
    predictor does not change in this stage (e.g. a translator trains), so nothing is evaluated."""

    name: str
    steps: int
    evaluate: bool = True


@dataclass
class TrainData:
    """The data a stage draws its batches from, and all of the run's data ``begin_stage`` is handed:
    source train, the unlabelled target images and the labelled-target budget. The evaluation
    splits (source val, target val and test) never leave the trainer, and in unsupervised DA no
    object reachable from here holds a target label (``dabench.data.unlabeled``)."""

    src_train: Dataset  # labelled source images (several domains: dabench.data.SourceDomains)
    tgt_train: Dataset | None  # target images alone (ImagesOnly), or (image, pseudo-label) pairs a stage
    # made; None in domain generalisation
    tgt_labeled: Dataset | None = None  # the --tgt-labeled budget; None in unsupervised DA


def autocast(device: torch.device, precision: str):
    """The forward-pass precision of a run: nothing for fp32, torch.autocast for bf16 / fp16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class StageContext:
    """What ``begin_stage`` may use: the training data, the run's folders, where to show progress,
    and what the engine knows about running a network here (device, precision, evaluation batch)."""

    data: TrainData
    run_dir: Path
    cache_dir: Path  # shared by runs: caches keyed by their config (e.g. translated source images)
    device: torch.device
    precision: str
    seed: int
    reporter: Any
    workers: int = 0
    data_key: dict[str, Any] = field(default_factory=dict)  # the data's identity (pair, sizes, splits, seed)
    eval_batch: int = 1  # images per forward pass when a stage predicts over a data set (the task's)

    def autocast(self):
        """The run's forward-pass precision, for a stage's own forward passes."""
        return autocast(self.device, self.precision)


# What an algorithm says about itself, and the value where its own class says nothing. A flag is
# not inherited from another algorithm (CORAL subclassing ERM does not become a DG method or a
# segmentation one by accident): a class states each flag that is true of it, or takes the value of
# the helper base it extends (ClassificationAlgorithm, SegmentationAlgorithm), else this default.
#   name:          the name it is registered under (its entry point's), said here too
#   task:          CLASSIFICATION, SEGMENTATION, or "any" (erm, oracle)
#   target_labels: a key of TARGET_LABELS
#   needs_target:  True: ``update`` reads ``batch.tgt_x``, so domain generalisation (no target
#                  image in training, ``tgt_x`` None) refuses it; False where it trains without them
#   dg_only:       True: a domain-generalisation method only (DomainBed's MMD between source
#                  domains); unsupervised DA (--setting uda) refuses it
FLAGS: dict[str, Any] = {"name": None, "task": CLASSIFICATION, "target_labels": "optional", "needs_target": True,
                         "dg_only": False}

CLASSIFICATION_HPARAMS: dict[str, HParam] = {
    "lr": HParam(0.01, log_uniform(-3, -1.5), "initial SGD learning rate, annealed as in DANN"),
    "batch_size": HParam(64, int_log2(5, 7), "images per domain per step"),
    "weight_decay": HParam(0.0, log_uniform(-6, -2), "L2 penalty"),
    "freeze_backbone": HParam(False, None, FREEZE_HELP),
}

# The segmentation defaults of DeepLab and AdaptSegNet (Tsai et al. 2018): SGD 2.5e-4 with
# momentum 0.9 and weight decay 5e-4, heads at 10x, poly decay with power 0.9, batch 1.
SEGMENTATION_HPARAMS: dict[str, HParam] = {
    "lr": HParam(2.5e-4, log_uniform(-4.5, -3), "initial SGD learning rate of the segmenter, poly decay"),
    "batch_size": HParam(1, choice([1, 2]), "images per domain per step"),
    "weight_decay": HParam(5e-4, log_uniform(-5, -3), "L2 penalty of the segmenter"),
    "power": HParam(0.9, None, "poly decay: lr * (1 - p) ** power"),
    "poly_horizon": HParam(0, None, "steps the poly decay spans (0: the stage's own length, or the method's "
                           "poly_span x --steps); the AdaptSegNet code decays over 250000 and stops at 150000, "
                           "ADVENT's at 120000"),
    "head_lr_mult": HParam(10.0, None, "learning-rate multiplier of the freshly initialised heads"),
    "aux_weight": HParam(0.1, None, "weight of the auxiliary head's loss (lambda_seg), when the network has one"),
    "freeze_backbone": HParam(False, None, FREEZE_HELP),
}


class Algorithm(nn.Module):
    """What the trainer calls. Subclass ``ClassificationAlgorithm`` or ``SegmentationAlgorithm``
    (this class plus their optimisers and schedules), declare the flags that are true of the
    method (``FLAGS``), extend ``hparams`` and write ``update`` and ``predict``."""

    name: ClassVar[str | None] = None
    task: ClassVar[str] = CLASSIFICATION
    target_labels: ClassVar[str] = "optional"
    needs_target: ClassVar[bool] = True
    dg_only: ClassVar[bool] = False
    # the space every plugin's ``update`` may read (the trainer reads batch_size and freeze_backbone)
    hparams: ClassVar[dict[str, HParam]] = CLASSIFICATION_HPARAMS
    # an algorithm for every task (task "any": erm, oracle) names its space on each: {task: space}
    spaces: ClassVar[dict[str, dict[str, HParam]]] = {}
    _helper_base: ClassVar[bool] = True  # its flags pass to subclasses (an algorithm's do not)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for flag, default in FLAGS.items():
            if flag not in cls.__dict__:
                bases = [k for k in cls.__mro__[1:] if k.__dict__.get("_helper_base") and flag in k.__dict__]
                setattr(cls, flag, bases[0].__dict__[flag] if bases else default)

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict[str, Any], steps: int):
        super().__init__()
        self.hp = dict(hparams)
        self.num_classes = num_classes
        self.steps = steps
        self.segmentation = isinstance(backbone, SegNet)
        self.optims: dict[str, torch.optim.Optimizer] = {}
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)  # the trainer swaps in an enabled one for fp16
        # The network as the backbone plugin built it, kept outside the module tree (the subclass
        # registers it under its own name), for ``embed`` and ``freeze_backbone``.
        self.__dict__["_backbone"] = backbone
        self.__dict__["_frozen"] = None
        if self.hp.get("freeze_backbone"):
            frozen = backbone.encoder if self.segmentation else backbone
            frozen.requires_grad_(False)  # optimisers skip parameters without gradients
            self.__dict__["_frozen"] = frozen

    def train(self, mode: bool = True):
        super().train(mode)
        if self._frozen is not None:
            self._frozen.eval()  # a frozen backbone's batch-norm statistics stay as loaded too
        return self

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) features of the backbone (a segmenter's encoder output, averaged over the image):
        what ``dabench divergence`` measures the distance between domains on."""
        if self.segmentation:
            return self._backbone.encoder(x)[1].float().mean((2, 3))
        return self._backbone(x).float().flatten(1)

    @classmethod
    def space(cls, task: str, regime: str | None = None) -> dict[str, HParam]:
        """The hyperparameter space on a pair of ``task``, with the defaults the authors published
        for ``regime`` (``dabench.hparams.REGIMES``: the digit setting or the ImageNet one; the
        backbone decides, ``dabench.runner.regime_of``). A one-task algorithm declares ``hparams``;
        one for every task (``task = "any"``, e.g. erm) declares ``spaces``, a space per task."""
        space = cls.spaces[task] if cls.task == "any" else cls.hparams
        return {k: p.in_regime(regime) for k, p in space.items()}

    @classmethod
    def runs_in_dg(cls) -> bool:
        """Whether domain generalisation (no target image or label in training) can run it."""
        return not cls.needs_target and cls.target_labels not in ("required", "all")

    @classmethod
    def refuses(cls, hparams: dict[str, Any], sources: int) -> str | None:
        """Why a run with these hyperparameter values and this many source domains cannot train
        (checked before anything is written: exit 2 with the reason), or None. By default a
        domain-generalisation-only method (``dg_only``: it compares source domains) refuses a
        single source, whose batches carry one domain label."""
        if cls.dg_only and sources < 2:
            return ("it compares the source domains with each other (their risks, features or gradients), and one "
                    "source gives every image the same domain label: there is nothing to compare. Train on several "
                    "sources (--src a,b,c), or use erm.")
        return None

    @classmethod
    def description(cls) -> str:
        """The docstring's first paragraph, on one line (``dabench list``, the docs' method table)."""
        return first_paragraph(cls.__doc__)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stages(self) -> list[Stage]:
        """The stages of this method, in order; one ``train`` stage of ``--steps`` by default."""
        return [Stage("train", self.steps)]

    def begin_stage(self, stage: Stage, ctx: StageContext, resumed: bool):
        """Called when ``stage`` starts, or restarts after ``--resume`` (``resumed``: the weights came
        from a checkpoint inside it). Returns the ``TrainData`` the stage draws batches from
        (``ctx.data``, or ``dataclasses.replace(ctx.data, ...)`` with other ``src_train``/``tgt_train``;
        a ``tgt_train`` that yields (image, label) pairs fills ``Batch.tgt_pseudo``), or None to skip
        the stage's steps (its work is cached)."""
        return ctx.data

    def progress(self, step: int) -> float:
        """Training progress p in [0, 1], as schedules in the papers write it."""
        return step / max(1, self.steps - 1)

    def optimise(self, loss: torch.Tensor, *optims: torch.optim.Optimizer) -> None:
        """One optimiser step of ``optims`` on ``loss`` (zero_grad, backward, step), with loss
        scaling when the trainer runs in fp16. (Not ``update``'s ``step``, the iteration number.)"""
        for o in optims:
            o.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for o in optims:
            self.scaler.step(o)
        self.scaler.update()

    def step(self, loss: torch.Tensor, *optims: torch.optim.Optimizer) -> None:
        """Deprecated name of ``optimise`` (it read like ``update``'s iteration ``step``); kept so
        plugins written for dabench 0.1 still run."""
        warnings.warn("Algorithm.step(loss, *optims) is now Algorithm.optimise(loss, *optims).", DeprecationWarning,
                      stacklevel=2)
        self.optimise(loss, *optims)

    def __getattr__(self, name: str):
        # Plugins written for dabench 0.1 subclass Algorithm and call the helpers that now live on
        # the task bases (self.sgd, self.poly) and on Batch (self.labeled_sources(batch)).
        moved = _MOVED.get(name)
        if moved is None:
            return super().__getattr__(name)
        where, call = moved
        warnings.warn(f"Algorithm.{name} is now {where}.", DeprecationWarning, stacklevel=2)
        return lambda *args, **kwargs: call(self, *args, **kwargs)


class ClassificationAlgorithm(Algorithm):
    """An algorithm for classification, with the optimiser and schedules the classification
    methods share: SGD with momentum 0.9, the DANN paper's annealing and the thuml code's "inv"."""

    task = CLASSIFICATION
    hparams = CLASSIFICATION_HPARAMS
    _helper_base = True

    def sgd(self, params) -> torch.optim.Optimizer:
        """The shared optimiser of the classification plugins: SGD, momentum 0.9 (DANN paper)."""
        return torch.optim.SGD(params, lr=self.hp["lr"], momentum=0.9, weight_decay=self.hp["weight_decay"])

    def anneal(self, step: int) -> None:
        """Set every optimiser to the DANN paper's annealed rate mu_0 / (1 + 10 p) ** 0.75.

        A function of ``step`` alone, so resuming needs no scheduler state. A param group's
        ``lr_mult`` scales it (e.g. 10x for freshly initialised heads)."""
        lr = self.hp["lr"] / (1 + 10 * self.progress(step)) ** 0.75
        for optim in self.optims.values():
            for group in optim.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)

    def cosine(self, step: int) -> None:
        """Every optimiser at lr (1 + cos(pi step / steps)) / 2: cosine annealing to 0 over the run
        (Dassl's schedule, stepped per iteration)."""
        lr = self.hp["lr"] * (1 + math.cos(math.pi * step / self.steps)) / 2
        for optim in self.optims.values():
            for group in optim.param_groups:
                group["lr"] = lr

    def inv(self, step: int, optims=None, gamma: float = 0.001, power: float = 0.75) -> None:
        """The "inv" rate of the thuml code (CDAN, MCC, TLlib): lr_0 (1 + gamma i) ** -power at
        iteration i, counted in iterations rather than progress, so it does not depend on
        ``--steps``. Each param group keeps the rate it was built with as lr_0 (``lr_mult`` folded
        in), so heads at 10x decay alongside the backbone."""
        factor = (1 + gamma * step) ** -power
        for optim in optims or self.optims.values():
            for group in optim.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor


class SegmentationAlgorithm(Algorithm):
    """An algorithm for semantic segmentation on a ``dabench.nets.SegNet``, with DeepLab's and
    AdaptSegNet's defaults (``SEGMENTATION_HPARAMS``), their SGD over the network's parameter
    groups and the poly decay."""

    task = SEGMENTATION
    hparams = SEGMENTATION_HPARAMS
    _helper_base = True

    def seg_sgd(self, net: SegNet) -> torch.optim.Optimizer:
        """SGD over a SegNet's parameter groups (heads at ``head_lr_mult`` x lr); frozen ones left out."""
        groups = net.param_groups(self.hp["head_lr_mult"])
        for g in groups:
            g["lr"] = self.hp["lr"] * g["lr_mult"]
        return torch.optim.SGD(groups, lr=self.hp["lr"], momentum=0.9, weight_decay=self.hp["weight_decay"])

    def poly(self, step: int, steps: int | None = None, optims=None) -> None:
        """Poly decay of every optimiser (or of ``optims``): lr_0 * (1 - step/horizon) ** power, where
        lr_0 is the rate each param group was built with (so an Adam discriminator at 1e-4 decays
        alongside SGD at 2.5e-4). The horizon is ``poly_horizon`` when set (AdaptSegNet's code decays
        over 250k iterations and stops at 150k: ``--steps 150000 -H poly_horizon=250000``), else
        ``steps`` (a stage's length, or a method's ``poly_span`` x ``--steps``), else ``--steps``;
        past it the rate is 0."""
        horizon = self.hp.get("poly_horizon") or steps or self.steps
        factor = max(0.0, 1 - step / horizon) ** self.hp["power"]
        for optim in optims or self.optims.values():
            for group in optim.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor


# Helpers of dabench 0.1's Algorithm and where they live now (``Algorithm.__getattr__``).
_MOVED = {
    "sgd": ("ClassificationAlgorithm.sgd", ClassificationAlgorithm.sgd),
    "anneal": ("ClassificationAlgorithm.anneal", ClassificationAlgorithm.anneal),
    "inv": ("ClassificationAlgorithm.inv", ClassificationAlgorithm.inv),
    "seg_sgd": ("SegmentationAlgorithm.seg_sgd", SegmentationAlgorithm.seg_sgd),
    "poly": ("SegmentationAlgorithm.poly", SegmentationAlgorithm.poly),
    "labeled_parts": ("batch.labeled_parts()", lambda self, batch: batch.labeled_parts()),
    "labeled_sources": ("batch.labeled_sources()", lambda self, batch: batch.labeled_sources()),
    "with_target": ("batch.with_target(x)", lambda self, x, batch: batch.with_target(x)),
    "aligned_groups": ("batch.aligned_groups(activations)",
                       lambda self, batch, activations: batch.aligned_groups(activations)),
}


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph (up to its first blank line) as one line of text."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())
