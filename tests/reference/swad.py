"""SWAD: a transcription of its authors' loss-valley averaging.

Repository: khanrc/swad, commit 252190e: domainbed/swad.py lines 48-162 (``LossValley``);
domainbed/lib/swa_utils.py lines 9-80 (``AveragedModel``: the running mean of parameters,
``update_parameters``); domainbed/trainer.py lines 151-257 (a segment ``AveragedModel`` updated
after every step, handed to ``update_and_evaluate`` at each evaluation with its source-validation
loss, then restarted) and 288-289 (``get_final_model``); config.yaml (n_converge 3, n_tolerance 6,
tolerance_ratio 0.3).

Left out: the evaluator and printing (``update_and_evaluate`` takes the loss; the accuracy it is
handed is unused by ``LossValley``), ``.cpu()`` / ``.cuda()`` (CPU here), the optimizer removal
(``rm_optimizer``), the batch-norm update (the networks compared have none).
"""
from __future__ import annotations

import copy
from collections import deque

import numpy as np
import torch
from torch.nn import Module


class AveragedModel(Module):
    def __init__(self, model, device=None, avg_fn=None):
        super(AveragedModel, self).__init__()
        self.start_step = -1
        self.end_step = -1
        if isinstance(model, AveragedModel):
            # prevent nested averagedmodel
            model = model.module
        self.module = copy.deepcopy(model)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))

        if avg_fn is None:
            def avg_fn(averaged_model_parameter, model_parameter, num_averaged):
                return averaged_model_parameter + (model_parameter - averaged_model_parameter) / (num_averaged + 1)

        self.avg_fn = avg_fn

    def update_parameters(self, model, step=None, start_step=None, end_step=None):
        if isinstance(model, AveragedModel):
            model = model.module
        for p_swa, p_model in zip(self.parameters(), model.parameters()):
            device = p_swa.device
            p_model_ = p_model.detach().to(device)
            if self.n_averaged == 0:
                p_swa.detach().copy_(p_model_)
            else:
                p_swa.detach().copy_(self.avg_fn(p_swa.detach(), p_model_, self.n_averaged.to(device)))
        self.n_averaged += 1

        if step is not None:
            if start_step is None:
                start_step = step
            if end_step is None:
                end_step = step

        if start_step is not None:
            if self.n_averaged == 1:
                self.start_step = start_step

        if end_step is not None:
            self.end_step = end_step


class LossValley:
    def __init__(self, n_converge=3, n_tolerance=6, tolerance_ratio=0.3):
        self.n_converge = n_converge
        self.n_tolerance = n_tolerance
        self.tolerance_ratio = tolerance_ratio

        self.converge_Q = deque(maxlen=n_converge)
        self.smooth_Q = deque(maxlen=n_tolerance)

        self.final_model = None

        self.converge_step = None
        self.dead_valley = False
        self.threshold = None

    def get_smooth_loss(self, idx):
        smooth_loss = min([model.end_loss for model in list(self.smooth_Q)[idx:]])
        return smooth_loss

    @property
    def is_converged(self):
        return self.converge_step is not None

    def update_and_evaluate(self, segment_swa, val_acc, val_loss):
        if self.dead_valley:
            return

        frozen = copy.deepcopy(segment_swa)
        frozen.end_loss = val_loss
        self.converge_Q.append(frozen)
        self.smooth_Q.append(frozen)

        if not self.is_converged:
            if len(self.converge_Q) < self.n_converge:
                return

            min_idx = np.argmin([model.end_loss for model in self.converge_Q])
            untilmin_segment_swa = self.converge_Q[min_idx]  # until-min segment swa.
            if min_idx == 0:
                self.converge_step = self.converge_Q[0].end_step
                self.final_model = AveragedModel(untilmin_segment_swa)

                th_base = np.mean([model.end_loss for model in self.converge_Q])
                self.threshold = th_base * (1.0 + self.tolerance_ratio)

                if self.n_tolerance < self.n_converge:
                    for i in range(self.n_converge - self.n_tolerance):
                        model = self.converge_Q[1 + i]
                        self.final_model.update_parameters(model, start_step=model.start_step, end_step=model.end_step)
                elif self.n_tolerance > self.n_converge:
                    converge_idx = self.n_tolerance - self.n_converge
                    Q = list(self.smooth_Q)[: converge_idx + 1]
                    start_idx = 0
                    for i in reversed(range(len(Q))):
                        model = Q[i]
                        if model.end_loss > self.threshold:
                            start_idx = i + 1
                            break
                    for model in Q[start_idx + 1:]:
                        self.final_model.update_parameters(model, start_step=model.start_step, end_step=model.end_step)
            return

        if self.smooth_Q[0].end_step < self.converge_step:
            return

        # converged -> loss valley
        min_vloss = self.get_smooth_loss(0)
        if min_vloss > self.threshold:
            self.dead_valley = True
            return

        model = self.smooth_Q[0]
        self.final_model.update_parameters(model, start_step=model.start_step, end_step=model.end_step)

    def get_final_model(self):
        if not self.is_converged:
            return self.converge_Q[-1]

        if not self.dead_valley:
            self.smooth_Q.popleft()
            while self.smooth_Q:
                smooth_loss = self.get_smooth_loss(0)
                if smooth_loss > self.threshold:
                    break
                segment_swa = self.smooth_Q.popleft()
                self.final_model.update_parameters(segment_swa, step=segment_swa.end_step)

        return self.final_model


def train(model: Module, weights: list[list[torch.Tensor]], eval_every: int, losses: list[float]):
    """The trainer's loop around them: step i's weights (i = 1..len(weights)) loaded into ``model``
    and added to the segment; at every ``eval_every``-th step and the last, the segment handed over
    with the next of ``losses``, then restarted. Returns the final model."""
    swad = LossValley()
    segment_swa = AveragedModel(model)
    evaluations = iter(losses)
    for i, params in enumerate(weights, start=1):
        with torch.no_grad():
            for p, w in zip(model.parameters(), params):
                p.copy_(w)
        segment_swa.update_parameters(model, step=i)
        if i % eval_every == 0 or i == len(weights):
            swad.update_and_evaluate(segment_swa, None, next(evaluations))
            segment_swa = AveragedModel(model)
    return swad.get_final_model()
