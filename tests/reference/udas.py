"""UDAS's adaptation stage (stage 2), one training iteration, in plain PyTorch.

UDAS is the project's seed paper and has no public code. This module follows:

- the paper's equations as ``../shared/REFERENCE.md`` states them (section "UDAS — the seed paper"):
  the adaptation loss L_total = L_seg + L_adv + L_kl, where L_kl is the symmetric cross-entropy
  between the primary and auxiliary softmax maps on target images,
  L_kl = - sum_{h,w,c} F_a(x_t) log F_p(x_t) - sum_{h,w,c} F_p(x_t) log F_a(x_t), with weight 1; and
  Domain CutMix as the only path of labelled target pixels into adaptation: a box of a labelled
  target image (and its labels) is pasted into each source image, and the mixed images replace the
  source images in L_seg;
- for L_seg and L_adv, which UDAS takes from AdaptSegNet's multi-level output-space adaptation,
  the authors' code: wasidennis/AdaptSegNet @fca9ff0f09dab45d44bf6d26091377ac66607028,
  ``train_gta2cityscapes_multi.py`` lines 155-170 (poly schedules of the segmenter, heads at 10x,
  and of the discriminators), 242-262 (SGD 2.5e-4, momentum 0.9, wd 5e-4; Adam 1e-4, betas
  (0.9, 0.99); BCE-with-logits; source label 0, target label 1) and 264-395 (the iteration:
  discriminators frozen; source L_seg = main + 0.1 aux, backward; target adversarial loss toward the
  source label, 0.0002 aux + 0.001 main, backward; discriminators unfrozen and trained on detached
  source predictions (label 0) and detached target predictions (label 1), each loss / 2; then
  the three optimisers step). Logits are upsampled bilinearly (corner-aligned, as the code's
  ``nn.Upsample`` of its PyTorch version behaved) to the input size before the loss and the
  discriminators; the discriminators read ``softmax`` over the channels.

Reading of the paper where it leaves a choice:
- L_kl's sums over h, w: the paper writes L_seg and L_adv as such sums as well, and AdaptSegNet's
  code (CrossEntropy2d, BCEWithLogitsLoss) takes them as means over pixels; L_kl is read the same
  way (mean over pixels and images) so the three terms keep the 1 : 1 : 1 weighting the equation
  gives them. F_p and F_a are the softmax maps of the upsampled logits, the maps D sees. L_kl is
  added to the target adversarial loss (both are losses on target images) before that backward.
- Domain CutMix: the box of each (source, labelled target) pair is handed in (``boxes``: top,
  left, height, width), so both sides mix with the same boxes; the labelled target batch is cycled
  when shorter than the source's, and a labelled target image of another size is resized to the
  source's first (image bilinear, labels nearest): the paper does not say, this is dabench's
  choice, checked here only for what it is. ``augment(x, y)`` (AutoAugment in UDAS) is handed in
  too and applied to the mixed samples.

Left out: data loading, iter_size > 1 (1 in the paper), logging, CUDA, the translation and
self-training stages.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

SOURCE_LABEL, TARGET_LABEL = 0, 1


class AdaptationStep:
    """The segmenter (``forward(x) -> (main, aux)``, its ``encoder``, ``head`` and ``aux_head``) and the
    discriminators D1 (on the auxiliary output) and D2 (on the main output), with the authors'
    optimisers; ``step(i_iter, ...)`` is one iteration of UDAS's adaptation stage."""

    def __init__(self, model: nn.Module, model_d1: nn.Module, model_d2: nn.Module, num_steps: int,
                 learning_rate: float = 2.5e-4, learning_rate_d: float = 1e-4, momentum: float = 0.9,
                 weight_decay: float = 5e-4, power: float = 0.9, lambda_seg: float = 0.1,
                 lambda_adv_target1: float = 0.0002, lambda_adv_target2: float = 0.001,
                 lambda_kl: float = 1.0):
        self.model, self.model_d1, self.model_d2 = model, model_d1, model_d2
        self.num_steps, self.power = num_steps, power
        self.learning_rate, self.learning_rate_d = learning_rate, learning_rate_d
        self.lambda_seg, self.lambda_kl = lambda_seg, lambda_kl
        self.lambda_adv_target1, self.lambda_adv_target2 = lambda_adv_target1, lambda_adv_target2
        # DeeplabMulti.optim_parameters: the backbone at lr, the two classifiers at 10 lr.
        heads = list(model.head.parameters()) + list(model.aux_head.parameters())
        self.optimizer = torch.optim.SGD([{"params": list(model.encoder.parameters()), "lr": learning_rate},
                                          {"params": heads, "lr": 10 * learning_rate}],
                                         lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
        self.optimizer_d1 = torch.optim.Adam(model_d1.parameters(), lr=learning_rate_d, betas=(0.9, 0.99))
        self.optimizer_d2 = torch.optim.Adam(model_d2.parameters(), lr=learning_rate_d, betas=(0.9, 0.99))
        self.bce_loss = nn.BCEWithLogitsLoss()

    def lr_poly(self, base_lr: float, i_iter: int) -> float:
        return base_lr * ((1 - float(i_iter) / self.num_steps) ** self.power)

    def adjust_learning_rates(self, i_iter: int) -> None:
        lr = self.lr_poly(self.learning_rate, i_iter)
        self.optimizer.param_groups[0]["lr"] = lr
        self.optimizer.param_groups[1]["lr"] = lr * 10
        for opt in (self.optimizer_d1, self.optimizer_d2):
            opt.param_groups[0]["lr"] = self.lr_poly(self.learning_rate_d, i_iter)

    @staticmethod
    def loss_calc(pred: torch.Tensor, label: torch.Tensor, ignore_label: int = 255) -> torch.Tensor:
        """CrossEntropy2d: cross-entropy averaged over the pixels whose label is not ignored."""
        n, c, h, w = pred.shape
        mask = (label >= 0) & (label != ignore_label)
        if not mask.any():
            return pred.sum() * 0
        predict = pred.permute(0, 2, 3, 1)[mask].view(-1, c)
        return F.cross_entropy(predict, label[mask])

    @staticmethod
    def consistency(pred_main: torch.Tensor, pred_aux: torch.Tensor) -> torch.Tensor:
        """L_kl = -sum_c F_a log F_p - sum_c F_p log F_a per pixel, mean over pixels and images."""
        log_p, log_a = F.log_softmax(pred_main, dim=1), F.log_softmax(pred_aux, dim=1)
        f_p, f_a = F.softmax(pred_main, dim=1), F.softmax(pred_aux, dim=1)
        return (-(f_a * log_p).sum(1) - (f_p * log_a).sum(1)).mean()

    @staticmethod
    def domain_cutmix(images: torch.Tensor, labels: torch.Tensor, tgt_images: torch.Tensor, tgt_labels: torch.Tensor,
                      boxes: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each source image with the box ``boxes[n]`` of labelled target image n (cycled) pasted in."""
        h, w = images.shape[-2:]
        if tgt_images.shape[-2:] != (h, w):
            tgt_images = F.interpolate(tgt_images, size=(h, w), mode="bilinear", align_corners=False)
            tgt_labels = F.interpolate(tgt_labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        images, labels = images.clone(), labels.clone()
        for n, (top, left, bh, bw) in enumerate(boxes):
            k = n % len(tgt_images)
            images[n, :, top:top + bh, left:left + bw] = tgt_images[k, :, top:top + bh, left:left + bw]
            labels[n, top:top + bh, left:left + bw] = tgt_labels[k, top:top + bh, left:left + bw]
        return images, labels

    def step(self, i_iter: int, images: torch.Tensor, labels: torch.Tensor, images_target: torch.Tensor,
             labelled_target: tuple[torch.Tensor, torch.Tensor] | None = None,
             draw_boxes: Callable[[int, int, int], list[tuple[int, int, int, int]]] | None = None,
             augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
             ) -> dict[str, float]:
        """One iteration. With ``labelled_target`` (images, labels), ``draw_boxes(n, h, w)`` gives the
        CutMix box of each source image and ``augment`` (if any) moves the mixed images and labels."""
        if labelled_target is not None:
            boxes = draw_boxes(*images.shape[:1], *images.shape[-2:])
            images, labels = self.domain_cutmix(images, labels, *labelled_target, boxes)
            if augment is not None:
                images, labels = augment(images, labels)
        interp = lambda p: F.interpolate(p, size=images.shape[-2:], mode="bilinear", align_corners=True)  # noqa: E731
        interp_target = lambda p: F.interpolate(p, size=images_target.shape[-2:], mode="bilinear",  # noqa: E731
                                                align_corners=True)

        self.optimizer.zero_grad()
        self.adjust_learning_rates(i_iter)
        self.optimizer_d1.zero_grad()
        self.optimizer_d2.zero_grad()

        # train G: don't accumulate grads in D
        for param in list(self.model_d1.parameters()) + list(self.model_d2.parameters()):
            param.requires_grad = False

        # train with source (Domain-CutMixed when labelled target images are given)
        pred2, pred1 = self.model(images)  # (main, aux): pred1 is AdaptSegNet's layer5 (aux), pred2 its layer6
        pred1, pred2 = interp(pred1), interp(pred2)
        loss_seg1 = self.loss_calc(pred1, labels)
        loss_seg2 = self.loss_calc(pred2, labels)
        loss = loss_seg2 + self.lambda_seg * loss_seg1
        loss.backward()

        # train with target: adversarial toward the source label, plus UDAS's L_kl
        pred_target2, pred_target1 = self.model(images_target)
        pred_target1, pred_target2 = interp_target(pred_target1), interp_target(pred_target2)
        d_out1 = self.model_d1(F.softmax(pred_target1, dim=1))
        d_out2 = self.model_d2(F.softmax(pred_target2, dim=1))
        loss_adv_target1 = self.bce_loss(d_out1, torch.full_like(d_out1, SOURCE_LABEL))
        loss_adv_target2 = self.bce_loss(d_out2, torch.full_like(d_out2, SOURCE_LABEL))
        loss_adv = self.lambda_adv_target1 * loss_adv_target1 + self.lambda_adv_target2 * loss_adv_target2
        loss_kl = self.lambda_kl * self.consistency(pred_target2, pred_target1)
        (loss_adv + loss_kl).backward()

        # train D: bring back requires_grad
        for param in list(self.model_d1.parameters()) + list(self.model_d2.parameters()):
            param.requires_grad = True
        loss_d = 0.0
        for preds, domain in (((pred1, pred2), SOURCE_LABEL), ((pred_target1, pred_target2), TARGET_LABEL)):
            p1, p2 = preds[0].detach(), preds[1].detach()
            d_out1 = self.model_d1(F.softmax(p1, dim=1))
            d_out2 = self.model_d2(F.softmax(p2, dim=1))
            loss_d1 = self.bce_loss(d_out1, torch.full_like(d_out1, domain)) / 2
            loss_d2 = self.bce_loss(d_out2, torch.full_like(d_out2, domain)) / 2
            loss_d1.backward()
            loss_d2.backward()
            loss_d = loss_d + loss_d1.item() + loss_d2.item()

        self.optimizer.step()
        self.optimizer_d1.step()
        self.optimizer_d2.step()
        return {"loss_seg": loss.item(), "loss_adv": loss_adv.item(), "loss_kl": loss_kl.item(), "loss_D": loss_d,
                "loss_seg1": loss_seg1.item(), "loss_seg2": loss_seg2.item()}
