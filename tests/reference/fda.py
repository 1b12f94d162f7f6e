"""FDA's training iteration (single beta): YanchaoYang/FDA @b9a0cdf0 (2020-07-01).

Transcribed from
- train.py lines 61-105 (the loop body: ``adjust_learning_rate``, ``FDA_source_to_target`` on the
  raw pixels, then the mean subtracted from both images, the source forward with its
  segmentation loss, the target forward with its robust entropy, ``triger_ent`` 1 only where
  ``i > switch2entropy``, loss = seg + triger x entW x entropy, one SGD step) and lines 129-131
  (the stop once i + 1 > num_steps_stop at a print boundary);
- options/train_options.py (the defaults: LB 0.1, entW 0.005, ita 2.0, switch2entropy 50000,
  num_steps 150000, num_steps_stop 100000, SGD 2.5e-4, momentum 0.9, weight decay 5e-4, power 0.9);
  the README's command uses LB 0.01 and switch2entropy 0;
- utils/__init__.py lines 4-62 (``extract_ampl_phase``, ``low_freq_mutate``, ``FDA_source_to_target``
  with ``torch.rfft``/``torch.irfft(onesided=False)``, written with ``torch.fft``: the full spectrum,
  and for the inverse the first W // 2 + 1 columns through a complex-to-real transform, which is
  what the old irfft did with a two-sided input: it narrowed it to the one-sided half);
- model/deeplab.py lines 156-241 (``forward`` in the train phase: the robust entropy on the
  logits before upsampling, divided by 2.9444 = ln 19, (ent^2 + 1e-8)^ita, mean; then the logits
  upsampled with align_corners=True and ``CrossEntropy2d`` on them; ``adjust_learning_rate``,
  ``optim_parameters``: the backbone at 1x, the classifier layer5 at 10x).

Left out: data loading, logging, snapshots, CUDA, the target's segmentation loss (computed for
logging only, never backpropagated), the source's entropy (unused). The network is handed in
(a module returning (main, auxiliary) logits with ``encoder`` and ``head``; the single-output
DeepLab is its main output). The entropy divides by ln C (their 2.9444 is ln 19 to four places).
Images come as the network takes them, in [-1, 1]: ``(x + 1) * 127.5`` are the raw pixels the
authors' loader gives, and ``p / 127.5 - 1`` stands in for their mean subtraction. As in
tests/reference/adaptsegnet.py, ``get_1x_lr_params_NOscale`` lists a backbone parameter once per
module containing it; here it is listed once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Args:
    LB: float = 0.1
    entW: float = 0.005
    ita: float = 2.0
    switch2entropy: int = 50000
    num_steps: int = 150000
    num_steps_stop: int = 100000
    learning_rate: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 0.0005
    power: float = 0.9


def extract_ampl_phase(fft_im):
    fft_amp = fft_im.real ** 2 + fft_im.imag ** 2
    fft_amp = torch.sqrt(fft_amp)
    fft_pha = torch.atan2(fft_im.imag, fft_im.real)
    return fft_amp, fft_pha


def low_freq_mutate(amp_src, amp_trg, L=0.1):
    _, _, h, w = amp_src.size()
    b = (np.floor(np.amin((h, w)) * L)).astype(int)
    amp_src[:, :, 0:b, 0:b] = amp_trg[:, :, 0:b, 0:b]
    amp_src[:, :, 0:b, w - b:w] = amp_trg[:, :, 0:b, w - b:w]
    amp_src[:, :, h - b:h, 0:b] = amp_trg[:, :, h - b:h, 0:b]
    amp_src[:, :, h - b:h, w - b:w] = amp_trg[:, :, h - b:h, w - b:w]
    return amp_src


def FDA_source_to_target(src_img, trg_img, L=0.1):
    fft_src = torch.fft.fft2(src_img.clone())  # torch.rfft(..., signal_ndim=2, onesided=False)
    fft_trg = torch.fft.fft2(trg_img.clone())
    amp_src, pha_src = extract_ampl_phase(fft_src.clone())
    amp_trg, pha_trg = extract_ampl_phase(fft_trg.clone())
    amp_src_ = low_freq_mutate(amp_src.clone(), amp_trg.clone(), L=L)
    fft_src_ = torch.complex(torch.cos(pha_src.clone()) * amp_src_.clone(), torch.sin(pha_src.clone()) * amp_src_.clone())
    _, _, imgH, imgW = src_img.size()
    # torch.irfft(fft_src_, signal_ndim=2, onesided=False, signal_sizes=[imgH, imgW])
    return torch.fft.irfft2(fft_src_[..., : imgW // 2 + 1], s=(imgH, imgW))


def robust_entropy(x, ita):
    P = F.softmax(x, dim=1)
    logP = F.log_softmax(x, dim=1)
    PlogP = P * logP
    ent = -1.0 * PlogP.sum(dim=1)
    ent = ent / math.log(x.shape[1])  # theirs: / 2.9444, "change when classes is not 19"
    ent = ent ** 2.0 + 1e-8
    ent = ent ** ita
    return ent.mean()


def cross_entropy_2d(predict, target):
    n, c, h, w = predict.size()
    target_mask = (target >= 0) * (target != 255)
    target = target[target_mask]
    if not target.data.dim():
        return torch.zeros(1)
    predict = predict.transpose(1, 2).transpose(2, 3).contiguous()
    predict = predict[target_mask.view(n, h, w, 1).repeat(1, 1, 1, c)].view(-1, c)
    return F.cross_entropy(predict, target)


def optim_parameters(model, args: Args):
    backbone = [p for p in model.encoder.parameters() if p.requires_grad]
    return [{"params": backbone, "lr": args.learning_rate},
            {"params": list(model.head.parameters()), "lr": 10 * args.learning_rate}]


def pixels(x):
    """The raw 0-255 pixels the authors' loader yields for an image the network takes in [-1, 1]."""
    return (x + 1) * 127.5


def subtract_mean(p):
    """Stands in for ``img - IMG_MEAN``: the network here takes images in [-1, 1]."""
    return p / 127.5 - 1


class Trainer:
    """train.py's ``main`` from ``CreateModel`` on; ``step`` is one pass of its loop body."""

    def __init__(self, model: nn.Module, args: Args):
        self.model, self.args = model, args
        self.optimizer = torch.optim.SGD(optim_parameters(model, args), lr=args.learning_rate, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        model.train()

    def adjust_learning_rate(self, i):
        lr = self.args.learning_rate * ((1 - float(i) / self.args.num_steps) ** (self.args.power))
        self.optimizer.param_groups[0]["lr"] = lr
        if len(self.optimizer.param_groups) > 1:
            self.optimizer.param_groups[1]["lr"] = lr * 10

    def triger_ent(self, i) -> float:
        return 1.0 if i > self.args.switch2entropy else 0.0

    def stops_after(self, i) -> bool:
        """Whether the loop breaks after iteration i (a print boundary past num_steps_stop)."""
        return (i + 1) % 100 == 0 and i + 1 > self.args.num_steps_stop

    def forward(self, img, lbl=None):
        """model/deeplab.py's train-phase forward: (the robust entropy, the segmentation loss)."""
        _, _, h, w = img.size()
        x = self.model(img)[0]
        loss_ent = robust_entropy(x, self.args.ita)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        loss_seg = cross_entropy_2d(x, lbl) if lbl is not None else None
        return loss_seg, loss_ent

    def step(self, i, src_x, src_lbl, trg_x) -> dict[str, float]:
        args = self.args
        self.adjust_learning_rate(i)
        self.optimizer.zero_grad()
        src_img, trg_img = pixels(src_x), pixels(trg_x)

        src_in_trg = FDA_source_to_target(src_img, trg_img, L=args.LB)
        trg_in_trg = trg_img
        src_img = subtract_mean(src_in_trg.clone())
        trg_img = subtract_mean(trg_in_trg.clone())

        loss_seg_src, _ = self.forward(src_img, src_lbl)
        _, loss_ent_trg = self.forward(trg_img)
        triger_ent = self.triger_ent(i)
        loss_all = loss_seg_src + triger_ent * args.entW * loss_ent_trg
        loss_all.backward()
        self.optimizer.step()
        return {"loss_seg_src": loss_seg_src.item(), "loss_ent_trg": loss_ent_trg.item(), "triger_ent": triger_ent}
