"""FixMatch as Dassl trains it: a transcription of one training step.

Repository: KaiyangZhou/Dassl.pytorch, commit c61a1b5: dassl/engine/ssl/fixmatch.py lines 52-94
(``forward_backward``: the labelled and unlabelled weak views concatenated for the pseudo-labels,
no gradient; the supervised cross-entropy of the labelled weak views; the masked cross-entropy of
all strong views, averaged over all of them; ``loss_x + loss_u x weight_u``); dassl/config/
defaults.py (WEIGHT_U 1, CONF_THRE 0.95, momentum 0.9, weight decay 5e-4);
configs/trainers/ssl/fixmatch/cifar10.yaml (SGD 0.05, cosine).

Left out: the data loaders and transforms (the four views are handed in; the parity test draws
them with the plugin's augmentation under one random state), the pseudo-label accuracy Dassl logs
from the unlabelled images' labels, the per-epoch scheduler (the step's rate is handed in).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


class Trainer:
    def __init__(self, model, lr=0.05, weight_u=1.0, conf_thre=0.95):
        self.model, self.weight_u, self.conf_thre = model, weight_u, conf_thre
        self.optim = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

    def forward_backward(self, lr, input_x, input_x2, label_x, input_u, input_u2):
        for group in self.optim.param_groups:
            group["lr"] = lr
        input_u = torch.cat([input_x, input_u], 0)
        input_u2 = torch.cat([input_x2, input_u2], 0)

        with torch.no_grad():
            output_u = F.softmax(self.model(input_u), 1)
            max_prob, label_u_pred = output_u.max(1)
            mask_u = (max_prob >= self.conf_thre).float()

        output_x = self.model(input_x)
        loss_x = F.cross_entropy(output_x, label_x)

        output_u = self.model(input_u2)
        loss_u = F.cross_entropy(output_u, label_u_pred, reduction="none")
        loss_u = (loss_u * mask_u).mean()

        loss = loss_x + loss_u * self.weight_u
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        return {"loss_x": loss_x.item(), "loss_u": loss_u.item(), "keep": mask_u.mean().item()}
