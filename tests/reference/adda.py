"""ADDA: transcriptions of its authors' two training programs (TensorFlow 1), one step each.

Repository: erictzeng/adda, commit 383f655.
- tools/train.py (the source network: ``sparse_softmax_cross_entropy`` plus ``get_total_loss``'s
  regularisation, Adam at --lr with TensorFlow's other defaults); adda/models/lenet.py
  (``weights_regularizer=slim.l2_regularizer(2.5e-5)`` on every conv and fc weight: 2.5e-5 x
  sum(w^2) / 2);
- tools/train_adda.py (source and target networks, the adversary on their concatenated outputs,
  source label 0 and target 1, ``mapping_loss`` on the flipped labels for the target variables,
  ``adversary_loss`` for the adversary's, both minimised in one ``sess.run`` by one
  ``AdamOptimizer(lr, 0.5)``, no regularisation in either loss); adda/adversary.py
  (``adversarial_discriminator``: fully connected 500, 500 with ReLU under --adversary_relu, then 2);
- scripts/svhn-mnist.sh (10,000 iterations each, batch 128, lr 0.001 then 0.0002, adam).

Written in PyTorch: ``tf.nn.l2_loss`` as sum(w^2) / 2, the simultaneous steps as gradients of both
losses taken before either optimiser moves, ``torch.optim.Adam`` for TensorFlow's (epsilon's
placement differs: see the plugin's docstring). The networks are handed in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_loss(t):
    return (t ** 2).sum() / 2


class SourceTrainer:
    def __init__(self, net, lr=0.001, scale=2.5e-5):
        self.net, self.scale = net, scale
        self.optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def step(self, im_batch, label_batch):
        logits = self.net(im_batch)
        class_loss = F.cross_entropy(logits, label_batch)
        reg = sum(l2_loss(p) for p in self.net.parameters() if p.dim() > 1)
        loss = class_loss + self.scale * reg
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"cls": class_loss.item()}


class AddaTrainer:
    def __init__(self, source, target, adversary, lr=0.0002):
        self.source, self.target, self.adversary = source, target, adversary
        self.opt_target = torch.optim.Adam(target.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_adversary = torch.optim.Adam(adversary.parameters(), lr=lr, betas=(0.5, 0.999))

    def step(self, source_im_batch, target_im_batch):
        source_ft = self.source(source_im_batch)
        target_ft = self.target(target_im_batch)
        adversary_ft = torch.cat([source_ft, target_ft], 0)
        source_adversary_label = torch.zeros(source_ft.shape[0], dtype=torch.long)
        target_adversary_label = torch.ones(target_ft.shape[0], dtype=torch.long)
        adversary_label = torch.cat([source_adversary_label, target_adversary_label], 0)
        adversary_logits = self.adversary(adversary_ft)
        mapping_loss = F.cross_entropy(adversary_logits, 1 - adversary_label)
        adversary_loss = F.cross_entropy(adversary_logits, adversary_label)
        target_vars, adversary_vars = list(self.target.parameters()), list(self.adversary.parameters())
        g_map = torch.autograd.grad(mapping_loss, target_vars, retain_graph=True)
        g_adv = torch.autograd.grad(adversary_loss, adversary_vars)
        for p, g in zip(target_vars, g_map):
            p.grad = g
        for p, g in zip(adversary_vars, g_adv):
            p.grad = g
        self.opt_target.step()
        self.opt_adversary.step()
        return {"mapping": mapping_loss.item(), "adversary": adversary_loss.item()}
