"""DomainBed's IRM, V-REx and GroupDRO (domain generalisation): transcriptions of their ``update``.

Repository: facebookresearch/DomainBed, commit b93c22a1cfc3b2428398272c1a116c8de1f4139e,
domainbed/algorithms.py lines 581-634 (``IRM``: ``_irm_penalty``, ``update``, the Adam reset),
lines 745-789 (``VREx``), lines 791-820 (``Mixup``), lines 1248-1302 (``RSC``), lines 1417-1503 (``SelfReg``), lines 823-855 (``GroupDRO``), lines 857-970 (``MLDG``), lines 392-449 (``Fish``; networks.py lines 262-280
``WholeFish``; lib/misc.py lines 252-286 ``ParamDict``), lines
2272-2367 (``AbstractCausIRL`` and the ``CausIRL_MMD`` / ``CausIRL_CORAL`` it builds), lines
107-111 (ERM's Adam, which all of them inherit); domainbed/lib/misc.py lines 180-194
(``random_pairs_of_minibatches``), 196-211 (``split_meta_train_test``), 42-49 (``l2_between_dicts``) and 75-102
(``MovingAverage``), algorithms.py lines 1571-1699 (``Fishr``); domainbed/hparams_registry.py lines 89-92 (irm_lambda 1e2,
irm_penalty_anneal_iters 500), 82-84 (rsc drop factors 1/3), 94-95 (mixup_alpha 0.2), 97-98 (groupdro_eta 1e-2), 100-101
(mmd_gamma 1, CausIRL's too), 110-113 (vrex_lambda 1e1, vrex_penalty_anneal_iters 500), 205-219
(lr 1e-3, weight decay 0 on small images), 59-60 (meta_lr 0.5), 128-131 (Fishr: lambda 1000,
penalty_anneal_iters 1500, ema 0.95).

Left out: the featurizer and classifier DomainBed builds (handed in as one network: the parity test
gives a copy of the plugin's), the ``device`` strings (CPU here), logging beyond the losses.
``update_count`` is a plain int. Fish's
clone is a deep copy of the handed network loaded with its state (WholeFish builds a fresh network
first, drawing random initial weights it then overwrites: only the random stream differs).
"""
from __future__ import annotations

import copy
import operator
from collections import OrderedDict
from itertools import cycle
from numbers import Number

import numpy as np
import torch
import torch.nn.functional as F
from torch import autograd, nn


def adam(network: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)


class DomainBedIRM:
    def __init__(self, network: nn.Module, irm_lambda: float = 1e2, irm_penalty_anneal_iters: int = 500):
        self.network, self.irm_lambda, self.anneal = network, irm_lambda, irm_penalty_anneal_iters
        self.optimizer = adam(network)
        self.update_count = 0

    @staticmethod
    def _irm_penalty(logits, y):
        scale = torch.tensor(1.).requires_grad_()
        loss_1 = F.cross_entropy(logits[::2] * scale, y[::2])
        loss_2 = F.cross_entropy(logits[1::2] * scale, y[1::2])
        grad_1 = autograd.grad(loss_1, [scale], create_graph=True)[0]
        grad_2 = autograd.grad(loss_2, [scale], create_graph=True)[0]
        result = torch.sum(grad_1 * grad_2)
        return result

    def update(self, minibatches):
        penalty_weight = self.irm_lambda if self.update_count >= self.anneal else 1.0
        nll = 0.
        penalty = 0.

        all_x = torch.cat([x for x, y in minibatches])
        all_logits = self.network(all_x)
        all_logits_idx = 0
        for i, (x, y) in enumerate(minibatches):
            logits = all_logits[all_logits_idx:all_logits_idx + x.shape[0]]
            all_logits_idx += x.shape[0]
            nll += F.cross_entropy(logits, y)
            penalty += self._irm_penalty(logits, y)
        nll /= len(minibatches)
        penalty /= len(minibatches)
        loss = nll + (penalty_weight * penalty)

        if self.update_count == self.anneal:
            self.optimizer = adam(self.network)

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        self.update_count += 1
        return {'loss': loss.item(), 'nll': nll.item(), 'penalty': penalty.item()}


class DomainBedVREx:
    def __init__(self, network: nn.Module, vrex_lambda: float = 1e1, vrex_penalty_anneal_iters: int = 500):
        self.network, self.vrex_lambda, self.anneal = network, vrex_lambda, vrex_penalty_anneal_iters
        self.optimizer = adam(network)
        self.update_count = 0

    def update(self, minibatches):
        if self.update_count >= self.anneal:
            penalty_weight = self.vrex_lambda
        else:
            penalty_weight = 1.0

        nll = 0.

        all_x = torch.cat([x for x, y in minibatches])
        all_logits = self.network(all_x)
        all_logits_idx = 0
        losses = torch.zeros(len(minibatches))
        for i, (x, y) in enumerate(minibatches):
            logits = all_logits[all_logits_idx:all_logits_idx + x.shape[0]]
            all_logits_idx += x.shape[0]
            nll = F.cross_entropy(logits, y)
            losses[i] = nll

        mean = losses.mean()
        penalty = ((losses - mean) ** 2).mean()
        loss = mean + penalty_weight * penalty

        if self.update_count == self.anneal:
            self.optimizer = adam(self.network)

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        self.update_count += 1
        return {'loss': loss.item(), 'nll': nll.item(), 'mean': mean.item(), 'penalty': penalty.item()}


class DomainBedGroupDRO:
    def __init__(self, network: nn.Module, groupdro_eta: float = 1e-2):
        self.network, self.eta = network, groupdro_eta
        self.optimizer = adam(network)
        self.q = torch.Tensor()

    def update(self, minibatches):
        if not len(self.q):
            self.q = torch.ones(len(minibatches))

        losses = torch.zeros(len(minibatches))

        for m in range(len(minibatches)):
            x, y = minibatches[m]
            losses[m] = F.cross_entropy(self.network(x), y)
            self.q[m] *= (self.eta * losses[m].data).exp()

        self.q /= self.q.sum()

        loss = torch.dot(losses, self.q)

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        return {'loss': loss.item(), **{f'q{m}': float(w) for m, w in enumerate(self.q)}}


def random_pairs_of_minibatches(minibatches):
    perm = torch.randperm(len(minibatches)).tolist()
    pairs = []

    for i in range(len(minibatches)):
        j = i + 1 if i < (len(minibatches) - 1) else 0

        xi, yi = minibatches[perm[i]][0], minibatches[perm[i]][1]
        xj, yj = minibatches[perm[j]][0], minibatches[perm[j]][1]

        min_n = min(len(xi), len(xj))

        pairs.append(((xi[:min_n], yi[:min_n]), (xj[:min_n], yj[:min_n])))

    return pairs


class DomainBedMixup:
    def __init__(self, network: nn.Module, mixup_alpha: float = 0.2):
        self.network, self.alpha = network, mixup_alpha
        self.optimizer = adam(network)

    def update(self, minibatches):
        objective = 0

        for (xi, yi), (xj, yj) in random_pairs_of_minibatches(minibatches):
            lam = np.random.beta(self.alpha, self.alpha)

            x = lam * xi + (1 - lam) * xj
            predictions = self.network(x)

            objective += lam * F.cross_entropy(predictions, yi)
            objective += (1 - lam) * F.cross_entropy(predictions, yj)

        objective /= len(minibatches)

        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()

        return {'loss': objective.item()}


class DomainBedCausIRL:
    def __init__(self, featurizer: nn.Module, classifier: nn.Module, gaussian: bool, mmd_gamma: float = 1.0):
        self.featurizer, self.classifier, self.mmd_gamma = featurizer, classifier, mmd_gamma
        self.network = nn.Sequential(featurizer, classifier)
        self.optimizer = adam(self.network)
        self.kernel_type = "gaussian" if gaussian else "mean_cov"

    def my_cdist(self, x1, x2):
        x1_norm = x1.pow(2).sum(dim=-1, keepdim=True)
        x2_norm = x2.pow(2).sum(dim=-1, keepdim=True)
        res = torch.addmm(x2_norm.transpose(-2, -1), x1, x2.transpose(-2, -1), alpha=-2).add_(x1_norm)
        return res.clamp_min_(1e-30)

    def gaussian_kernel(self, x, y, gamma=[0.001, 0.01, 0.1, 1, 10, 100, 1000]):
        D = self.my_cdist(x, y)
        K = torch.zeros_like(D)

        for g in gamma:
            K.add_(torch.exp(D.mul(-g)))

        return K

    def mmd(self, x, y):
        if self.kernel_type == "gaussian":
            Kxx = self.gaussian_kernel(x, x).mean()
            Kyy = self.gaussian_kernel(y, y).mean()
            Kxy = self.gaussian_kernel(x, y).mean()
            return Kxx + Kyy - 2 * Kxy
        else:
            mean_x = x.mean(0, keepdim=True)
            mean_y = y.mean(0, keepdim=True)
            cent_x = x - mean_x
            cent_y = y - mean_y
            cova_x = (cent_x.t() @ cent_x) / (len(x) - 1)
            cova_y = (cent_y.t() @ cent_y) / (len(y) - 1)

            mean_diff = (mean_x - mean_y).pow(2).mean()
            cova_diff = (cova_x - cova_y).pow(2).mean()

            return mean_diff + cova_diff

    def update(self, minibatches):
        objective = 0
        penalty = 0
        nmb = len(minibatches)

        features = [self.featurizer(xi) for xi, _ in minibatches]
        classifs = [self.classifier(fi) for fi in features]
        targets = [yi for _, yi in minibatches]

        first = None
        second = None

        for i in range(nmb):
            objective += F.cross_entropy(classifs[i] + 1e-16, targets[i])
            slice = np.random.randint(0, len(features[i]))
            if first is None:
                first = features[i][:slice]
                second = features[i][slice:]
            else:
                first = torch.cat((first, features[i][:slice]), 0)
                second = torch.cat((second, features[i][slice:]), 0)
        if len(first) > 1 and len(second) > 1:
            penalty = torch.nan_to_num(self.mmd(first, second))
        else:
            penalty = torch.tensor(0)
        objective /= nmb

        self.optimizer.zero_grad()
        (objective + (self.mmd_gamma * penalty)).backward()
        self.optimizer.step()

        if torch.is_tensor(penalty):
            penalty = penalty.item()

        return {'loss': objective.item(), 'penalty': penalty}


class DomainBedRSC:
    def __init__(self, featurizer: nn.Module, classifier: nn.Module, num_classes: int,
                 rsc_f_drop_factor: float = 1 / 3, rsc_b_drop_factor: float = 1 / 3):
        self.featurizer, self.classifier = featurizer, classifier
        self.network = nn.Sequential(featurizer, classifier)
        self.optimizer = adam(self.network)
        self.drop_f = (1 - rsc_f_drop_factor) * 100
        self.drop_b = (1 - rsc_b_drop_factor) * 100
        self.num_classes = num_classes

    def update(self, minibatches):
        device = "cpu"

        # inputs
        all_x = torch.cat([x for x, y in minibatches])
        # labels
        all_y = torch.cat([y for _, y in minibatches])
        # one-hot labels
        all_o = torch.nn.functional.one_hot(all_y, self.num_classes)
        # features
        all_f = self.featurizer(all_x)
        # predictions
        all_p = self.classifier(all_f)

        # Equation (1): compute gradients with respect to representation
        all_g = autograd.grad((all_p * all_o).sum(), all_f)[0]

        # Equation (2): compute top-gradient-percentile mask
        percentiles = np.percentile(all_g.cpu(), self.drop_f, axis=1)
        percentiles = torch.Tensor(percentiles)
        percentiles = percentiles.unsqueeze(1).repeat(1, all_g.size(1))
        mask_f = all_g.lt(percentiles.to(device)).float()

        # Equation (3): mute top-gradient-percentile activations
        all_f_muted = all_f * mask_f

        # Equation (4): compute muted predictions
        all_p_muted = self.classifier(all_f_muted)

        # Section 3.3: Batch Percentage
        all_s = F.softmax(all_p, dim=1)
        all_s_muted = F.softmax(all_p_muted, dim=1)
        changes = (all_s * all_o).sum(1) - (all_s_muted * all_o).sum(1)
        percentile = np.percentile(changes.detach().cpu(), self.drop_b)
        mask_b = changes.lt(percentile).float().view(-1, 1)
        mask = torch.logical_or(mask_f, mask_b).float()

        # Equations (3) and (4) again, this time mutting over examples
        all_p_muted_again = self.classifier(all_f * mask)

        # Equation (5): update
        loss = F.cross_entropy(all_p_muted_again, all_y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        return {'loss': loss.item(), 'muted': 1 - mask.mean().item()}


class DomainBedSelfReg:
    """The projector ``cdpl`` is handed in (the plugin's, copied); ERM's Adam, built before it in
    DomainBed, holds the featurizer and the classifier only."""

    def __init__(self, featurizer: nn.Module, classifier: nn.Module, cdpl: nn.Module):
        self.featurizer, self.classifier, self.cdpl = featurizer, classifier, cdpl
        self.network = nn.Sequential(featurizer, classifier)
        self.optimizer = adam(self.network)
        self.MSEloss = nn.MSELoss()

    def update(self, minibatches):

        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for _, y in minibatches])

        lam = np.random.beta(0.5, 0.5)

        batch_size = all_y.size()[0]

        # cluster and order features into same-class group
        with torch.no_grad():
            sorted_y, indices = torch.sort(all_y)
            sorted_x = torch.zeros_like(all_x)
            for idx, order in enumerate(indices):
                sorted_x[idx] = all_x[order]
            intervals = []
            ex = 0
            for idx, val in enumerate(sorted_y):
                if ex == val:
                    continue
                intervals.append(idx)
                ex = val
            intervals.append(batch_size)

            all_x = sorted_x
            all_y = sorted_y

        feat = self.featurizer(all_x)
        proj = self.cdpl(feat)

        output = self.classifier(feat)

        # shuffle
        output_2 = torch.zeros_like(output)
        feat_2 = torch.zeros_like(proj)
        output_3 = torch.zeros_like(output)
        feat_3 = torch.zeros_like(proj)
        ex = 0
        for end in intervals:
            shuffle_indices = torch.randperm(end - ex) + ex
            shuffle_indices2 = torch.randperm(end - ex) + ex
            for idx in range(end - ex):
                output_2[idx + ex] = output[shuffle_indices[idx]]
                feat_2[idx + ex] = proj[shuffle_indices[idx]]
                output_3[idx + ex] = output[shuffle_indices2[idx]]
                feat_3[idx + ex] = proj[shuffle_indices2[idx]]
            ex = end

        # mixup
        output_3 = lam * output_2 + (1 - lam) * output_3
        feat_3 = lam * feat_2 + (1 - lam) * feat_3

        # regularization
        L_ind_logit = self.MSEloss(output, output_2)
        L_hdl_logit = self.MSEloss(output, output_3)
        L_ind_feat = 0.3 * self.MSEloss(feat, feat_2)
        L_hdl_feat = 0.3 * self.MSEloss(feat, feat_3)

        cl_loss = F.cross_entropy(output, all_y)
        C_scale = min(cl_loss.item(), 1.)
        loss = cl_loss + C_scale * (lam * (L_ind_logit + L_ind_feat) + (1 - lam) * (L_hdl_logit + L_hdl_feat))

        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

        return {'loss': loss.item(), 'cls': cl_loss.item()}


def split_meta_train_test(minibatches, num_meta_test=1):
    n_domains = len(minibatches)
    perm = torch.randperm(n_domains).tolist()
    pairs = []
    meta_train = perm[:(n_domains - num_meta_test)]
    meta_test = perm[-num_meta_test:]

    for i, j in zip(meta_train, cycle(meta_test)):
        xi, yi = minibatches[i][0], minibatches[i][1]
        xj, yj = minibatches[j][0], minibatches[j][1]

        min_n = min(len(xi), len(xj))
        pairs.append(((xi[:min_n], yi[:min_n]), (xj[:min_n], yj[:min_n])))

    return pairs


class DomainBedMLDG:
    def __init__(self, network: nn.Module, mldg_beta: float = 1.0, n_meta_test: int = 2,
                 lr: float = 1e-3, weight_decay: float = 0.0):
        self.network, self.beta, self.num_meta_test = network, mldg_beta, n_meta_test
        self.lr, self.weight_decay = lr, weight_decay
        self.optimizer = adam(network, lr, weight_decay)

    def update(self, minibatches):
        num_mb = len(minibatches)
        objective = 0

        self.optimizer.zero_grad()
        for p in self.network.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)

        for (xi, yi), (xj, yj) in split_meta_train_test(minibatches, self.num_meta_test):
            inner_net = copy.deepcopy(self.network)

            inner_opt = torch.optim.Adam(inner_net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

            inner_obj = F.cross_entropy(inner_net(xi), yi)

            inner_opt.zero_grad()
            inner_obj.backward()
            inner_opt.step()

            for p_tgt, p_src in zip(self.network.parameters(), inner_net.parameters()):
                if p_src.grad is not None:
                    p_tgt.grad.data.add_(p_src.grad.data / num_mb)

            objective += inner_obj.item()

            loss_inner_j = F.cross_entropy(inner_net(xj), yj)
            grad_inner_j = autograd.grad(loss_inner_j, inner_net.parameters(), allow_unused=True)

            objective += (self.beta * loss_inner_j).item()

            for p, g_j in zip(self.network.parameters(), grad_inner_j):
                if g_j is not None:
                    p.grad.data.add_(self.beta * g_j.data / num_mb)

        objective /= len(minibatches)

        self.optimizer.step()

        return {'loss': objective}


class ParamDict(OrderedDict):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, *kwargs)

    def _prototype(self, other, op):
        if isinstance(other, Number):
            return ParamDict({k: op(v, other) for k, v in self.items()})
        elif isinstance(other, dict):
            return ParamDict({k: op(self[k], other[k]) for k in self})
        else:
            raise NotImplementedError

    def __add__(self, other):
        return self._prototype(other, operator.add)

    def __rmul__(self, other):
        return self._prototype(other, operator.mul)

    __mul__ = __rmul__

    def __neg__(self):
        return ParamDict({k: -v for k, v in self.items()})

    def __rsub__(self, other):
        return self.__add__(other.__neg__())

    __sub__ = __rsub__


class DomainBedFish:
    def __init__(self, network: nn.Module, meta_lr: float = 0.5):
        self.network, self.meta_lr = network, meta_lr
        self.optimizer_inner_state = None

    def create_clone(self):
        self.network_inner = copy.deepcopy(self.network)
        self.network_inner.load_state_dict(copy.deepcopy(self.network.state_dict()))
        self.optimizer_inner = adam(self.network_inner)
        if self.optimizer_inner_state is not None:
            self.optimizer_inner.load_state_dict(self.optimizer_inner_state)

    def fish(self, meta_weights, inner_weights, lr_meta):
        meta_weights = ParamDict(meta_weights)
        inner_weights = ParamDict(inner_weights)
        meta_weights += lr_meta * (inner_weights - meta_weights)
        return meta_weights

    def update(self, minibatches):
        self.create_clone()

        for x, y in minibatches:
            loss = F.cross_entropy(self.network_inner(x), y)
            self.optimizer_inner.zero_grad()
            loss.backward()
            self.optimizer_inner.step()

        self.optimizer_inner_state = self.optimizer_inner.state_dict()
        meta_weights = self.fish(meta_weights=self.network.state_dict(), inner_weights=self.network_inner.state_dict(),
                                 lr_meta=self.meta_lr)
        self.network.load_state_dict(copy.deepcopy(meta_weights))

        return {'loss': loss.item()}


class MovingAverage:
    def __init__(self, ema, oneminusema_correction=True):
        self.ema = ema
        self.ema_data = {}
        self._updates = 0
        self._oneminusema_correction = oneminusema_correction

    def update(self, dict_data):
        ema_dict_data = {}
        for name, data in dict_data.items():
            data = data.view(1, -1)
            if self._updates == 0:
                previous_data = torch.zeros_like(data)
            else:
                previous_data = self.ema_data[name]

            ema_data = self.ema * previous_data + (1 - self.ema) * data
            if self._oneminusema_correction:
                ema_dict_data[name] = ema_data / (1 - self.ema)
            else:
                ema_dict_data[name] = ema_data
            self.ema_data[name] = ema_data.clone().detach()

        self._updates += 1
        return ema_dict_data


def l2_between_dicts(dict_1, dict_2):
    assert len(dict_1) == len(dict_2)
    dict_1_values = [dict_1[key] for key in sorted(dict_1.keys())]
    dict_2_values = [dict_2[key] for key in sorted(dict_1.keys())]
    return (
        torch.cat(tuple([t.view(-1) for t in dict_1_values])) -
        torch.cat(tuple([t.view(-1) for t in dict_2_values]))
    ).pow(2).mean()


class DomainBedFishr:
    """DomainBed's ``Fishr`` (algorithms.py lines 1571-1699). BackPACK's ``BatchGrad`` (the
    individual gradients of ``CrossEntropyLoss(reduction='none')(...).sum()`` with respect to the
    classifier's parameters, with create_graph) is replaced by one ``autograd.grad`` per sample
    with create_graph: the same rows, by the definition of an individual gradient."""

    def __init__(self, featurizer: nn.Module, classifier: nn.Module, num_domains: int, lambda_: float = 1000.,
                 penalty_anneal_iters: int = 1500, ema: float = 0.95):
        self.featurizer, self.classifier, self.num_domains = featurizer, classifier, num_domains
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.hparams = {"lambda": lambda_, "penalty_anneal_iters": penalty_anneal_iters, "ema": ema}
        self.update_count = 0
        self.bce_extended = nn.CrossEntropyLoss(reduction='none')
        self.ema_per_domain = [MovingAverage(ema=self.hparams["ema"], oneminusema_correction=True)
                               for _ in range(self.num_domains)]
        self._init_optimizer()

    def _init_optimizer(self):
        self.optimizer = torch.optim.Adam(list(self.featurizer.parameters()) + list(self.classifier.parameters()),
                                          lr=1e-3, weight_decay=0.)

    def update(self, minibatches):
        assert len(minibatches) == self.num_domains
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])
        len_minibatches = [x.shape[0] for x, y in minibatches]

        all_z = self.featurizer(all_x)
        all_logits = self.classifier(all_z)

        penalty = self.compute_fishr_penalty(all_logits, all_y, len_minibatches)
        all_nll = F.cross_entropy(all_logits, all_y)

        penalty_weight = 0
        if self.update_count >= self.hparams["penalty_anneal_iters"]:
            penalty_weight = self.hparams["lambda"]
            if self.update_count == self.hparams["penalty_anneal_iters"] != 0:
                self._init_optimizer()
        self.update_count += 1

        objective = all_nll + penalty_weight * penalty
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()

        return {'loss': objective.item(), 'nll': all_nll.item(), 'penalty': penalty.item()}

    def compute_fishr_penalty(self, all_logits, all_y, len_minibatches):
        dict_grads = self._get_grads(all_logits, all_y)
        grads_var_per_domain = self._get_grads_var_per_domain(dict_grads, len_minibatches)
        return self._compute_distance_grads_var(grads_var_per_domain)

    def _get_grads(self, logits, y):
        self.optimizer.zero_grad()
        losses = self.bce_extended(logits, y)
        names, params = zip(*self.classifier.named_parameters())
        rows = [autograd.grad(losses[i], params, retain_graph=True, create_graph=True) for i in range(len(losses))]
        dict_grads = OrderedDict(
            [
                (name, torch.stack([row[j] for row in rows]).view(len(rows), -1))
                for j, name in enumerate(names)
            ]
        )
        return dict_grads

    def _get_grads_var_per_domain(self, dict_grads, len_minibatches):
        grads_var_per_domain = [{} for _ in range(self.num_domains)]
        for name, _grads in dict_grads.items():
            all_idx = 0
            for domain_id, bsize in enumerate(len_minibatches):
                env_grads = _grads[all_idx:all_idx + bsize]
                all_idx += bsize
                env_mean = env_grads.mean(dim=0, keepdim=True)
                env_grads_centered = env_grads - env_mean
                grads_var_per_domain[domain_id][name] = (env_grads_centered).pow(2).mean(dim=0)

        for domain_id in range(self.num_domains):
            grads_var_per_domain[domain_id] = self.ema_per_domain[domain_id].update(
                grads_var_per_domain[domain_id]
            )

        return grads_var_per_domain

    def _compute_distance_grads_var(self, grads_var_per_domain):
        grads_var = OrderedDict(
            [
                (
                    name,
                    torch.stack(
                        [
                            grads_var_per_domain[domain_id][name]
                            for domain_id in range(self.num_domains)
                        ],
                        dim=0
                    ).mean(dim=0)
                )
                for name in grads_var_per_domain[0].keys()
            ]
        )

        penalty = 0
        for domain_id in range(self.num_domains):
            penalty += l2_between_dicts(grads_var_per_domain[domain_id], grads_var)
        return penalty / self.num_domains
