"""AdaptSegNet's training iteration: wasidennis/AdaptSegNet @fca9ff0f (2020-08-13).

Transcribed from
- train_gta2cityscapes_multi.py lines 24-54 (the defaults: SGD 2.5e-4, momentum 0.9, weight decay
  5e-4, NUM_STEPS 250000, NUM_STEPS_STOP 150000, power 0.9, discriminator rate 1e-4, LAMBDA_SEG
  0.1, LAMBDA_ADV_TARGET1 0.0002 (auxiliary), LAMBDA_ADV_TARGET2 0.001 (main), the vanilla GAN),
  lines 155-170 (``lr_poly``, ``adjust_learning_rate``, ``adjust_learning_rate_D``: the second
  group at 10x), lines 242-262 (SGD over ``optim_parameters``, one Adam per discriminator with
  betas (0.9, 0.99), BCEWithLogits, source label 0, target label 1) and lines 264-395 (one
  iteration with iter_size 1: the discriminators frozen, the source segmentation loss, the target
  adversarial loss against the source label, the discriminators unfrozen and trained on the
  detached source and target maps, each loss halved, then the three optimisers step);
- pytorch_0.4/train_gta2cityscapes_multi.py lines 250-251 (the upsampling, align_corners=True);
- model/discriminator.py (``FCDiscriminator``);
- utils/loss.py (``CrossEntropy2d``: the mean over pixels whose label is not 255);
- model/deeplab_multi.py lines 169-224 (``forward`` returns (layer5 on layer3, layer6 on layer4);
  ``optim_parameters``: the backbone at 1x, layer5 and layer6 at 10x).

Left out: data loading, logging, snapshots, CUDA. The segmentation network is handed in (a module
returning (main, auxiliary) logits with ``encoder``, ``head`` and ``aux_head``), so the backbone
group is its encoder's parameters and the 10x group its heads'. One departure is kept on purpose:
``get_1x_lr_params_NOscale`` walks ``modules()`` and so yields a parameter once per module that
contains it, and PyTorch 0.4's SGD stepped such a parameter once per entry (with the weight decay
added to its gradient in place each time); modern PyTorch warns about and handles duplicates
differently. Here each parameter is listed once; the plugin does the same (see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Args:
    learning_rate: float = 2.5e-4
    learning_rate_D: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0005
    num_steps: int = 250000
    num_steps_stop: int = 150000
    power: float = 0.9
    lambda_seg: float = 0.1
    lambda_adv_target1: float = 0.0002
    lambda_adv_target2: float = 0.001
    gan: str = "Vanilla"


class FCDiscriminator(nn.Module):
    def __init__(self, num_classes, ndf=64):
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes, ndf, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, kernel_size=4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, kernel_size=4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, kernel_size=4, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        x = self.leaky_relu(self.conv1(x))
        x = self.leaky_relu(self.conv2(x))
        x = self.leaky_relu(self.conv3(x))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(x)


def cross_entropy_2d(predict, target, ignore_label=255):
    n, c, h, w = predict.size()
    target_mask = (target >= 0) * (target != ignore_label)
    target = target[target_mask]
    if not target.data.dim():
        return torch.zeros(1)
    predict = predict.transpose(1, 2).transpose(2, 3).contiguous()
    predict = predict[target_mask.view(n, h, w, 1).repeat(1, 1, 1, c)].view(-1, c)
    return F.cross_entropy(predict, target)


def lr_poly(base_lr, iter, max_iter, power):
    return base_lr * ((1 - float(iter) / max_iter) ** (power))


def optim_parameters(model, learning_rate):
    backbone = [p for p in model.encoder.parameters() if p.requires_grad]
    heads = [p for m in (model.aux_head, model.head) if m is not None for p in m.parameters()]
    return [{"params": backbone, "lr": learning_rate}, {"params": heads, "lr": 10 * learning_rate}]


class Trainer:
    """The authors' ``main`` from the optimisers on; ``step`` is one pass of their loop body."""

    def __init__(self, model: nn.Module, model_D1: FCDiscriminator, model_D2: FCDiscriminator, args: Args):
        self.model, self.model_D1, self.model_D2, self.args = model, model_D1, model_D2, args
        self.model.train()
        self.model_D1.train()
        self.model_D2.train()
        self.optimizer = torch.optim.SGD(optim_parameters(model, args.learning_rate), lr=args.learning_rate,
                                         momentum=args.momentum, weight_decay=args.weight_decay)
        self.optimizer_D1 = torch.optim.Adam(model_D1.parameters(), lr=args.learning_rate_D, betas=(0.9, 0.99))
        self.optimizer_D2 = torch.optim.Adam(model_D2.parameters(), lr=args.learning_rate_D, betas=(0.9, 0.99))
        self.bce_loss = nn.BCEWithLogitsLoss() if args.gan == "Vanilla" else nn.MSELoss()
        self.source_label, self.target_label = 0, 1

    def adjust_learning_rate(self, optimizer, i_iter):
        lr = lr_poly(self.args.learning_rate, i_iter, self.args.num_steps, self.args.power)
        optimizer.param_groups[0]["lr"] = lr
        if len(optimizer.param_groups) > 1:
            optimizer.param_groups[1]["lr"] = lr * 10

    def adjust_learning_rate_D(self, optimizer, i_iter):
        lr = lr_poly(self.args.learning_rate_D, i_iter, self.args.num_steps, self.args.power)
        optimizer.param_groups[0]["lr"] = lr
        if len(optimizer.param_groups) > 1:
            optimizer.param_groups[1]["lr"] = lr * 10

    def step(self, i_iter, images, labels, images_target) -> dict[str, float]:
        args, model, model_D1, model_D2 = self.args, self.model, self.model_D1, self.model_D2
        interp = lambda x: F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=True)  # noqa: E731
        interp_target = lambda x: F.interpolate(x, size=images_target.shape[-2:], mode="bilinear",  # noqa: E731
                                                align_corners=True)
        label = lambda out, value: torch.FloatTensor(out.data.size()).fill_(value)  # noqa: E731

        self.optimizer.zero_grad()
        self.adjust_learning_rate(self.optimizer, i_iter)
        self.optimizer_D1.zero_grad()
        self.optimizer_D2.zero_grad()
        self.adjust_learning_rate_D(self.optimizer_D1, i_iter)
        self.adjust_learning_rate_D(self.optimizer_D2, i_iter)

        # train G: don't accumulate grads in D
        for param in model_D1.parameters():
            param.requires_grad = False
        for param in model_D2.parameters():
            param.requires_grad = False

        # train with source
        pred2, pred1 = model(images)  # theirs returns (pred1, pred2) = (layer5 on layer3, layer6 on layer4)
        pred1 = interp(pred1)
        pred2 = interp(pred2)
        loss_seg1 = cross_entropy_2d(pred1, labels)
        loss_seg2 = cross_entropy_2d(pred2, labels)
        loss = loss_seg2 + args.lambda_seg * loss_seg1
        loss.backward()
        loss_seg = loss.item()

        # train with target
        pred_target2, pred_target1 = model(images_target)
        pred_target1 = interp_target(pred_target1)
        pred_target2 = interp_target(pred_target2)
        D_out1 = model_D1(F.softmax(pred_target1, dim=1))
        D_out2 = model_D2(F.softmax(pred_target2, dim=1))
        loss_adv_target1 = self.bce_loss(D_out1, label(D_out1, self.source_label))
        loss_adv_target2 = self.bce_loss(D_out2, label(D_out2, self.source_label))
        loss = args.lambda_adv_target1 * loss_adv_target1 + args.lambda_adv_target2 * loss_adv_target2
        loss.backward()
        loss_adv = loss.item()

        # train D: bring back requires_grad
        for param in model_D1.parameters():
            param.requires_grad = True
        for param in model_D2.parameters():
            param.requires_grad = True

        # train with source
        pred1 = pred1.detach()
        pred2 = pred2.detach()
        D_out1 = model_D1(F.softmax(pred1, dim=1))
        D_out2 = model_D2(F.softmax(pred2, dim=1))
        loss_D1 = self.bce_loss(D_out1, label(D_out1, self.source_label)) / 2
        loss_D2 = self.bce_loss(D_out2, label(D_out2, self.source_label)) / 2
        loss_D1.backward()
        loss_D2.backward()
        loss_D_value1, loss_D_value2 = loss_D1.item(), loss_D2.item()

        # train with target
        pred_target1 = pred_target1.detach()
        pred_target2 = pred_target2.detach()
        D_out1 = model_D1(F.softmax(pred_target1, dim=1))
        D_out2 = model_D2(F.softmax(pred_target2, dim=1))
        loss_D1 = self.bce_loss(D_out1, label(D_out1, self.target_label)) / 2
        loss_D2 = self.bce_loss(D_out2, label(D_out2, self.target_label)) / 2
        loss_D1.backward()
        loss_D2.backward()
        loss_D_value1 += loss_D1.item()
        loss_D_value2 += loss_D2.item()

        self.optimizer.step()
        self.optimizer_D1.step()
        self.optimizer_D2.step()
        return {"loss_seg": loss_seg, "loss_seg1": loss_seg1.item(), "loss_seg2": loss_seg2.item(), "loss_adv": loss_adv,
                "loss_D1": loss_D_value1, "loss_D2": loss_D_value2}
