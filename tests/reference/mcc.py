"""MCC as its authors train it, in its two published settings.

- ImageNet setting, the authors' code: thuml/Versatile-Domain-Adaptation @db5012a0 (2020-08-02),
  pytorch/train_image_office.py lines 159-183 (one iteration: the inv rate, source and target
  through the network separately, the temperature-scaled target softmax, the entropy weights
  1 + exp(-H) scaled to sum to the batch size, the weighted confusion matrix divided by
  ``torch.sum(cov, dim=1)``, the off-diagonal sum over the classes, added to the source
  cross-entropy with weight 1) and lines 242-244 (SGD lr, momentum 0.9, weight decay 5e-4,
  Nesterov, "inv" with gamma 0.001, power 0.75); pytorch/lr_schedule.py (``inv_lr_scheduler``:
  lr (1 + gamma i) ** -power x each group's lr_mult, weight decay x decay_mult);
  pytorch/network.py lines 163-169 (new layers lr_mult 10, every group decay_mult 2);
  pytorch/loss.py line 8 (``Entropy``, eps 1e-5).
- Digit setting: TLlib, thuml/Transfer-Learning-Library @c4aa59eb (2024-03-23),
  examples/domain_adaptation/image_classification/mcc.py lines 71-79 (SGD on
  ``get_parameters()`` with Nesterov, LambdaLR lr (1 + 0.001 i) ** -0.75) and 155-184 (one joint
  forward of source and target, ``chunk(2)``, cross-entropy + trade-off x MCC; the scheduler
  steps after the optimiser), mcc.sh line 78 (MNIST -> USPS: lenet, --scratch, lr 0.01, -b 128),
  tllib/modules/classifier.py lines 88-98 (every group at 1x when training from scratch),
  tllib/self_training/mcc.py lines 65-74 and tllib/modules/entropy.py lines 8-34 (the same loss).

Left out: data, logging, evaluation. The network is handed in: ``base`` (backbone), ``head``
(the new layers), whose composition gives the logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def Entropy(input_):
    epsilon = 1e-5
    entropy = -input_ * torch.log(input_ + epsilon)
    return torch.sum(entropy, dim=1)


def mcc(outputs_target, temperature, class_num):
    train_bs = outputs_target.size(0)
    outputs_target_temp = outputs_target / temperature
    target_softmax_out_temp = nn.Softmax(dim=1)(outputs_target_temp)
    target_entropy_weight = Entropy(target_softmax_out_temp).detach()
    target_entropy_weight = 1 + torch.exp(-target_entropy_weight)
    target_entropy_weight = train_bs * target_entropy_weight / torch.sum(target_entropy_weight)
    cov_matrix_t = target_softmax_out_temp.mul(target_entropy_weight.view(-1, 1)).transpose(1, 0).mm(target_softmax_out_temp)
    cov_matrix_t = cov_matrix_t / torch.sum(cov_matrix_t, dim=1)
    return (torch.sum(cov_matrix_t) - torch.trace(cov_matrix_t)) / class_num


class AuthorsImageTrainer:
    """train_image_office.py's iteration (the ImageNet setting)."""

    def __init__(self, base: nn.Module, head: nn.Module, class_num: int, lr: float = 0.001, temperature: float = 2.5):
        self.base, self.head, self.class_num, self.lr, self.temperature = base, head, class_num, lr, temperature
        groups = [{"params": base.parameters(), "lr_mult": 1, "decay_mult": 2},
                  {"params": head.parameters(), "lr_mult": 10, "decay_mult": 2}]
        self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=0.0005, nesterov=True)

    def inv_lr_scheduler(self, iter_num, gamma=0.001, power=0.75, weight_decay=0.0005):
        lr = self.lr * (1 + gamma * iter_num) ** (-power)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr * param_group["lr_mult"]
            param_group["weight_decay"] = weight_decay * param_group["decay_mult"]

    def step(self, i, inputs_source, labels_source, inputs_target) -> dict[str, float]:
        self.inv_lr_scheduler(i)
        self.optimizer.zero_grad()
        outputs_source = self.head(self.base(inputs_source))
        outputs_target = self.head(self.base(inputs_target))
        mcc_loss = mcc(outputs_target, self.temperature, self.class_num)
        classifier_loss = nn.CrossEntropyLoss()(outputs_source, labels_source)
        total_loss = classifier_loss + mcc_loss
        total_loss.backward()
        self.optimizer.step()
        return {"cls": classifier_loss.item(), "mcc": mcc_loss.item()}


class TLlibDigitTrainer:
    """TLlib's mcc.py iteration with its digit arguments (the digit setting)."""

    def __init__(self, base: nn.Module, head: nn.Module, class_num: int, lr: float = 0.01, temperature: float = 2.5,
                 trade_off: float = 1.0, weight_decay: float = 1e-3):
        self.base, self.head, self.class_num, self.temperature, self.trade_off = base, head, class_num, temperature, trade_off
        params = [{"params": base.parameters(), "lr": 1.0}, {"params": head.parameters(), "lr": 1.0}]
        self.optimizer = torch.optim.SGD(params, lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda x: lr * (1. + 0.001 * float(x)) ** (-0.75))

    def step(self, i, x_s, labels_s, x_t) -> dict[str, float]:
        x = torch.cat((x_s, x_t), dim=0)
        y = self.head(self.base(x))
        y_s, y_t = y.chunk(2, dim=0)
        cls_loss = F.cross_entropy(y_s, labels_s)
        transfer_loss = mcc(y_t, self.temperature, self.class_num)
        loss = cls_loss + transfer_loss * self.trade_off
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.lr_scheduler.step()
        return {"cls": cls_loss.item(), "mcc": transfer_loss.item()}
