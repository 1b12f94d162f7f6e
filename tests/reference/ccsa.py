"""CCSA's training step, transcribed from the authors' Keras code.

Repository samotiian/CCSA, commit 440ac9c85ad6da54abd616d149baece37812726d (2017-08-15):
- ``main.py`` lines 33-51: the siamese model. Both inputs go through the embedding g (shared
  weights); the first stream's embedding goes through Dropout(0.5) -> Dense(10) -> softmax (h);
  the second output is the Euclidean distance of the two embeddings. Loss weights 1 - alpha
  (categorical cross-entropy) and alpha (contrastive), alpha = 0.25; optimizer 'adadelta'.
- ``Initialization.py`` lines 45-59 (``Create_Pairs``): every (source, target) index pair, the
  same-class ones positives (label 1), all positives kept plus the first 3x as many of the shuffled
  negatives, the whole list shuffled; lines 119-133: distance sqrt(max(sum (a - b)^2, 1e-8)) and
  contrastive loss mean(y d^2 + (1 - y) max(1 - d, 0)^2); lines 176-185 (``training_the_model``):
  per batch of 256 pairs, ``train_on_batch([X1, X2], [y1, yc])`` then ``train_on_batch([X2, X1],
  [y2, yc])``, the second with the target labels.
- Keras 2.0 (what the code's API is): ``Adadelta(lr=1.0, rho=0.95, epsilon=1e-8)``, update
  a = rho a + (1 - rho) g^2; u = g sqrt(d + eps) / sqrt(a + eps); p -= lr u;
  d = rho d + (1 - rho) u^2. ``categorical_crossentropy`` on the softmax output: probabilities
  renormalised, clipped to [1e-7, 1 - 1e-7], -sum y log p, averaged over the batch.

Left out: loading the .npy splits, the 80 epochs, the test-set evaluation, the Keras network
(g and h are handed in). Pairs are made from one batch's source and labelled target samples (what a
dabench step sees) rather than from the whole training set, and the first batch of 256 of them is
trained on; the two shuffles draw ``torch.randperm`` from the global generator (Python's
``random.shuffle`` in the original) so that both sides of a parity test draw the same pairs.
"""
from __future__ import annotations

import torch
from torch import nn

ALPHA = 0.25
MARGIN = 1
NB_CLASSES = 10
BATCH_OF_PAIRS = 256
KERAS_EPSILON = 1e-7  # K.epsilon(), the cross-entropy's clip


def shuffle(items: list) -> list:
    return [items[k] for k in torch.randperm(len(items)).tolist()]


def create_pairs(y_source: list[int], y_target: list[int]) -> list[tuple[int, int]]:
    positives, negatives = [], []
    for s in range(len(y_source)):
        for t in range(len(y_target)):
            if y_source[s] == y_target[t]:
                positives.append((s, t))
            else:
                negatives.append((s, t))
    negatives = shuffle(negatives)
    training = positives + negatives[:3 * len(positives)]
    return shuffle(training)


def euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp((x - y).square().sum(1, keepdim=True), min=1e-8))


def contrastive_loss(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    return (y_true * y_pred.square() + (1 - y_true) * torch.clamp(MARGIN - y_pred, min=0).square()).mean()


def categorical_crossentropy(y_true: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    output = output / output.sum(-1, keepdim=True)
    output = torch.clamp(output, KERAS_EPSILON, 1 - KERAS_EPSILON)
    return -(y_true * torch.log(output)).sum(-1).mean()


class KerasAdadelta:
    def __init__(self, params, lr: float = 1.0, rho: float = 0.95, epsilon: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.rho, self.epsilon = lr, rho, epsilon
        self.accumulators = [torch.zeros_like(p) for p in self.params]
        self.delta_accumulators = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def apply(self, grads: list[torch.Tensor]) -> None:
        for p, g, a, d_a in zip(self.params, grads, self.accumulators, self.delta_accumulators):
            new_a = self.rho * a + (1. - self.rho) * g.square()
            a.copy_(new_a)
            update = g * torch.sqrt(d_a + self.epsilon) / torch.sqrt(new_a + self.epsilon)
            p.copy_(p - self.lr * update)
            d_a.copy_(self.rho * d_a + (1 - self.rho) * update.square())


class CCSAReference:
    """The authors' siamese model around a handed embedding ``g`` and classifier ``h`` (Dropout(0.5)
    -> Dense), trained as ``training_the_model`` trains it, one dabench batch at a time."""

    def __init__(self, g: nn.Module, h: nn.Module, nb_classes: int = NB_CLASSES, alpha: float = ALPHA,
                 batch_of_pairs: int = BATCH_OF_PAIRS):
        self.g, self.h, self.nb_classes, self.alpha = g, h, nb_classes, alpha
        self.batch_of_pairs = batch_of_pairs
        self.weights = list(g.parameters()) + list(h.parameters())
        self.optimizer = KerasAdadelta(self.weights)

    def train_on_batch(self, x_a: torch.Tensor, x_b: torch.Tensor, y_a: torch.Tensor, yc: torch.Tensor) -> dict:
        processed_a = self.g(x_a)
        processed_b = self.g(x_b)
        out1 = torch.softmax(self.h(processed_a), dim=-1)
        distance = euclidean_distance(processed_a, processed_b)
        classification = categorical_crossentropy(y_a, out1)
        csa = contrastive_loss(yc, distance)
        loss = (1 - self.alpha) * classification + self.alpha * csa
        grads = torch.autograd.grad(loss, [w for w in self.weights if w.requires_grad])
        self.optimizer.apply(grads)
        return {"loss": loss.item(), "classification": classification.item(), "CSA": csa.item()}

    def step(self, x_source, y_source, x_target, y_target) -> dict:
        training = create_pairs(y_source.tolist(), y_target.tolist())[:self.batch_of_pairs]
        if not training:
            return {}
        in1 = torch.tensor([s for s, _ in training])
        in2 = torch.tensor([t for _, t in training])
        X1, X2 = x_source[in1], x_target[in2]
        y1 = nn.functional.one_hot(y_source[in1], self.nb_classes).float()
        y2 = nn.functional.one_hot(y_target[in2], self.nb_classes).float()
        yc = (y_source[in1] == y_target[in2]).float()[:, None]
        self.g.train()
        self.h.train()
        first = self.train_on_batch(X1, X2, y1, yc)
        second = self.train_on_batch(X2, X1, y2, yc)
        return {"loss_1": first["loss"], "classification_1": first["classification"], "CSA_1": first["CSA"],
                "loss_2": second["loss"], "classification_2": second["classification"], "CSA_2": second["CSA"]}
