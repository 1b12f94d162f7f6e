"""MCD: transcriptions of its authors' two training iterations.

Repository: mil-tokyo/MCD_DA, commit af10217.
- classification/solver.py lines 52-77 (``set_optimizer``: Adam, weight decay 5e-4, one optimiser
  per network), 82-83 (``discrepancy``) and 85-147 (``train``: steps A, B and ``num_k`` steps C);
  classification/main.py (lr 2e-4, batch 128, num_k 4, optimizer adam): the digit setting.
- visda_classification/res_train_main.py lines 100-110 (SGD, weight decay 5e-4, momentum 0.9 for
  the classifiers only) and 111-197 (``train``: one forward of source and target, the 0.01 class
  balance term in steps A and B): the ImageNet-size setting (lr 1e-3, batch 32, num_k 4).

Left out: ``Variable``, ``.cuda()``, the data loaders and the early ``return`` after 500 batches
(``batch_idx > 500``), logging. ``xrange`` is ``range``. The networks are handed in.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


class DigitSolver:
    def __init__(self, G, C1, C2, learning_rate=0.0002, num_k=4):
        self.G, self.C1, self.C2, self.num_k = G, C1, C2, num_k
        self.opt_g = optim.Adam(self.G.parameters(), lr=learning_rate, weight_decay=0.0005)
        self.opt_c1 = optim.Adam(self.C1.parameters(), lr=learning_rate, weight_decay=0.0005)
        self.opt_c2 = optim.Adam(self.C2.parameters(), lr=learning_rate, weight_decay=0.0005)

    def reset_grad(self):
        self.opt_g.zero_grad()
        self.opt_c1.zero_grad()
        self.opt_c2.zero_grad()

    def discrepancy(self, out1, out2):
        return torch.mean(torch.abs(F.softmax(out1, dim=1) - F.softmax(out2, dim=1)))

    def step(self, img_s, label_s, img_t):
        criterion = nn.CrossEntropyLoss()
        self.reset_grad()
        feat_s = self.G(img_s)
        output_s1 = self.C1(feat_s)
        output_s2 = self.C2(feat_s)

        loss_s1 = criterion(output_s1, label_s)
        loss_s2 = criterion(output_s2, label_s)
        loss_s = loss_s1 + loss_s2
        loss_s.backward()
        self.opt_g.step()
        self.opt_c1.step()
        self.opt_c2.step()
        self.reset_grad()

        feat_s = self.G(img_s)
        output_s1 = self.C1(feat_s)
        output_s2 = self.C2(feat_s)
        feat_t = self.G(img_t)
        output_t1 = self.C1(feat_t)
        output_t2 = self.C2(feat_t)

        loss_s1 = criterion(output_s1, label_s)
        loss_s2 = criterion(output_s2, label_s)
        loss_s = loss_s1 + loss_s2
        loss_dis = self.discrepancy(output_t1, output_t2)
        loss = loss_s - loss_dis
        loss.backward()
        self.opt_c1.step()
        self.opt_c2.step()
        self.reset_grad()

        for i in range(self.num_k):
            feat_t = self.G(img_t)
            output_t1 = self.C1(feat_t)
            output_t2 = self.C2(feat_t)
            loss_dis = self.discrepancy(output_t1, output_t2)
            loss_dis.backward()
            self.opt_g.step()
            self.reset_grad()
        return {"loss_s1": loss_s1.item(), "loss_s2": loss_s2.item(), "loss_dis": loss_dis.item()}


class VisdaTrainer:
    def __init__(self, G, F1, F2, lr=0.001, num_k=4):
        self.G, self.F1, self.F2, self.num_k = G, F1, F2, num_k
        self.optimizer_g = optim.SGD(list(G.parameters()), lr=lr, weight_decay=0.0005)
        self.optimizer_f = optim.SGD(list(F1.parameters()) + list(F2.parameters()), momentum=0.9, lr=lr,
                                     weight_decay=0.0005)

    def step(self, data1, target1, data2):
        criterion = nn.CrossEntropyLoss()
        G, F1, F2 = self.G, self.F1, self.F2
        optimizer_g, optimizer_f = self.optimizer_g, self.optimizer_f
        batch_size = data1.shape[0]
        eta = 1.0
        data = torch.cat((data1, data2), 0)
        optimizer_g.zero_grad()
        optimizer_f.zero_grad()
        output = G(data)
        output1 = F1(output)
        output2 = F2(output)

        output_s1 = output1[:batch_size, :]
        output_s2 = output2[:batch_size, :]
        output_t1 = output1[batch_size:, :]
        output_t2 = output2[batch_size:, :]
        output_t1 = F.softmax(output_t1, dim=1)
        output_t2 = F.softmax(output_t2, dim=1)

        entropy_loss = - torch.mean(torch.log(torch.mean(output_t1, 0) + 1e-6))
        entropy_loss -= torch.mean(torch.log(torch.mean(output_t2, 0) + 1e-6))

        loss1 = criterion(output_s1, target1)
        loss2 = criterion(output_s2, target1)
        all_loss = loss1 + loss2 + 0.01 * entropy_loss
        all_loss.backward()
        optimizer_g.step()
        optimizer_f.step()

        optimizer_g.zero_grad()
        optimizer_f.zero_grad()

        output = G(data)
        output1 = F1(output)
        output2 = F2(output)
        output_s1 = output1[:batch_size, :]
        output_s2 = output2[:batch_size, :]
        output_t1 = output1[batch_size:, :]
        output_t2 = output2[batch_size:, :]
        output_t1 = F.softmax(output_t1, dim=1)
        output_t2 = F.softmax(output_t2, dim=1)
        loss1 = criterion(output_s1, target1)
        loss2 = criterion(output_s2, target1)
        entropy_loss = - torch.mean(torch.log(torch.mean(output_t1, 0) + 1e-6))
        entropy_loss -= torch.mean(torch.log(torch.mean(output_t2, 0) + 1e-6))
        loss_dis = torch.mean(torch.abs(output_t1 - output_t2))
        F_loss = loss1 + loss2 - eta * loss_dis + 0.01 * entropy_loss
        F_loss.backward()
        optimizer_f.step()
        for i in range(self.num_k):
            optimizer_g.zero_grad()
            output = G(data)
            output1 = F1(output)
            output2 = F2(output)
            output_t1 = output1[batch_size:, :]
            output_t2 = output2[batch_size:, :]
            output_t1 = F.softmax(output_t1, dim=1)
            output_t2 = F.softmax(output_t2, dim=1)
            loss_dis = torch.mean(torch.abs(output_t1 - output_t2))
            loss_dis.backward()
            optimizer_g.step()
        return {"loss": (loss1 + loss2).item(), "loss_dis": loss_dis.item(), "entropy": entropy_loss.item()}
