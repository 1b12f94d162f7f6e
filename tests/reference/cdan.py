"""CDAN and CDAN+E as the authors train digits: thuml/CDAN @c904cd3f (2021-08-25).

Transcribed from
- pytorch/train_uspsmnist.py lines 14-52 (``train``: one joint forward of source and target, the
  source cross-entropy, the CDAN term only when ``epoch > start_epoch``, ``optimizer.step()`` and,
  after the warm-up epoch, ``optimizer_ad.step()``) and lines 140-156 (``main`` for MNIST2USPS:
  start_epoch 1, decay_epoch 5, both optimisers SGD lr 0.01, momentum 0.9, weight decay 5e-4; at
  the start of every epoch divisible by decay_epoch the network's rate is halved, the
  discriminator's never);
- pytorch/loss.py lines 9-45 (``Entropy`` with eps 1e-5, ``grl_hook``, ``CDAN``: the softmax
  detached inside the outer product, BCELoss on the sigmoid over the joint batch, source 1 and
  target 0; with entropy: the hook on the entropy, weights 1 + exp(-H) normalised per domain,
  the weighted sum over the sum of the weights);
- pytorch/network.py lines 10-23 (``calc_coeff``, ``init_weights``) and 365-397
  (``AdversarialNetwork``: 500-500, ReLU, dropout 0.5, sigmoid; its ``iter_num`` advances at every
  training forward, and its input's gradient is reversed with calc_coeff(iter_num)).

Left out: data loading, logging, CUDA, the random layer (``--random``, off by default). The
network is handed in: ``features`` (the backbone and the head's hidden layer, the authors'
``model`` up to ``fc_params``) and ``fc`` (the last layer, their ``classifier``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reference.bsp import BSP


def calc_coeff(iter_num, high=1.0, low=0.0, alpha=10.0, max_iter=10000.0):
    return float(2.0 * (high - low) / (1.0 + np.exp(-alpha * iter_num / max_iter)) - (high - low) + low)


def Entropy(input_):
    epsilon = 1e-5
    entropy = -input_ * torch.log(input_ + epsilon)
    return torch.sum(entropy, dim=1)


def grl_hook(coeff):
    def fun1(grad):
        return -coeff * grad.clone()
    return fun1


class AdversarialNetwork(nn.Module):
    """Their layers and their forward, given the layers (so both sides start from one set of weights)."""

    def __init__(self, layers: nn.Sequential):
        super().__init__()
        self.ad_layer1, self.ad_layer2, self.ad_layer3 = layers[0], layers[3], layers[6]
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.dropout1, self.dropout2 = nn.Dropout(0.5), nn.Dropout(0.5)
        self.sigmoid = nn.Sigmoid()
        self.iter_num = 0

    def forward(self, x):
        if self.training:
            self.iter_num += 1
        coeff = calc_coeff(self.iter_num)
        x = x * 1.0
        x.register_hook(grl_hook(coeff))
        x = self.dropout1(self.relu1(self.ad_layer1(x)))
        x = self.dropout2(self.relu2(self.ad_layer2(x)))
        return self.sigmoid(self.ad_layer3(x))


def CDAN(input_list, ad_net, entropy=None, coeff=None):
    softmax_output = input_list[1].detach()
    feature = input_list[0]
    op_out = torch.bmm(softmax_output.unsqueeze(2), feature.unsqueeze(1))
    ad_out = ad_net(op_out.view(-1, softmax_output.size(1) * feature.size(1)))
    batch_size = softmax_output.size(0) // 2
    dc_target = torch.tensor([[1.0]] * batch_size + [[0.0]] * batch_size)
    if entropy is not None:
        entropy.register_hook(grl_hook(coeff))
        entropy = 1.0 + torch.exp(-entropy)
        source_mask = torch.ones_like(entropy)
        source_mask[feature.size(0) // 2:] = 0
        source_weight = entropy * source_mask
        target_mask = torch.ones_like(entropy)
        target_mask[0:feature.size(0) // 2] = 0
        target_weight = entropy * target_mask
        weight = source_weight / torch.sum(source_weight).detach().item() + \
            target_weight / torch.sum(target_weight).detach().item()
        return torch.sum(weight.view(-1, 1) * nn.BCELoss(reduction="none")(ad_out, dc_target)) / \
            torch.sum(weight).detach().item()
    return nn.BCELoss()(ad_out, dc_target)


class DigitTrainer:
    """train_uspsmnist.py's loop, one iteration at a time: ``epoch`` from 1, ``batch_idx`` from 0."""

    def __init__(self, features: nn.Module, fc: nn.Module, ad_layers: nn.Sequential, method: str,
                 lr: float = 0.01, start_epoch: int = 1, decay_epoch: int = 5, bsp: bool = False):
        self.features, self.fc, self.method, self.bsp = features, fc, method, bsp
        self.ad_net = AdversarialNetwork(ad_layers)
        self.start_epoch, self.decay_epoch = start_epoch, decay_epoch
        params = list(features.parameters()) + list(fc.parameters())
        self.optimizer = torch.optim.SGD(params, lr=lr, weight_decay=0.0005, momentum=0.9)
        self.optimizer_ad = torch.optim.SGD(self.ad_net.parameters(), lr=lr, weight_decay=0.0005, momentum=0.9)
        self.epoch = 0

    def start_epoch_if_new(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            if epoch % self.decay_epoch == 0:
                for param_group in self.optimizer.param_groups:
                    param_group["lr"] = param_group["lr"] * 0.5

    def step(self, epoch, batch_idx, num_iter, data_source, label_source, data_target) -> dict[str, float]:
        self.start_epoch_if_new(epoch)
        self.features.train(), self.fc.train(), self.ad_net.train()
        self.optimizer.zero_grad()
        self.optimizer_ad.zero_grad()
        feature = self.features(torch.cat((data_source, data_target), 0))
        output = self.fc(feature)
        loss = nn.CrossEntropyLoss()(output.narrow(0, 0, data_source.size(0)), label_source)
        logs = {"cls": loss.item()}
        softmax_output = nn.Softmax(dim=1)(output)
        if epoch > self.start_epoch:
            if self.method == "CDAN-E":
                entropy = Entropy(softmax_output)
                transfer = CDAN([feature, softmax_output], self.ad_net, entropy,
                                calc_coeff(num_iter * (epoch - self.start_epoch) + batch_idx))
            else:
                transfer = CDAN([feature, softmax_output], self.ad_net, None, None)
            logs["dom"] = transfer.item()
            logs["coeff"] = calc_coeff(self.ad_net.iter_num)
            loss = loss + transfer
            if self.bsp:  # tests/reference/bsp.py: with the transfer loss, as the BSP script adds it
                sigma = BSP(feature)
                logs["bsp"] = sigma.item()
                loss = loss + 0.0001 * sigma
        loss.backward()
        self.optimizer.step()
        if epoch > self.start_epoch:
            self.optimizer_ad.step()
        return logs
