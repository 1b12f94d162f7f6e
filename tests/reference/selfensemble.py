"""Self-ensembling: a transcription of its authors' training step.

Repository: Britefury/self-ensemble-visual-domain-adapt, commit a9808a1:
experiment_domainadapt_meanteacher.py lines 250-305 (``compute_aug_loss`` with the default options:
loss 'var', no ramp-up, confidence threshold 0.96837722, no class-balance scaling, class balance
0.005 with 'bce') and lines 358-397 (``f_train`` without --combine_batches: the student on the
augmented source and one target view, the teacher on the other, cross-entropy + unsup_weight (3) x
the loss, one Adam step, one EMA step); lines 199-211 (the teacher's parameters untrained, Adam at
1e-3, ``OldWeightEMA`` with alpha 0.99); optim_weight_ema.py lines 4-20 (``OldWeightEMA``);
network_architectures.py lines 472-475 (``robust_binary_crossentropy``).

Left out: the augmentation (the views are handed in; the parity test makes them with the plugin's
own augmentation under one random state), the ramp-up and combined-batch branches, logging.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def robust_binary_crossentropy(pred, tgt):
    inv_tgt = -tgt + 1.0
    inv_pred = -pred + 1.0 + 1e-6
    return -(tgt * torch.log(pred + 1.0e-6) + inv_tgt * torch.log(inv_pred))


class OldWeightEMA(object):
    def __init__(self, target_net, source_net, alpha=0.999):
        self.target_params = list(target_net.parameters())
        self.source_params = list(source_net.parameters())
        self.alpha = alpha
        for p, src_p in zip(self.target_params, self.source_params):
            p.data[:] = src_p.data[:]

    def step(self):
        one_minus_alpha = 1.0 - self.alpha
        for p, src_p in zip(self.target_params, self.source_params):
            p.data.mul_(self.alpha)
            p.data.add_(src_p.data * one_minus_alpha)


class Trainer:
    def __init__(self, student_net, teacher_net, n_classes, learning_rate=0.001, teacher_alpha=0.99,
                 confidence_thresh=0.96837722, unsup_weight=3.0, cls_balance=0.005):
        self.student_net, self.teacher_net, self.n_classes = student_net, teacher_net, n_classes
        for param in teacher_net.parameters():
            param.requires_grad = False
        self.student_optimizer = torch.optim.Adam(list(student_net.parameters()), lr=learning_rate)
        self.teacher_optimizer = OldWeightEMA(teacher_net, student_net, alpha=teacher_alpha)
        self.classification_criterion = torch.nn.CrossEntropyLoss()
        self.confidence_thresh, self.unsup_weight, self.cls_balance = confidence_thresh, unsup_weight, cls_balance

    def compute_aug_loss(self, stu_out, tea_out):
        conf_tea = torch.max(tea_out, 1)[0]
        unsup_mask = conf_mask = (conf_tea > self.confidence_thresh).float()
        unsup_mask_count = conf_mask_count = conf_mask.sum()
        d_aug_loss = stu_out - tea_out
        aug_loss = d_aug_loss * d_aug_loss
        aug_loss = aug_loss.mean(dim=1)
        unsup_loss = (aug_loss * unsup_mask).mean()
        if self.cls_balance > 0.0:
            avg_cls_prob = stu_out.mean(dim=0)
            equalise_cls_loss = robust_binary_crossentropy(avg_cls_prob, float(1.0 / self.n_classes))
            equalise_cls_loss = equalise_cls_loss.mean() * self.n_classes
            equalise_cls_loss = equalise_cls_loss * unsup_mask.mean(dim=0)
            unsup_loss += equalise_cls_loss * self.cls_balance
        return unsup_loss, conf_mask_count, unsup_mask_count

    def f_train(self, X_src, y_src, X_tgt0, X_tgt1):
        self.student_optimizer.zero_grad()
        self.student_net.train()
        self.teacher_net.train()
        src_logits_out = self.student_net(X_src)
        student_tgt_logits_out = self.student_net(X_tgt0)
        student_tgt_prob_out = F.softmax(student_tgt_logits_out, dim=1)
        teacher_tgt_logits_out = self.teacher_net(X_tgt1)
        teacher_tgt_prob_out = F.softmax(teacher_tgt_logits_out, dim=1)
        clf_loss = self.classification_criterion(src_logits_out, y_src)
        unsup_loss, conf_mask_count, unsup_mask_count = self.compute_aug_loss(student_tgt_prob_out, teacher_tgt_prob_out)
        loss_expr = clf_loss + unsup_loss * self.unsup_weight
        loss_expr.backward()
        self.student_optimizer.step()
        self.teacher_optimizer.step()
        return {"clf": clf_loss.item(), "unsup": unsup_loss.item(), "conf": float(conf_mask_count) / len(X_tgt0)}
