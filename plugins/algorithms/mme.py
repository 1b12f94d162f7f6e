"""Minimax Entropy (semi-supervised DA): a cosine classifier whose prototypes move towards the
unlabelled target (entropy up) while the features cluster around them (entropy down)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import ClassificationAlgorithm
from dabench.data import Batch
from dabench.hparams import HParam, int_log2, log_uniform
from dabench_plugins.algorithms.dann import reverse_grad


class CosinePredictor(nn.Module):
    """The authors' ``Predictor`` (features L2-normalised, a linear layer without bias, divided by
    the temperature) or, with ``hidden``, their ``Predictor_deep`` (a linear layer to ``hidden``
    units first). ``reverse``: the gradient reversal sits where theirs does, on the normalised
    layer's input."""

    def __init__(self, in_features: int, num_classes: int, temperature: float, hidden: int = 0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden) if hidden else None
        self.fc = nn.Linear(hidden or in_features, num_classes, bias=False)
        self.temperature = temperature

    def forward(self, x: torch.Tensor, reverse: bool = False, eta: float = 1.0) -> torch.Tensor:
        if self.fc1 is not None:
            x = self.fc1(x)
        if reverse:
            x = reverse_grad(x, eta)
        return self.fc(F.normalize(x)) / self.temperature


def adentropy(logits: torch.Tensor, lamda: float) -> torch.Tensor:
    """The authors' ``adentropy``: lamda x mean over images of sum_k p_k log(p_k + 1e-5) (minus
    lamda times the entropy)."""
    p = F.softmax(logits, dim=1)
    return lamda * (p * torch.log(p + 1e-5)).sum(1).mean()


class MME(ClassificationAlgorithm):
    """MME (Saito et al., ICCV 2019), semi-supervised DA: needs ``--tgt-labeled N``.

    As the authors' code (VisionLearningGroup/SSDA_MME, commit ee04ddd: main.py ``train``,
    utils/loss.py ``adentropy``, model/basenet.py ``Predictor`` / ``Predictor_deep``,
    utils/lr_schedule.py ``inv_lr_scheduler``): each step, one SGD step of G and F on the
    cross-entropy of the source and labelled target images together; then one step on
    ``lamda`` (0.1) x sum p log p of the unlabelled target images, with the gradient reversed
    between G and F, so F raises the target entropy and G lowers it. F is a cosine classifier at
    temperature ``T`` (0.05); on ImageNet-size data with a 512-unit layer before it (their
    ResNet-34 ``Predictor_deep``), on digits directly on the features (their ``Predictor``). SGD,
    momentum 0.9, Nesterov, weight decay 5e-4, lr 0.01 x (1 + 1e-4 i)^-0.75, the backbone at
    ``backbone_lr_mult`` (0.1, theirs for pretrained networks; 1 on digits, trained from scratch),
    32 images per domain (24 for their ResNet, the imagenet regime). F keeps PyTorch's default
    initialisation: their ``weights_init(F1)`` is called on the module itself, whose class name
    matches neither Conv nor Linear, so it changes nothing. dabench draws as many unlabelled target
    images as source images (the authors draw twice as many).
    """

    name = "mme"
    task = "classification"
    target_labels = "required"
    hparams = {
        "lr": HParam(0.01, log_uniform(-3, -1.5), "initial SGD learning rate (inv decay)"),
        "batch_size": HParam(32, int_log2(4, 6), "images per domain per step", regimes={"digits": 32, "imagenet": 24}),
        "weight_decay": HParam(5e-4, None, "L2 penalty"),
        "lamda": HParam(0.1, log_uniform(-2, 0), "weight of the minimax entropy term"),
        "T": HParam(0.05, None, "temperature of the cosine classifier"),
        "hidden": HParam(0, None, "units of a linear layer before the cosine classifier (0: none)",
                         regimes={"digits": 0, "imagenet": 512}),
        "backbone_lr_mult": HParam(1.0, None, "the backbone's learning rate as a multiple of lr",
                                   regimes={"digits": 1.0, "imagenet": 0.1}),
        "freeze_backbone": ClassificationAlgorithm.hparams["freeze_backbone"],
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.featurizer = backbone
        self.classifier = CosinePredictor(backbone.out_features, num_classes, self.hp["T"], self.hp["hidden"])
        sgd = dict(momentum=0.9, weight_decay=self.hp["weight_decay"], nesterov=True)
        self.optims = {
            "g": torch.optim.SGD(backbone.parameters(), lr=self.hp["lr"] * self.hp["backbone_lr_mult"], **sgd),
            "f": torch.optim.SGD(self.classifier.parameters(), lr=self.hp["lr"], **sgd),
        }

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        self.inv(step, gamma=0.0001)
        x, y = batch.labeled_sources()  # source and labelled target, as their torch.cat((s, t))
        loss = F.cross_entropy(self.predict(x), y)
        self.optimise(loss, self.optims["g"], self.optims["f"])
        loss_t = adentropy(self.classifier(self.featurizer(batch.tgt_x), reverse=True), self.hp["lamda"])
        self.optimise(loss_t, self.optims["f"], self.optims["g"])
        return {"cls": loss.item(), "entropy": -loss_t.item() / self.hp["lamda"]}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
