"""Self-ensembling (unsupervised DA): a student matches an exponential-average teacher on two
augmented views of each target image, where the teacher is confident."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench.layers import mlp

CONFIDENCE = 0.96837722  # the authors' default threshold


def augment(x: torch.Tensor, affine_std: float, xlat_range: float, noise_std: float) -> torch.Tensor:
    """The authors' ``ImageAugmentation.augment`` for digits, in torch: each image warped by the
    identity plus N(0, affine_std) on its 2 x 2 linear part and a translation uniform in
    +-``xlat_range`` pixels (about the image centre, bilinear, zero outside), then Gaussian noise of
    std ``noise_std``. (Theirs warps with cv2 on the CPU; the distribution is the same, not the bits.)"""
    n, _, h, w = x.shape
    linear = torch.eye(2, device=x.device).expand(n, 2, 2) + torch.randn(n, 2, 2, device=x.device) * affine_std
    shift = (torch.rand(n, 2, device=x.device) * 2 - 1) * xlat_range
    # affine_grid maps output to input coordinates in [-1, 1]: the inverse of a pixel-space warp
    # x' = A x + t about the centre is x = A^-1 (x' - t); pixels scale to normalised units by 2 / size
    inverse = torch.linalg.inv(linear)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=x.device)
    theta = torch.cat([inverse, -(inverse @ (shift * scale).unsqueeze(2))], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped + torch.randn_like(warped) * noise_std if noise_std else warped


def robust_bce(pred: torch.Tensor, tgt) -> torch.Tensor:
    """The authors' ``robust_binary_crossentropy``: -(t log(p + 1e-6) + (1 - t) log(1 - p + 1e-6))."""
    return -(tgt * torch.log(pred + 1.0e-6) + (1.0 - tgt) * torch.log(-pred + 1.0 + 1e-6))


def self_ensembling_loss(student: torch.Tensor, teacher: torch.Tensor, threshold: float, cls_balance: float):
    """The authors' ``compute_aug_loss`` (squared difference, confidence thresholding, class
    balance): returns (loss, share of target images above the threshold)."""
    mask = (teacher.max(1)[0] > threshold).float()
    per_image = (student - teacher).pow(2).mean(1)
    loss = (per_image * mask).mean()
    if cls_balance > 0.0:
        k = student.shape[1]
        balance = robust_bce(student.mean(0), 1.0 / k).mean() * k * mask.mean(0)
        loss = loss + balance * cls_balance
    return loss, mask.mean()


class SelfEnsembling(ClassificationAlgorithm):
    """Self-ensembling (French, Mackiewicz & Fisher, ICLR 2018), as the authors' code (Britefury/
    self-ensemble-visual-domain-adapt, commit a9808a1: experiment_domainadapt_meanteacher.py
    ``compute_aug_loss`` and ``f_train`` with its default options, optim_weight_ema.py
    ``OldWeightEMA``, augmentation.py, network_architectures.py ``robust_binary_crossentropy``):
    the student (the backbone and ERM's head) is trained on the cross-entropy of augmented source
    images plus ``unsup_weight`` (3) x the squared difference between its class probabilities on
    one augmented view of each target image and the teacher's on another, counted only where the
    teacher's top probability exceeds 0.968, plus ``cls_balance`` (0.005) x the binary cross-entropy
    of the student's mean target prediction to the uniform distribution (times the share of
    confident images). Adam 1e-3. The teacher's parameters are an exponential moving average of
    the student's (alpha 0.99; its batch-norm statistics its own), never trained; it predicts (the
    authors evaluate both). Augmentation on every view: a random affine (std 0.1), a shift of up to
    2 pixels, Gaussian noise (std 0.1), the code's defaults for digits; batch 64 per domain.
    """

    name = "self-ensembling"
    task = "classification"
    hparams = {
        "lr": HParam(1e-3, log_uniform(-4, -2.5), "Adam's learning rate"),
        "batch_size": HParam(64, None, "images per domain per step"),
        "weight_decay": HParam(0.0, None, "L2 penalty (the authors': none)"),
        "unsup_weight": HParam(3.0, None, "weight of the self-ensembling loss"),
        "confidence": HParam(CONFIDENCE, None, "teacher confidence above which a target image counts"),
        "cls_balance": HParam(0.005, None, "weight of the class-balance loss"),
        "teacher_alpha": HParam(0.99, None, "the teacher's exponential moving average"),
        "affine_std": HParam(0.1, None, "std of the random affine's linear part"),
        "xlat_range": HParam(2.0, None, "largest random shift, in pixels"),
        "noise_std": HParam(0.1, None, "std of the added Gaussian noise"),
        "freeze_backbone": ClassificationAlgorithm.hparams["freeze_backbone"],
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.student = nn.Sequential(backbone, mlp([backbone.out_features, 100, num_classes]))
        self.teacher = copy.deepcopy(self.student)  # OldWeightEMA copies the student's parameters first
        self.teacher.requires_grad_(False)
        self.optims["student"] = torch.optim.Adam(self.student.parameters(), lr=self.hp["lr"],
                                                  weight_decay=self.hp["weight_decay"])

    def views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(augmented source, student's target view, teacher's target view), in the authors' order."""
        aug = lambda x: augment(x, self.hp["affine_std"], self.hp["xlat_range"], self.hp["noise_std"])  # noqa: E731
        x, _ = batch.labeled_sources()
        return aug(x), aug(batch.tgt_x), aug(batch.tgt_x)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        _, y = batch.labeled_sources()
        x_src, x_stu, x_tea = self.views(batch)
        clf = F.cross_entropy(self.student(x_src), y)
        student = F.softmax(self.student(x_stu), dim=1)
        teacher = F.softmax(self.teacher(x_tea), dim=1)
        unsup, confident = self_ensembling_loss(student, teacher, self.hp["confidence"], self.hp["cls_balance"])
        self.optimise(clf + unsup * self.hp["unsup_weight"], self.optims["student"])
        alpha = self.hp["teacher_alpha"]
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.mul_(alpha).add_(s * (1.0 - alpha))
        return {"cls": clf.item(), "unsup": unsup.item(), "confident": confident.item()}

    def predict(self, x):
        return self.teacher(x)
