"""M3SDA as Dassl trains it: a transcription of one training step.

Repository: KaiyangZhou/Dassl.pytorch, commit c61a1b5: dassl/engine/da/m3sda.py lines 11-22
(``PairClassifiers``), 74-151 (``forward_backward``: steps A, B and N_STEP_F steps C, each through
``model_backward_and_update``), 153-187 (``moment_distance``, ``pairwise_distance``,
``euclidean``, ``discrepancy``) and 201-208 (``model_inference``); dassl/engine/trainer.py lines
300-303 (``model_backward_and_update``: zero the named models' gradients, backward, step them);
config/defaults.py (LMDA 0.5, N_STEP_F 4, SGD momentum 0.9, weight decay 5e-4).

Left out: the data loaders (the step takes each source's images and labels and the target images),
the scheduler (the step's rate is handed in), logging. F and the classifier pairs are handed in.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


class M3SDA:
    def __init__(self, F_net, C, lr=0.05, lmda=0.5, n_step_F=4):
        self.F, self.C, self.lmda, self.n_step_F = F_net, C, lmda, n_step_F
        self.n_domain = len(C)
        self.optim_F = torch.optim.SGD(F_net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        self.optim_C = torch.optim.SGD(C.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        self.optims = {"F": self.optim_F, "C": self.optim_C}

    def model_backward_and_update(self, loss, names=None):
        names = list(self.optims) if names is None else [names]
        for n in names:
            self.optims[n].zero_grad()
        loss.backward()
        for n in names:
            self.optims[n].step()

    def forward_backward(self, lr, input_x, label_x, input_u):
        for o in self.optims.values():
            for g in o.param_groups:
                g["lr"] = lr
        domain_x = list(range(len(input_x)))
        # Step A
        loss_x = 0
        feat_x = []
        for x, y, d in zip(input_x, label_x, domain_x):
            f = self.F(x)
            z1, z2 = self.C[d][0](f), self.C[d][1](f)
            loss_x += F.cross_entropy(z1, y) + F.cross_entropy(z2, y)
            feat_x.append(f)
        loss_x /= self.n_domain
        feat_u = self.F(input_u)
        loss_msda = self.moment_distance(feat_x, feat_u)
        loss_step_A = loss_x + loss_msda * self.lmda
        self.model_backward_and_update(loss_step_A)
        # Step B
        with torch.no_grad():
            feat_u = self.F(input_u)
        loss_x, loss_dis = 0, 0
        for x, y, d in zip(input_x, label_x, domain_x):
            with torch.no_grad():
                f = self.F(x)
            z1, z2 = self.C[d][0](f), self.C[d][1](f)
            loss_x += F.cross_entropy(z1, y) + F.cross_entropy(z2, y)
            z1, z2 = self.C[d][0](feat_u), self.C[d][1](feat_u)
            p1 = F.softmax(z1, 1)
            p2 = F.softmax(z2, 1)
            loss_dis += self.discrepancy(p1, p2)
        loss_x /= self.n_domain
        loss_dis /= self.n_domain
        loss_step_B = loss_x - loss_dis
        self.model_backward_and_update(loss_step_B, "C")
        # Step C
        for _ in range(self.n_step_F):
            feat_u = self.F(input_u)
            loss_dis = 0
            for d in domain_x:
                z1, z2 = self.C[d][0](feat_u), self.C[d][1](feat_u)
                p1 = F.softmax(z1, 1)
                p2 = F.softmax(z2, 1)
                loss_dis += self.discrepancy(p1, p2)
            loss_dis /= self.n_domain
            loss_step_C = loss_dis
            self.model_backward_and_update(loss_step_C, "F")
        return {"loss_step_A": loss_step_A.item(), "loss_step_B": loss_step_B.item(), "loss_step_C": loss_step_C.item()}

    def moment_distance(self, x, u):
        x_mean = [xi.mean(0) for xi in x]
        u_mean = u.mean(0)
        dist1 = self.pairwise_distance(x_mean, u_mean)
        x_var = [xi.var(0) for xi in x]
        u_var = u.var(0)
        dist2 = self.pairwise_distance(x_var, u_var)
        return (dist1 + dist2) / 2

    def pairwise_distance(self, x, u):
        dist = 0
        count = 0
        for xi in x:
            dist += self.euclidean(xi, u)
            count += 1
        for i in range(len(x) - 1):
            for j in range(i + 1, len(x)):
                dist += self.euclidean(x[i], x[j])
                count += 1
        return dist / count

    def euclidean(self, input1, input2):
        return ((input1 - input2) ** 2).sum().sqrt()

    def discrepancy(self, y1, y2):
        return (y1 - y2).abs().mean()

    def model_inference(self, input):
        f = self.F(input)
        p = 0
        for C_i in self.C:
            z = C_i[0](f)
            p += F.softmax(z, 1)
        p = p / len(self.C)
        return p
