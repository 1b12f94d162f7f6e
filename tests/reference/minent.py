"""ADVENT's MinEnt training iteration: valeoai/ADVENT @3e58d45a (2020-02-24).

Transcribed from advent/domain_adaptation/train_UDA.py lines 218-289 (``train_minent``: SGD over
``optim_parameters``, the upsampling with align_corners=True, and the loop body: the source
segmentation loss main + 0.1 x aux, backward; the target's ``entropy_loss`` on the softmax of
both upsampled outputs, weighted LAMBDA_ENT_MAIN 0.001 and LAMBDA_ENT_AUX 0.0002, backward; one
SGD step; the loop runs EARLY_STOP iterations with the poly decay over MAX_ITERS). The config,
losses, schedule and optimiser groups are those of tests/reference/advent.py (config.py,
utils/func.py, utils/loss.py, model/deeplabv2.py), imported from there.

Left out: data loading, logging, snapshots, tensorboard, CUDA. The network is handed in (a module
returning (main, auxiliary) logits with ``encoder``, ``head`` and ``aux_head``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from reference.advent import TrainConfig, adjust, cross_entropy_2d, entropy_loss, segmentation_optimizer, upsample_to


class MinEntTrainer:
    """``train_minent`` from the optimiser on; ``step`` is one pass of its loop body."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.model, self.cfg = model, cfg
        model.train()
        self.optimizer = segmentation_optimizer(model, cfg)

    def adjust_learning_rates(self, i_iter):
        adjust(self.optimizer, i_iter, self.cfg, self.cfg.LEARNING_RATE)

    def step(self, i_iter, images_source, labels, images) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        self.optimizer.zero_grad()
        self.adjust_learning_rates(i_iter)

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

        # adversarial training with minent
        pred_trg_main, pred_trg_aux = model(images)
        pred_trg_aux = upsample_to(pred_trg_aux, images)
        pred_trg_main = upsample_to(pred_trg_main, images)
        pred_prob_trg_aux = F.softmax(pred_trg_aux, dim=1)
        pred_prob_trg_main = F.softmax(pred_trg_main, dim=1)
        loss_target_entp_aux = entropy_loss(pred_prob_trg_aux)
        loss_target_entp_main = entropy_loss(pred_prob_trg_main)
        loss = cfg.LAMBDA_ENT_AUX * loss_target_entp_aux + cfg.LAMBDA_ENT_MAIN * loss_target_entp_main
        loss.backward()
        self.optimizer.step()
        return {"loss_seg": loss_seg, "loss_ent_main": loss_target_entp_main.item(),
                "loss_ent_aux": loss_target_entp_aux.item()}
