"""ADVENT's AdvEnt training iteration: valeoai/ADVENT @3e58d45a (2020-02-24).

Transcribed from
- advent/domain_adaptation/config.py lines 57-77 (MULTI_LEVEL True, SGD 2.5e-4, momentum 0.9,
  weight decay 5e-4, power 0.9, LAMBDA_SEG_MAIN 1.0, LAMBDA_SEG_AUX 0.1, LEARNING_RATE_D 1e-4,
  LAMBDA_ADV_MAIN 0.001, LAMBDA_ADV_AUX 0.0002, LAMBDA_ENT_MAIN 0.001, LAMBDA_ENT_AUX 0.0002,
  MAX_ITERS 250000, EARLY_STOP 120000); advent/scripts/configs/advent.yml and minent.yml change
  none of these;
- advent/domain_adaptation/train_UDA.py lines 30-170 (``train_advent``: the optimisers, the
  upsampling with align_corners=True, source label 0 and target label 1, and the loop body: the
  discriminators frozen, the source segmentation loss, the target adversarial loss on
  ``prob_2_entropy(softmax)`` against the source label, the discriminators unfrozen and trained
  on the detached source and target maps, each loss halved, then the optimisers step);
- advent/utils/func.py lines 8-52 (``bce_loss``, ``lr_poly``, ``_adjust_learning_rate`` with the
  second group at 10x, ``prob_2_entropy``);
- advent/utils/loss.py lines 7-38 (``cross_entropy_2d``, ``entropy_loss``);
- advent/model/discriminator.py (``get_fc_discriminator``);
- advent/model/deeplabv2.py lines 115-171 (``forward`` returns (layer5 on layer3, layer6 on layer4);
  ``optim_parameters``: the backbone at 1x, layer5 and layer6 at 10x).

Left out: data loading, logging, snapshots, tensorboard, CUDA. The network is handed in (a module
returning (main, auxiliary) logits with ``encoder``, ``head`` and ``aux_head``). As in
tests/reference/adaptsegnet.py, ``get_1x_lr_params_no_scale`` walks ``modules()`` and lists a
backbone parameter once per module containing it; here it is listed once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TrainConfig:
    MULTI_LEVEL: bool = True
    LEARNING_RATE: float = 2.5e-4
    MOMENTUM: float = 0.9
    WEIGHT_DECAY: float = 0.0005
    POWER: float = 0.9
    LAMBDA_SEG_MAIN: float = 1.0
    LAMBDA_SEG_AUX: float = 0.1
    LEARNING_RATE_D: float = 1e-4
    LAMBDA_ADV_MAIN: float = 0.001
    LAMBDA_ADV_AUX: float = 0.0002
    LAMBDA_ENT_MAIN: float = 0.001
    LAMBDA_ENT_AUX: float = 0.0002
    MAX_ITERS: int = 250000
    EARLY_STOP: int = 120000


def get_fc_discriminator(num_classes, ndf=64):
    return nn.Sequential(
        nn.Conv2d(num_classes, ndf, kernel_size=4, stride=2, padding=1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, kernel_size=4, stride=2, padding=1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, kernel_size=4, stride=2, padding=1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, kernel_size=4, stride=2, padding=1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=2, padding=1),
    )


def bce_loss(y_pred, y_label):
    y_truth_tensor = torch.FloatTensor(y_pred.size())
    y_truth_tensor.fill_(y_label)
    return nn.BCEWithLogitsLoss()(y_pred, y_truth_tensor)


def cross_entropy_2d(predict, target):
    n, c, h, w = predict.size()
    target_mask = (target >= 0) * (target != 255)
    target = target[target_mask]
    if not target.data.dim():
        return torch.zeros(1)
    predict = predict.transpose(1, 2).transpose(2, 3).contiguous()
    predict = predict[target_mask.view(n, h, w, 1).repeat(1, 1, 1, c)].view(-1, c)
    return F.cross_entropy(predict, target)


def entropy_loss(v):
    n, c, h, w = v.size()
    return -torch.sum(torch.mul(v, torch.log2(v + 1e-30))) / (n * h * w * np.log2(c))


def prob_2_entropy(prob):
    n, c, h, w = prob.size()
    return -torch.mul(prob, torch.log2(prob + 1e-30)) / np.log2(c)


def lr_poly(base_lr, iter, max_iter, power):
    return base_lr * ((1 - float(iter) / max_iter) ** power)


def adjust(optimizer, i_iter, cfg: TrainConfig, learning_rate):
    lr = lr_poly(learning_rate, i_iter, cfg.MAX_ITERS, cfg.POWER)
    optimizer.param_groups[0]["lr"] = lr
    if len(optimizer.param_groups) > 1:
        optimizer.param_groups[1]["lr"] = lr * 10


def optim_parameters(model, lr, multi_level=True):
    backbone = [p for p in model.encoder.parameters() if p.requires_grad]
    heads = ([p for p in model.aux_head.parameters()] if multi_level else []) + list(model.head.parameters())
    return [{"params": backbone, "lr": lr}, {"params": heads, "lr": 10 * lr}]


def segmentation_optimizer(model, cfg: TrainConfig):
    return torch.optim.SGD(optim_parameters(model, cfg.LEARNING_RATE, cfg.MULTI_LEVEL), lr=cfg.LEARNING_RATE,
                           momentum=cfg.MOMENTUM, weight_decay=cfg.WEIGHT_DECAY)


def upsample_to(x, images):
    return F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=True)


class AdvEntTrainer:
    """``train_advent`` from the optimisers on; ``step`` is one pass of its loop body."""

    def __init__(self, model: nn.Module, d_aux: nn.Sequential, d_main: nn.Sequential, cfg: TrainConfig):
        self.model, self.d_aux, self.d_main, self.cfg = model, d_aux, d_main, cfg
        model.train()
        d_aux.train()
        d_main.train()
        self.optimizer = segmentation_optimizer(model, cfg)
        self.optimizer_d_aux = torch.optim.Adam(d_aux.parameters(), lr=cfg.LEARNING_RATE_D, betas=(0.9, 0.99))
        self.optimizer_d_main = torch.optim.Adam(d_main.parameters(), lr=cfg.LEARNING_RATE_D, betas=(0.9, 0.99))
        self.source_label, self.target_label = 0, 1

    def adjust_learning_rates(self, i_iter):
        adjust(self.optimizer, i_iter, self.cfg, self.cfg.LEARNING_RATE)
        adjust(self.optimizer_d_aux, i_iter, self.cfg, self.cfg.LEARNING_RATE_D)
        adjust(self.optimizer_d_main, i_iter, self.cfg, self.cfg.LEARNING_RATE_D)

    def step(self, i_iter, images_source, labels, images) -> dict[str, float]:
        cfg, model, d_aux, d_main = self.cfg, self.model, self.d_aux, self.d_main
        self.optimizer.zero_grad()
        self.optimizer_d_aux.zero_grad()
        self.optimizer_d_main.zero_grad()
        self.adjust_learning_rates(i_iter)

        # only train segnet. Don't accumulate grads in disciminators
        for param in d_aux.parameters():
            param.requires_grad = False
        for param in d_main.parameters():
            param.requires_grad = False
        # train on source
        pred_src_main, pred_src_aux = model(images_source)  # theirs returns (aux, main)
        if cfg.MULTI_LEVEL:
            pred_src_aux = upsample_to(pred_src_aux, images_source)
            loss_seg_src_aux = cross_entropy_2d(pred_src_aux, labels)
        else:
            loss_seg_src_aux = 0
        pred_src_main = upsample_to(pred_src_main, images_source)
        loss_seg_src_main = cross_entropy_2d(pred_src_main, labels)
        loss = cfg.LAMBDA_SEG_MAIN * loss_seg_src_main + cfg.LAMBDA_SEG_AUX * loss_seg_src_aux
        loss.backward()
        loss_seg = loss.item()

        # adversarial training ot fool the discriminator
        pred_trg_main, pred_trg_aux = model(images)
        if cfg.MULTI_LEVEL:
            pred_trg_aux = upsample_to(pred_trg_aux, images)
            d_out_aux = d_aux(prob_2_entropy(F.softmax(pred_trg_aux, dim=1)))
            loss_adv_trg_aux = bce_loss(d_out_aux, self.source_label)
        else:
            loss_adv_trg_aux = 0
        pred_trg_main = upsample_to(pred_trg_main, images)
        d_out_main = d_main(prob_2_entropy(F.softmax(pred_trg_main, dim=1)))
        loss_adv_trg_main = bce_loss(d_out_main, self.source_label)
        loss = cfg.LAMBDA_ADV_MAIN * loss_adv_trg_main + cfg.LAMBDA_ADV_AUX * loss_adv_trg_aux
        loss.backward()
        loss_adv = loss.item()

        # Train discriminator networks
        for param in d_aux.parameters():
            param.requires_grad = True
        for param in d_main.parameters():
            param.requires_grad = True
        loss_d = 0.0
        # train with source
        if cfg.MULTI_LEVEL:
            pred_src_aux = pred_src_aux.detach()
            d_out_aux = d_aux(prob_2_entropy(F.softmax(pred_src_aux, dim=1)))
            loss_d_aux = bce_loss(d_out_aux, self.source_label) / 2
            loss_d_aux.backward()
            loss_d += loss_d_aux.item()
        pred_src_main = pred_src_main.detach()
        d_out_main = d_main(prob_2_entropy(F.softmax(pred_src_main, dim=1)))
        loss_d_main = bce_loss(d_out_main, self.source_label) / 2
        loss_d_main.backward()
        loss_d += loss_d_main.item()

        # train with target
        if cfg.MULTI_LEVEL:
            pred_trg_aux = pred_trg_aux.detach()
            d_out_aux = d_aux(prob_2_entropy(F.softmax(pred_trg_aux, dim=1)))
            loss_d_aux = bce_loss(d_out_aux, self.target_label) / 2
            loss_d_aux.backward()
            loss_d += loss_d_aux.item()
        pred_trg_main = pred_trg_main.detach()
        d_out_main = d_main(prob_2_entropy(F.softmax(pred_trg_main, dim=1)))
        loss_d_main = bce_loss(d_out_main, self.target_label) / 2
        loss_d_main.backward()
        loss_d += loss_d_main.item()

        self.optimizer.step()
        if cfg.MULTI_LEVEL:
            self.optimizer_d_aux.step()
        self.optimizer_d_main.step()
        return {"loss_seg": loss_seg, "loss_adv": loss_adv, "loss_d": loss_d}
