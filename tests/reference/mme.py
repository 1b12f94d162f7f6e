"""MME: a transcription of its authors' training step.

Repository: VisionLearningGroup/SSDA_MME, commit ee04ddd: main.py lines 87-96 (the generator's
parameter groups: lr multiplier ``multi`` 0.1, 10x for AlexNet's ``classifier`` layers, weight
decay 5e-4) and 136-220 (``train``: the optimisers, the inv schedule, one step on the cross-entropy
of source and labelled target, one on ``adentropy`` of the unlabelled target); utils/loss.py lines
6-19 (``GradReverse``) and 36-41 (``adentropy``); utils/lr_schedule.py (``inv_lr_scheduler``:
gamma 1e-4, power 0.75); model/basenet.py lines 76-105 (``Predictor``, ``Predictor_deep``); main.py's
defaults (lr 0.01, T 0.05, lamda 0.1).

Left out: the data loaders, ``Variable``, ``.cuda()``, the evaluation and early stopping, logging.
``GradReverse`` is written as a static autograd Function (theirs is the pre-1.0 instance form; the
same forward and backward).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.autograd import Function


class GradReverse(Function):
    @staticmethod
    def forward(ctx, x, lambd):
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return (grad_output * -ctx.lambd), None


def grad_reverse(x, lambd=1.0):
    return GradReverse.apply(x, lambd)


class Predictor(nn.Module):
    def __init__(self, num_class=64, inc=4096, temp=0.05):
        super(Predictor, self).__init__()
        self.fc = nn.Linear(inc, num_class, bias=False)
        self.num_class = num_class
        self.temp = temp

    def forward(self, x, reverse=False, eta=0.1):
        if reverse:
            x = grad_reverse(x, eta)
        x = F.normalize(x)
        x_out = self.fc(x) / self.temp
        return x_out


class Predictor_deep(nn.Module):
    def __init__(self, num_class=64, inc=4096, temp=0.05):
        super(Predictor_deep, self).__init__()
        self.fc1 = nn.Linear(inc, 512)
        self.fc2 = nn.Linear(512, num_class, bias=False)
        self.num_class = num_class
        self.temp = temp

    def forward(self, x, reverse=False, eta=0.1):
        x = self.fc1(x)
        if reverse:
            x = grad_reverse(x, eta)
        x = F.normalize(x)
        x_out = self.fc2(x) / self.temp
        return x_out


def adentropy(F1, feat, lamda, eta=1.0):
    out_t1 = F1(feat, reverse=True, eta=eta)
    out_t1 = F.softmax(out_t1, dim=1)
    loss_adent = lamda * torch.mean(torch.sum(out_t1 * (torch.log(out_t1 + 1e-5)), 1))
    return loss_adent


def inv_lr_scheduler(param_lr, optimizer, iter_num, gamma=0.0001, power=0.75, init_lr=0.001):
    lr = init_lr * (1 + gamma * iter_num) ** (- power)
    i = 0
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr * param_lr[i]
        i += 1
    return optimizer


class Trainer:
    def __init__(self, G, F1, lr=0.01, multi=0.1, lamda=0.1):
        self.G, self.F1, self.lr, self.lamda = G, F1, lr, lamda
        params = []
        for key, value in dict(G.named_parameters()).items():
            if value.requires_grad:
                if 'classifier' not in key:
                    params += [{'params': [value], 'lr': multi, 'weight_decay': 0.0005}]
                else:
                    params += [{'params': [value], 'lr': multi * 10, 'weight_decay': 0.0005}]
        self.optimizer_g = optim.SGD(params, momentum=0.9, weight_decay=0.0005, nesterov=True)
        self.optimizer_f = optim.SGD(list(F1.parameters()), lr=1.0, momentum=0.9, weight_decay=0.0005, nesterov=True)
        self.param_lr_g = [g["lr"] for g in self.optimizer_g.param_groups]
        self.param_lr_f = [g["lr"] for g in self.optimizer_f.param_groups]

    def step(self, step, im_data_s, gt_labels_s, im_data_t, gt_labels_t, im_data_tu):
        criterion = nn.CrossEntropyLoss()
        G, F1 = self.G, self.F1
        optimizer_g = inv_lr_scheduler(self.param_lr_g, self.optimizer_g, step, init_lr=self.lr)
        optimizer_f = inv_lr_scheduler(self.param_lr_f, self.optimizer_f, step, init_lr=self.lr)

        def zero_grad_all():
            optimizer_g.zero_grad()
            optimizer_f.zero_grad()

        zero_grad_all()
        data = torch.cat((im_data_s, im_data_t), 0)
        target = torch.cat((gt_labels_s, gt_labels_t), 0)
        output = G(data)
        out1 = F1(output)
        loss = criterion(out1, target)
        loss.backward(retain_graph=True)
        optimizer_g.step()
        optimizer_f.step()
        zero_grad_all()
        output = G(im_data_tu)
        loss_t = adentropy(F1, output, self.lamda)
        loss_t.backward()
        optimizer_f.step()
        optimizer_g.step()
        G.zero_grad()
        F1.zero_grad()
        zero_grad_all()
        return {"loss": loss.item(), "loss_t": loss_t.item()}
