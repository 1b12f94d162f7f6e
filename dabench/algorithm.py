"""The base class every algorithm plugin subclasses.

An algorithm is a ``torch.nn.Module`` with a declared hyperparameter space, an ``update(batch,
step)`` that trains on one batch and returns the losses to log, and a ``predict(x)`` that returns
logits. It owns its optimisers (``self.optims``) so the trainer can checkpoint them; learning-rate
schedules are functions of ``step`` so that a resumed run needs no scheduler state.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from dabench.data import CLASSIFICATION, Batch
from dabench.hparams import HParam, int_log2, log_uniform

# Who may see target labels, and how many. The protocol enforces these before training starts.
TARGET_LABELS = {
    "optional": "uses labelled target samples if --tgt-labeled N > 0 is given",
    "required": "needs --tgt-labeled N > 0 (supervised DA)",
    "all": "trains on every labelled target training sample (an upper bound, not adaptation)",
}


class Algorithm(nn.Module):
    """Subclass this. Set ``task``, extend ``hparams`` and write ``update`` and ``predict``."""

    task: ClassVar[str] = CLASSIFICATION
    target_labels: ClassVar[str] = "optional"
    hparams: ClassVar[dict[str, HParam]] = {
        "lr": HParam(0.01, log_uniform(-3, -1.5), "initial SGD learning rate, annealed as in DANN"),
        "batch_size": HParam(64, int_log2(5, 7), "images per domain per step"),
        "weight_decay": HParam(0.0, lambda rng: float(10 ** rng.uniform(-6, -2)), "L2 penalty"),
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict[str, Any], steps: int):
        super().__init__()
        self.hp = dict(hparams)
        self.num_classes = num_classes
        self.steps = steps
        self.optims: dict[str, torch.optim.Optimizer] = {}
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)  # the trainer swaps in an enabled one for fp16

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # Helpers shared by the plugins -----------------------------------------------------------

    def progress(self, step: int) -> float:
        """Training progress p in [0, 1], as schedules in the papers write it."""
        return step / max(1, self.steps - 1)

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

    def step(self, loss: torch.Tensor, *optims: torch.optim.Optimizer) -> None:
        """zero_grad, backward, step: with loss scaling when the trainer runs in fp16."""
        for o in optims:
            o.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for o in optims:
            self.scaler.step(o)
        self.scaler.update()

    def labeled_sources(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Source images and labels, plus the labelled target samples when there are any."""
        if batch.tgt_labeled is None:
            return batch.src_x, batch.src_y
        return torch.cat([batch.src_x, batch.tgt_labeled.x]), torch.cat([batch.src_y, batch.tgt_labeled.y])


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with ReLU (and optional dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers)
