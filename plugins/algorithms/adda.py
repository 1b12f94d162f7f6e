"""ADDA (unsupervised DA): a source network trained first, then a copy of it mapped so that a
discriminator cannot tell its target outputs from the source network's."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dabench.algorithm import ClassificationAlgorithm, Stage, StageContext
from dabench.data import Batch
from dabench.hparams import HParam, log_uniform
from dabench.layers import mlp

SOURCE, ADAPT = "source", "adapt"


def l2_groups(module: nn.Module, scale: float) -> list[dict]:
    """The parameter groups of the authors' slim layers: weights with ``weights_regularizer=
    l2_regularizer(scale)`` (the loss gains scale x sum w^2 / 2, whose gradient is scale x w: weight
    decay ``scale``), biases unregularised."""
    weights = [p for p in module.parameters() if p.dim() > 1]
    biases = [p for p in module.parameters() if p.dim() <= 1]
    return [{"params": weights, "weight_decay": scale}, {"params": biases, "weight_decay": 0.0}]


class ADDA(ClassificationAlgorithm):
    """ADDA (Tzeng et al., CVPR 2017), two stages, as the authors' code (erictzeng/adda, commit
    383f655: tools/train.py, tools/train_adda.py, adda/adversary.py, scripts/svhn-mnist.sh):

    - ``source`` (``pretrain_steps``, 10,000): the source network (the backbone and ERM's head)
      on the source cross-entropy, Adam 1e-3, the L2 regulariser 2.5e-5 on every weight (their
      LeNet's slim layers; ``get_total_loss`` adds it), 128 images. Not evaluated: the predictor is
      the adapted network.
    - ``adapt`` (``--steps``; 10,000 in their script): the target network starts as a copy of the
      source network (every layer, the classifier included: their ``target`` scope restores the
      whole LeNet), the source network is frozen; a discriminator (fc 500 -> ReLU -> fc 500 -> ReLU
      -> fc 2, their --adversary_relu) reads the networks' outputs (the logits, as their
      ``model_fn`` returns them); each step, from the same weights, the discriminator descends the
      cross-entropy of the domain labels (source 0, target 1) and the target network the
      cross-entropy of the flipped labels, both means over the joint batch of 2 x 128 (the source
      half moves no target weight), each with Adam 2e-4, beta1 0.5; no regulariser in this stage
      (``tf.losses`` is used without ``get_total_loss``). The prediction is the target network's.

    TensorFlow's Adam places epsilon (1e-8) outside the bias correction; torch's inside: the
    effective epsilons differ by sqrt(1 - 0.999^t), far below float32 resolution for gradients
    above about 1e-4. The network is the bench's (their LeNet: conv 20, conv 50, fc 500, fc 10 on
    grey images).
    """

    name = "adda"
    task = "classification"
    hparams = {
        "lr": HParam(2e-4, log_uniform(-4.5, -3), "Adam's rate in the adversarial stage (beta1 0.5)"),
        "batch_size": HParam(128, None, "images per domain per step"),
        "pretrain_lr": HParam(1e-3, None, "Adam's rate in the source stage"),
        "pretrain_steps": HParam(10000, None, "steps of the source stage"),
        "l2": HParam(2.5e-5, None, "the source stage's L2 regulariser on weights"),
        "disc_hidden": HParam(500, None, "width of the discriminator's two hidden layers"),
        "freeze_backbone": ClassificationAlgorithm.hparams["freeze_backbone"],
    }

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.source = nn.Sequential(backbone, mlp([backbone.out_features, 100, num_classes]))
        self.target = copy.deepcopy(self.source)  # overwritten with the source network when adapt begins
        hidden = self.hp["disc_hidden"]
        self.discriminator = mlp([num_classes, hidden, hidden, 2])
        self.stage = SOURCE
        adam = dict(lr=self.hp["lr"], betas=(0.5, 0.999))
        self.optims = {"source": torch.optim.Adam(l2_groups(self.source, self.hp["l2"]), lr=self.hp["pretrain_lr"]),
                       "target": torch.optim.Adam(self.target.parameters(), **adam),
                       "discriminator": torch.optim.Adam(self.discriminator.parameters(), **adam)}

    def stages(self) -> list[Stage]:
        return [Stage(SOURCE, self.hp["pretrain_steps"], evaluate=False), Stage(ADAPT, self.steps)]

    def begin_stage(self, stage: Stage, ctx: StageContext, resumed: bool):
        self.stage = stage.name
        if stage.name == ADAPT:
            self.source.requires_grad_(False)
            if not resumed:
                self.target.load_state_dict(self.source.state_dict())
                self.optims["target"].state.clear()
        return ctx.data

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        x, y = batch.labeled_sources()
        if self.stage == SOURCE:
            loss = F.cross_entropy(self.source(x), y)
            self.optimise(loss, self.optims["source"])
            return {"cls": loss.item()}
        n = len(batch.src_x)
        with torch.no_grad():
            source_out = self.source(batch.src_x)
        outputs = torch.cat([source_out, self.target(batch.tgt_x)])
        labels = torch.cat([torch.zeros(n), torch.ones(len(batch.tgt_x))]).long().to(outputs.device)
        # both gradients at the same weights, as their one sess.run of both steps: the discriminator's
        # loss reaches only the discriminator (outputs detached), the mapping loss only the target
        # network (the discriminator's weights detached)
        adversary = F.cross_entropy(self.discriminator(outputs.detach()), labels)
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        mapping = F.cross_entropy(functional_call(self.discriminator, frozen, (outputs,)), 1 - labels)
        self.optimise(adversary + mapping, self.optims["target"], self.optims["discriminator"])
        return {"mapping": mapping.item(), "adversary": adversary.item()}

    def predict(self, x):
        return self.target(x)
