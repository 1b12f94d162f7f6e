"""SWAD (Cha et al., NeurIPS 2021): dense weight averaging over the valley of the source
validation loss, a training option for any algorithm (``--swad``).

As the authors' code (khanrc/swad, commit 252190e: domainbed/swad.py ``LossValley``,
domainbed/lib/swa_utils.py ``AveragedModel`` and ``update_bn``, domainbed/trainer.py lines 151-300,
config.yaml: n_converge 3, n_tolerance 6, tolerance_ratio 0.3):

- every training step's parameters enter a running mean, the *segment*; at each evaluation the
  segment is frozen with that evaluation's source-validation loss and a new one starts;
- the valley starts once the oldest of the last ``n_converge`` segments has the lowest loss among
  them: the threshold is (1 + ``tolerance_ratio``) x their mean loss, and the average starts from
  the segments before it back to the last one above the threshold;
- from then on, each segment enters the average once it is the oldest of the last
  ``n_tolerance`` and the smallest loss among those is below the threshold; the first time that
  minimum is above it, the valley is dead and the average is final; at the end of training the
  segments still waiting enter while their window's minimum stays below the threshold;
- the averaged model's batch-norm statistics (if it has any) are recomputed over 500 training
  batches, and it is what the run's final record and ``selected.pt`` hold.

The averaging arithmetic is the authors', quirks included: a new average's first update replaces
the segment it was started from, and a segment can enter it twice (once when the valley is found
and once more as the window passes it); the record lists the segments averaged, with repeats, so
the average can be checked against them. Departures: the source-validation loss is the
cross-entropy over dabench's pooled source-val split (the authors average per-domain losses);
dabench does not evaluate at step 0, so the first segment is the first ``eval_every`` steps (the
authors' is step 0 alone); a dead valley does not stop training (the authors stop: the average
is the same, the records of the raw model go on); buffers other than batch-norm statistics are the
raw model's at the end (they do not change a prediction).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

N_CONVERGE, N_TOLERANCE, TOLERANCE_RATIO = 3, 6, 0.3
BN_STEPS = 500  # the authors' update_bn over training batches when batch-norm is not frozen


@dataclass
class Average:
    """``swa_utils.AveragedModel``: a running mean of parameters, the steps it spans, the segments
    (start, end) that entered it, and (for a frozen segment) its source-validation loss."""

    params: list[torch.Tensor] | None = None
    n: int = 0
    start: int = -1
    end: int = -1
    loss: float | None = None
    parts: list[list[int]] = field(default_factory=list)

    def add(self, params: list[torch.Tensor], start: int | None = None, end: int | None = None,
            part: list[int] | None = None) -> None:
        if self.n == 0 or self.params is None:
            self.params = [p.detach().clone() for p in params]
            self.parts = []
        else:
            for mine, theirs in zip(self.params, params):
                mine.copy_(mine + (theirs.detach() - mine) / (self.n + 1))
        self.n += 1
        if start is not None and self.n == 1:
            self.start = start
        if end is not None:
            self.end = end
        if part is not None:
            self.parts.append(part)

    def restarted(self) -> "Average":
        """``AveragedModel(segment)``: its parameters, none averaged yet."""
        return Average([p.clone() for p in self.params], 0, -1, -1, None, [])

    def state(self) -> dict[str, Any]:
        return {"params": self.params, "n": self.n, "start": self.start, "end": self.end, "loss": self.loss,
                "parts": self.parts}

    @classmethod
    def of(cls, state: dict[str, Any]) -> "Average":
        return cls(state["params"], int(state["n"]), int(state["start"]), int(state["end"]), state["loss"],
                   [list(map(int, p)) for p in state["parts"]])


class LossValley:
    """The authors' ``LossValley`` on ``Average``s; ``observe`` after every step, ``evaluated``
    at every evaluation, ``final`` at the end."""

    def __init__(self, n_converge: int = N_CONVERGE, n_tolerance: int = N_TOLERANCE,
                 tolerance_ratio: float = TOLERANCE_RATIO):
        self.n_converge, self.n_tolerance, self.tolerance_ratio = n_converge, n_tolerance, tolerance_ratio
        self.segment = Average()
        self.history: list[Average] = []  # the last max(n_converge, n_tolerance) frozen segments
        self.final_model: Average | None = None
        self.converge_step: int | None = None
        self.dead_valley = False
        self.threshold: float | None = None

    @property
    def converge_q(self) -> list[Average]:
        return self.history[-self.n_converge:]

    @property
    def smooth_q(self) -> list[Average]:
        return self.history[-self.n_tolerance:]

    def observe(self, params: list[torch.Tensor], step: int) -> None:
        self.segment.add(params, start=step, end=step)

    def _enter(self, segment: Average) -> None:
        self.final_model.add(segment.params, start=segment.start, end=segment.end, part=[segment.start, segment.end])

    def evaluated(self, loss: float) -> None:
        frozen, self.segment = self.segment, Average()
        if self.dead_valley:
            return
        frozen.loss = float(loss)
        self.history = (self.history + [frozen])[-max(self.n_converge, self.n_tolerance):]
        if self.converge_step is None:
            queue = self.converge_q
            if len(queue) < self.n_converge:
                return
            losses = [s.loss for s in queue]
            min_idx = min(range(len(losses)), key=losses.__getitem__)  # np.argmin: the first minimum
            if min_idx == 0:
                until_min = queue[0]
                self.converge_step = until_min.end
                self.final_model = until_min.restarted()
                self.final_model.parts = [[until_min.start, until_min.end]]
                self.threshold = sum(losses) / len(losses) * (1.0 + self.tolerance_ratio)
                if self.n_tolerance < self.n_converge:
                    for i in range(self.n_converge - self.n_tolerance):
                        self._enter(queue[1 + i])
                elif self.n_tolerance > self.n_converge:
                    window = self.smooth_q[:self.n_tolerance - self.n_converge + 1]
                    start_idx = 0
                    for i in reversed(range(len(window))):
                        if window[i].loss > self.threshold:
                            start_idx = i + 1
                            break
                    for segment in window[start_idx + 1:]:
                        self._enter(segment)
            return
        smooth = self.smooth_q
        if smooth[0].end < self.converge_step:
            return
        if min(s.loss for s in smooth) > self.threshold:
            self.dead_valley = True
            return
        self._enter(smooth[0])

    def final(self) -> tuple[Average, bool]:
        """The averaged model, and whether the valley was found (if not, the authors return the last
        segment)."""
        if self.converge_step is None:
            last = self.converge_q[-1] if self.history else self.segment
            return Average(last.params, last.n, last.start, last.end, last.loss, [[last.start, last.end]]), False
        model = Average.of(copy.deepcopy(self.final_model.state()))  # final() changes nothing it keeps
        if not self.dead_valley:
            waiting = list(self.smooth_q)[1:]
            while waiting:
                if min(s.loss for s in waiting) > self.threshold:
                    break
                segment = waiting.pop(0)
                model.add(segment.params, start=segment.end, end=segment.end, part=[segment.start, segment.end])
        return model, True

    def state_dict(self) -> dict[str, Any]:
        return {"segment": self.segment.state(), "history": [s.state() for s in self.history],
                "final": self.final_model.state() if self.final_model is not None else None,
                "converge_step": self.converge_step, "dead_valley": self.dead_valley, "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.segment = Average.of(state["segment"])
        self.history = [Average.of(s) for s in state["history"]]
        self.final_model = Average.of(state["final"]) if state["final"] is not None else None
        self.converge_step, self.dead_valley, self.threshold = state["converge_step"], state["dead_valley"], state["threshold"]


def parameters(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters()]


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@torch.no_grad()
def recompute_batch_norm(module: nn.Module, batches) -> None:
    """``swa_utils.update_bn``: running statistics reset and re-estimated as a plain mean
    (momentum None) over the given training batches, the network in training mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = {}
    for m in norms:
        m.running_mean = torch.zeros_like(m.running_mean)
        m.running_var = torch.ones_like(m.running_var)
        momenta[m] = m.momentum
        m.momentum = None
        m.num_batches_tracked *= 0
    was_training = module.training
    module.train()
    for x in batches:
        module.predict(x)
    for m, momentum in momenta.items():
        m.momentum = momentum
    module.train(was_training)
