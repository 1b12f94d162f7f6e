"""DomainBed's MMD (domain generalisation) against a transcription of DomainBed's update
(tests/reference/mmd_dg.py): the same weights and batches, DomainBed's Adam on both sides; the
losses and every parameter after every step agree to 1e-5 relative, 1e-6 absolute (harness.RTOL,
ATOL)."""
from __future__ import annotations

import pytest
import torch

from dabench.data import Batch
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from reference import mmd_dg
from reference.harness import assert_losses_match, assert_params_match, run_side_by_side, twin

STEPS = 20


pytestmark = pytest.mark.usefixtures("one_thread")


def build(**hp):
    cls = algorithms.get("mmd")
    torch.manual_seed(0)
    backbone = backbones.get("digit-cnn")(None, image_size=28)
    return cls(backbone, 10, defaults(cls.space("classification", "digits")) | hp, STEPS)


def dg_batches(steps: int, per_domain: int = 8, domains: int = 3) -> list[Batch]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(steps):
        x = torch.cat([torch.rand(per_domain, 3, 28, 28, generator=g) * 2 - 1 + 0.2 * d for d in range(domains)])
        y = torch.randperm(per_domain * domains, generator=g) % 10
        out.append(Batch(x, y, None, src_domain=torch.arange(domains).repeat_interleave(per_domain)))
    return out


def test_mmd_matches_domainbed_step_for_step():
    """The objective, the penalty, the per-domain forward passes and Adam (lr 1e-3, no weight decay)
    are DomainBed's; the network (backbone and ERM's head) is handed to both sides."""
    algo = build()
    algo.train()
    db = mmd_dg.DomainBedMMD(twin(algo.featurizer), twin(algo.classifier), mmd_gamma=1.0)

    def reference_step(i, b):
        out = db.update([(b.src_x[b.src_domain == d], b.src_y[b.src_domain == d]) for d in range(3)])
        assert_params_match([*algo.featurizer.parameters(), *algo.classifier.parameters()], db.network.parameters(),
                            what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, dg_batches(STEPS))
    assert_losses_match(logs, {"cls": "loss", "mmd": "penalty"})
    assert min(a["mmd"] for a, _ in logs) > 1e-3


def test_mmd_defaults_are_domainbeds_small_image_setting():
    hp = defaults(algorithms.get("mmd").space("classification", "digits"))
    assert (hp["lr"], hp["batch_size"], hp["weight_decay"], hp["mmd_gamma"], hp["optimizer"]) == (1e-3, 64, 0.0, 1.0, "adam")
    algo = build()
    optim = algo.optims["model"]
    assert isinstance(optim, torch.optim.Adam) and optim.param_groups[0]["weight_decay"] == 0.0
    before = optim.param_groups[0]["lr"]
    algo.update(dg_batches(1)[0], 15)
    assert optim.param_groups[0]["lr"] == before == 1e-3  # DomainBed's rate is constant
