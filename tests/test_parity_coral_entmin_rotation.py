"""Deep CORAL (DA and DG), entropy minimisation and rotation prediction, step for step against
transcriptions of their authors' code (tests/reference/coral.py, coral_dg.py, entmin.py,
rotation.py): 20 steps of each plugin's ``update`` and of the transcription from the same weights,
batches and random state; losses and parameters agree to harness.RTOL (1e-5 relative) after every
step, and the learning rates follow the bench's annealed schedule across a whole run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dabench.data import Batch
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from reference import harness
from reference.coral import DeepCORAL
from reference.coral_dg import DomainBedCORAL
from reference.entmin import EntropyMinimisation
from reference.rotation import SelfSupervisedDA

STEPS, SIZE = 20, 16


def build(name: str, regime: str, **overrides):
    torch.manual_seed(0)
    cls = algorithms.get(name)
    backbone = backbones.get("digit-cnn")(None, in_channels=3, image_size=SIZE, pretrained=None, num_classes=10)
    return cls(backbone, 10, defaults(cls.space("classification", regime)) | overrides, STEPS)


def bench_lr(algo, step: int) -> float:
    """The rate the bench anneals every classification method with (DANN's mu_0 / (1 + 10 p) ** 0.75),
    handed to the transcriptions in place of their own schedules."""
    return algo.hp["lr"] / (1 + 10 * step / (algo.steps - 1)) ** 0.75


def trained_logits(algo, scale: float) -> None:
    """The classifier's last layer scaled up so the logits start as large as training makes them
    (a fresh network's are near zero, and so are the CORAL and entropy gradients on them)."""
    with torch.no_grad():
        algo.classifier[-1].weight.mul_(scale)


def contrasted(batches: list[Batch]) -> list[Batch]:
    """A target of three times the source's contrast: logits with another covariance to align."""
    return [Batch(b.src_x, b.src_y, b.tgt_x * 3) for b in batches]


def sgd(params, algo) -> torch.optim.SGD:
    return torch.optim.SGD(list(params), lr=algo.hp["lr"], momentum=0.9, weight_decay=algo.hp["weight_decay"])


def modules(algo) -> list[nn.Module]:
    return [algo.featurizer, algo.classifier] + ([algo.rotation_head] if hasattr(algo, "rotation_head") else [])


def params(mods: list[nn.Module]) -> list[torch.Tensor]:
    return [p for m in mods for p in m.parameters()]


def test_the_learning_rates_follow_the_bench_schedule_across_a_whole_run():
    for name, extra in [("coral", {}), ("entmin", {}), ("rotation", {"lambda_rot": 0.5})]:
        cls = algorithms.get(name)
        backbone = backbones.get("digit-cnn")(None, in_channels=3, image_size=SIZE, pretrained=None, num_classes=10)
        algo = cls(backbone, 10, defaults(cls.space("classification", "digits")) | extra, 1000)
        for step in (0, 100, 500, 999):
            algo.anneal(step)
            assert algo.optims["model"].param_groups[0]["lr"] == pytest.approx(bench_lr(algo, step), rel=1e-12)
            if name == "rotation":  # the rotation step at lr_rotation / lr = lambda_rot of the classification rate
                assert algo.optims["rotation"].param_groups[0]["lr"] == pytest.approx(0.5 * bench_lr(algo, step), rel=1e-12)


# --- Deep CORAL, unsupervised DA: the Caffe CORALLoss layer on fc8 -------------------------------

# The weights the reference gets: the authors' Office-31 protofile (A->W) for ImageNet-size data;
# for digits, where they publish none, the paper's rule measured on mnist5k -> mnistm5k (see coral.py).
CORAL_WEIGHT = {"imagenet": 0.8, "digits": 1.0}


@pytest.mark.parametrize("regime", ["digits", "imagenet"])
def test_coral_matches_the_caffe_coral_layer_step_for_step(regime):
    algo = build("coral", regime)
    trained_logits(algo, 50.0)  # logits of std ~1.5
    featurizer, classifier = harness.twin(algo.featurizer), harness.twin(algo.classifier)
    net = nn.Sequential(featurizer, classifier)
    ref = DeepCORAL(net, CORAL_WEIGHT[regime], sgd(net.parameters(), algo))
    logs = harness.run_side_by_side(lambda i, b: algo.update(b, i),
                                    lambda i, b: ref.step(b.src_x, b.src_y, b.tgt_x, bench_lr(algo, i)),
                                    contrasted(harness.digit_batches(STEPS, size=SIZE)))
    harness.assert_losses_match(logs, {"cls": "classification_loss", "coral": "coral_fc8"})
    harness.assert_params_match(params(modules(algo)), params([featurizer, classifier]))
    assert logs[0][1]["coral_fc8"] > 0.01  # a term large enough that its weight shows in the parameters


# --- CORAL in domain generalisation: DomainBed's mean + covariance penalty ------------------------

def dg_batches(steps: int, domains: int = 3, per_domain: int = 8) -> list[Batch]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(steps):
        x = torch.cat([torch.rand(per_domain, 3, SIZE, SIZE, generator=g) * (1 + d) - 0.5 * d for d in range(domains)])
        y = torch.randint(0, 10, (domains * per_domain,), generator=g)
        out.append(Batch(x, y, None, src_domain=torch.arange(domains).repeat_interleave(per_domain)))
    return out


def test_coral_dg_matches_domainbed_step_for_step():
    algo = build("coral", "digits")
    assert algo.hp["mmd_gamma"] == 1.0  # DomainBed's default
    featurizer, classifier = harness.twin(algo.featurizer), harness.twin(algo.classifier)
    ref = DomainBedCORAL(featurizer, classifier, 1.0, sgd(params([featurizer, classifier]), algo))

    def reference_step(i, b):
        minibatches = [(b.src_x[b.src_domain == d], b.src_y[b.src_domain == d]) for d in range(3)]
        return ref.update(minibatches, bench_lr(algo, i))

    logs = harness.run_side_by_side(lambda i, b: algo.update(b, i), reference_step, dg_batches(STEPS))
    harness.assert_losses_match(logs, {"cls": "loss", "coral": "penalty"})
    harness.assert_params_match(params(modules(algo)), params([featurizer, classifier]))


# --- entropy minimisation: the paper's criterion --------------------------------------------------

def test_entmin_matches_the_papers_criterion_step_for_step():
    algo = build("entmin", "digits")
    trained_logits(algo, 10.0)
    featurizer, classifier = harness.twin(algo.featurizer), harness.twin(algo.classifier)
    net = nn.Sequential(featurizer, classifier)
    batch, lam = 16, 0.1  # TLlib's --trade-off-entropy
    n_l, n_u = batch, batch
    ref = EntropyMinimisation(net, 10, lam * (n_l + n_u) * n_l / n_u, sgd(net.parameters(), algo))
    logs = harness.run_side_by_side(lambda i, b: algo.update(b, i),
                                    lambda i, b: ref.step(b.src_x, b.src_y, b.tgt_x, bench_lr(algo, i)),
                                    harness.digit_batches(STEPS, batch=batch, size=SIZE))
    harness.assert_losses_match(logs, {"cls": "ce", "ent": "entropy"})
    harness.assert_params_match(params(modules(algo)), params([featurizer, classifier]))


# --- rotation prediction: uda_release's two optimisers --------------------------------------------

@pytest.mark.parametrize("regime, digit", [("digits", True), ("imagenet", False)])
def test_rotation_matches_uda_release_step_for_step(regime, digit):
    algo = build("rotation", regime, weight_decay=5e-4)  # the authors' weight decay, so both optimisers apply it
    featurizer, classifier, head = (harness.twin(m) for m in modules(algo))
    net = nn.Sequential(featurizer, classifier)
    lr = algo.hp["lr"]
    ref = SelfSupervisedDA(net, featurizer, head, digit, lr=lr, lr_rotation=lr, weight_decay=5e-4,
                           net_parameters=list(net.parameters()))
    logs = harness.run_side_by_side(lambda i, b: algo.update(b, i),
                                    lambda i, b: ref.step(b.src_x, b.src_y, b.tgt_x, bench_lr(algo, i)),
                                    harness.digit_batches(STEPS, size=SIZE))
    harness.assert_losses_match(logs, {"cls": "loss_cls", "rot": "loss_rot"})
    harness.assert_params_match(params(modules(algo)), params([featurizer, classifier, head]))
