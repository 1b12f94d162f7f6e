"""MDD as TLlib trains it: a transcription of one training iteration.

Repository: thuml/Transfer-Learning-Library, commit c4aa59eb565650a552b809411601d0589efbbfe4:
- tllib/alignment/mdd.py lines 13-85 (``MarginDisparityDiscrepancy.forward``), 88-152
  (``ClassificationMarginDisparityDiscrepancy``: the source and target disparities), 220-237
  (``shift_log``) and 239-283 (``GeneralModule``: backbone, bottleneck, head; the adversarial head
  behind the warm-start reversal; ``get_parameters``);
- tllib/modules/grl.py lines 12-81 (``GradientReverseFunction``, ``WarmStartGradientReverseLayer``
  with alpha 1, lo 0, hi 0.1, max_iters 1000, stepped by hand);
- examples/domain_adaptation/image_classification/mdd.py lines 70-81 (the classifier with its
  default finetune=True, SGD with Nesterov, LambdaLR with lr_gamma 0.0002) and 135-190 (``train``:
  one forward of source and target, chunked, cross-entropy minus trade-off x MDD, ``classifier.step()``
  after the forward, one SGD step, one scheduler step); mdd.sh's digit line (lr 0.01, -b 128).

Left out: data loading, meters, logging, CUDA. The backbone, bottleneck and heads are handed in
(standard layers: copies of the plugin's, initialised as TLlib's ``ImageClassifier`` does).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Function
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR


class GradientReverseFunction(Function):
    @staticmethod
    def forward(ctx, input, coeff=1.):
        ctx.coeff = coeff
        output = input * 1.0
        return output

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.neg() * ctx.coeff, None


class WarmStartGradientReverseLayer(nn.Module):
    def __init__(self, alpha=1.0, lo=0.0, hi=1., max_iters=1000., auto_step=False):
        super(WarmStartGradientReverseLayer, self).__init__()
        self.alpha, self.lo, self.hi = alpha, lo, hi
        self.iter_num = 0
        self.max_iters = max_iters
        self.auto_step = auto_step

    def forward(self, input):
        coeff = float(
            2.0 * (self.hi - self.lo) / (1.0 + np.exp(-self.alpha * self.iter_num / self.max_iters))
            - (self.hi - self.lo) + self.lo
        )
        if self.auto_step:
            self.step()
        return GradientReverseFunction.apply(input, coeff)

    def step(self):
        self.iter_num += 1


def shift_log(x, offset=1e-6):
    return torch.log(torch.clamp(x + offset, max=1.))


class ClassificationMarginDisparityDiscrepancy(nn.Module):
    def __init__(self, margin=4, reduction='mean'):
        super().__init__()
        self.margin, self.reduction = margin, reduction

    def source_disparity(self, y, y_adv):
        _, prediction = y.max(dim=1)
        return F.cross_entropy(y_adv, prediction, reduction='none')

    def target_disparity(self, y, y_adv):
        _, prediction = y.max(dim=1)
        return -F.nll_loss(shift_log(1. - F.softmax(y_adv, dim=1)), prediction, reduction='none')

    def forward(self, y_s, y_s_adv, y_t, y_t_adv):
        source_loss = -self.margin * self.source_disparity(y_s, y_s_adv)
        target_loss = self.target_disparity(y_t, y_t_adv)
        w_s = torch.ones_like(source_loss)
        source_loss = source_loss * w_s
        w_t = torch.ones_like(target_loss)
        target_loss = target_loss * w_t
        loss = source_loss + target_loss
        if self.reduction == 'mean':
            loss = loss.mean()
        return loss


class GeneralModule(nn.Module):
    def __init__(self, backbone, bottleneck, head, adv_head, finetune=True):
        super().__init__()
        self.backbone, self.bottleneck, self.head, self.adv_head, self.finetune = backbone, bottleneck, head, adv_head, finetune
        self.grl_layer = WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=0.1, max_iters=1000, auto_step=False)

    def forward(self, x):
        features = self.backbone(x)
        features = self.bottleneck(features)
        outputs = self.head(features)
        features_adv = self.grl_layer(features)
        outputs_adv = self.adv_head(features_adv)
        return outputs, outputs_adv

    def step(self):
        self.grl_layer.step()

    def get_parameters(self, base_lr=1.0):
        return [
            {"params": self.backbone.parameters(), "lr": 0.1 * base_lr if self.finetune else base_lr},
            {"params": self.bottleneck.parameters(), "lr": base_lr},
            {"params": self.head.parameters(), "lr": base_lr},
            {"params": self.adv_head.parameters(), "lr": base_lr},
        ]


class TLlibMDD:
    def __init__(self, backbone, bottleneck, head, adv_head, lr=0.01, lr_gamma=0.0002, lr_decay=0.75, momentum=0.9,
                 wd=0.0005, margin=4., trade_off=1.):
        self.classifier = GeneralModule(backbone, bottleneck, head, adv_head)
        self.mdd = ClassificationMarginDisparityDiscrepancy(margin)
        self.optimizer = SGD(self.classifier.get_parameters(), lr, momentum=momentum, weight_decay=wd, nesterov=True)
        self.lr_scheduler = LambdaLR(self.optimizer, lambda x: lr * (1. + lr_gamma * float(x)) ** (-lr_decay))
        self.trade_off = trade_off

    def step(self, x_s, labels_s, x_t):
        self.classifier.train()
        self.optimizer.zero_grad()
        x = torch.cat((x_s, x_t), dim=0)
        outputs, outputs_adv = self.classifier(x)
        y_s, y_t = outputs.chunk(2, dim=0)
        y_s_adv, y_t_adv = outputs_adv.chunk(2, dim=0)
        cls_loss = F.cross_entropy(y_s, labels_s)
        transfer_loss = -self.mdd(y_s, y_s_adv, y_t, y_t_adv)
        loss = cls_loss + transfer_loss * self.trade_off
        self.classifier.step()
        loss.backward()
        self.optimizer.step()
        self.lr_scheduler.step()
        return {"cls": cls_loss.item(), "mdd": -transfer_loss.item()}
