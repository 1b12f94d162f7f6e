"""DomainBed's IRM, V-REx, GroupDRO, Mixup and CausIRL against transcriptions of DomainBed's updates
(tests/reference/domainbed_dg.py): the same weights and batches, DomainBed's Adam on both sides,
the penalty's warm-up crossed (anneal 5 of 12 steps: the weight jumps and Adam restarts there);
the losses and every parameter after every step agree to 1e-5 relative, 1e-6 absolute."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dabench.data import Batch
from dabench.errors import DabenchError
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from reference import domainbed_dg
from test_dg import toy_mid  # noqa: F401 - registers the third toy domain
from reference.harness import assert_losses_match, assert_params_match, run_side_by_side, twin

STEPS, WARM = 12, 5

pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, **hp):
    cls = algorithms.get(name)
    torch.manual_seed(0)
    backbone = backbones.get("digit-cnn")(None, image_size=28)
    return cls(backbone, 10, defaults(cls.space("classification", "digits")) | hp, STEPS)


def dg_batches(steps: int, per_domain: int = 8, domains: int = 3, dtype: torch.dtype = torch.float32) -> list[Batch]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(steps):
        x = torch.cat([torch.rand(per_domain, 3, 28, 28, generator=g) * 2 - 1 + 0.3 * d for d in range(domains)]).to(dtype)
        y = torch.randperm(per_domain * domains, generator=g) % 10
        out.append(Batch(x, y, None, src_domain=torch.arange(domains).repeat_interleave(per_domain)))
    return out


def side_by_side(algo, reference, keys, dtype: torch.dtype = torch.float32):
    """Both sides from the same torch and numpy random state each step (numpy draws Mixup's
    lambda and CausIRL's cut, as in DomainBed)."""
    algo.train()

    def reference_step(i, b):
        out = reference.update([(b.src_x[b.src_domain == d], b.src_y[b.src_domain == d]) for d in range(3)])
        assert_params_match([*algo.featurizer.parameters(), *algo.classifier.parameters()],
                            reference.network.parameters(), what=f"parameters after step {i}")
        return out

    def plugin_step(i, b):
        np.random.seed(100 + i)
        return algo.update(b, i)

    def reference_numpy_step(i, b):
        np.random.seed(100 + i)
        return reference_step(i, b)

    logs = run_side_by_side(plugin_step, reference_numpy_step, dg_batches(STEPS, dtype=dtype))
    assert_losses_match(logs, keys)
    return logs


def network(algo):
    return torch.nn.Sequential(twin(algo.featurizer), twin(algo.classifier))


def test_irm_matches_domainbed_step_for_step():
    algo = build("irm", irm_penalty_anneal_iters=WARM)
    logs = side_by_side(algo, domainbed_dg.DomainBedIRM(network(algo), 1e2, WARM),
                        {"loss": "loss", "nll": "nll", "penalty": "penalty"})
    # the weight is 1 before the warm-up ends and 100 from it on
    assert all(abs(a["loss"] - a["nll"] - a["penalty"]) < 1e-5 for a, _ in logs[:WARM])
    a = logs[WARM][0]
    assert a["loss"] == pytest.approx(a["nll"] + 100 * a["penalty"], rel=1e-5) and a["penalty"] != 0  # unbiased: either sign


def test_vrex_matches_domainbed_step_for_step():
    algo = build("vrex", vrex_penalty_anneal_iters=WARM)
    logs = side_by_side(algo, domainbed_dg.DomainBedVREx(network(algo), 1e1, WARM),
                        {"loss": "loss", "nll": "mean", "penalty": "penalty"})
    a = logs[WARM][0]
    assert a["loss"] == pytest.approx(a["nll"] + 10 * a["penalty"], rel=1e-5) and a["penalty"] > 0


def test_groupdro_matches_domainbed_step_for_step():
    algo = build("groupdro")
    logs = side_by_side(algo, domainbed_dg.DomainBedGroupDRO(network(algo), 1e-2),
                        {"loss": "loss", "q0": "q0", "q1": "q1", "q2": "q2"})
    assert sum(logs[-1][0][f"q{m}"] for m in range(3)) == pytest.approx(1.0)


def test_mixup_matches_domainbed_step_for_step():
    algo = build("mixup")
    side_by_side(algo, domainbed_dg.DomainBedMixup(network(algo), 0.2), {"loss": "loss"})


@pytest.mark.parametrize("name, gaussian", [("causirl-coral", False), ("causirl-mmd", True)])
def test_causirl_matches_domainbed_step_for_step(name, gaussian):
    algo = build(name)
    reference = domainbed_dg.DomainBedCausIRL(twin(algo.featurizer), twin(algo.classifier), gaussian, 1.0)
    logs = side_by_side(algo, reference, {"loss": "loss", "penalty": "penalty"})
    assert max(a["penalty"] for a, _ in logs) > 0


def test_rsc_matches_domainbed_step_for_step():
    """RSC reads no domain label: DomainBed's update on the domains' minibatches is the plugin's on
    the pooled batch."""
    algo = build("rsc")
    reference = domainbed_dg.DomainBedRSC(twin(algo.featurizer), twin(algo.classifier), 10)
    logs = side_by_side(algo, reference, {"loss": "loss", "muted": "muted"})
    # at the first step, of 100 features the 34 at or above the 2/3 quantile are muted, in the 8 of
    # 24 images whose true-class probability falls most (the other 16 are kept whole): 8/24 x 34/100
    assert logs[0][0]["muted"] == pytest.approx(8 / 24 * 34 / 100)


def test_selfreg_matches_domainbed_step_for_step():
    algo = build("selfreg")
    reference = domainbed_dg.DomainBedSelfReg(twin(algo.featurizer), twin(algo.classifier), twin(algo.cdpl))
    projector = [p.clone() for p in algo.cdpl.parameters()]
    logs = side_by_side(algo, reference, {"loss": "loss", "cls": "cls"})
    assert all(a["loss"] > a["cls"] for a, _ in logs)  # the regularisers are on
    assert all(torch.equal(p, q) for p, q in zip(algo.cdpl.parameters(), projector))  # outside Adam, as DomainBed
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(algo.cdpl[1], name), getattr(reference.cdpl[1], name), rtol=1e-5, atol=1e-6)


def test_selfreg_class_runs_by_hand():
    from dabench_plugins.algorithms.selfreg import class_intervals

    assert class_intervals([0, 0, 1, 3, 3]) == [2, 3, 5]
    assert class_intervals([2, 2, 5]) == [0, 2, 3]  # DomainBed compares the first label with 0


@pytest.mark.parametrize("meta_test", [1, 2])
def test_mldg_matches_domainbed_step_for_step(meta_test):
    algo = build("mldg", n_meta_test=meta_test)
    side_by_side(algo, domainbed_dg.DomainBedMLDG(network(algo), 1.0, meta_test), {"loss": "loss"})


def test_mldg_refuses_a_run_with_no_domain_left_to_meta_train_on(tmp_path):
    with pytest.raises(DabenchError, match="n_meta_test=1"):
        run(RunConfig(algo="mldg", src="toy-src,toy-mid", tgt="toy-tgt", setting="dg", steps=2, eval_every=2,
                      overrides={"batch_size": 8}, out=str(tmp_path)))
    assert not list(tmp_path.iterdir())
    result = run(RunConfig(algo="mldg", src="toy-src,toy-mid", tgt="toy-tgt", setting="dg", steps=2, eval_every=2,
                           overrides={"batch_size": 8, "n_meta_test": 1}, out=str(tmp_path)))
    assert len(result.records) == 1


def test_fish_matches_domainbed_step_for_step():
    algo = build("fish")
    reference = domainbed_dg.DomainBedFish(network(algo), 0.5)
    side_by_side(algo, reference, {"loss": "loss"})
    ours = torch.nn.Sequential(algo.featurizer, algo.classifier).state_dict()
    theirs = reference.network.state_dict()
    for k in ours:
        torch.testing.assert_close(ours[k].float(), theirs[k].float(), rtol=1e-5, atol=1e-6, msg=k)


def test_fishr_matches_domainbed_step_for_step():
    """Crossing the warm-up (weight 0 for 5 steps, then 1000, Adam restarted): per-sample gradients
    by torch.func against one autograd.grad per sample, the moving averages, the penalty. Both sides
    in float64: in float32 the two ways of taking per-sample gradients round differently, and the
    weight 1000 with Adam's normalisation turns that into a 1e-6 move of a parameter whose gradient
    is near zero (seen on an AMD EPYC: 1 element of 76,800, 1.4e-6 at the first weighted step)."""
    algo = build("fishr", penalty_anneal_iters=WARM).double()
    reference = domainbed_dg.DomainBedFishr(twin(algo.featurizer), twin(algo.classifier), 3, 1000., WARM, 0.95)
    logs = side_by_side(algo, reference, {"loss": "loss", "nll": "nll", "penalty": "penalty"}, dtype=torch.float64)
    assert all(a["loss"] == pytest.approx(a["nll"], rel=1e-6) for a, _ in logs[:WARM])
    a = logs[WARM][0]
    assert a["penalty"] > 0 and a["loss"] == pytest.approx(a["nll"] + 1000 * a["penalty"], rel=1e-5)
    for d in range(3):  # the moving averages themselves, parameter by parameter
        theirs = reference.ema_per_domain[d].ema_data
        torch.testing.assert_close(algo.ema_variances[d], torch.cat([theirs[k].view(-1) for k, _ in algo.classifier.named_parameters()]),
                                   rtol=1e-5, atol=1e-9)


def test_fishr_per_sample_gradients_and_penalty_by_hand():
    """A linear head: sample i's gradient is (softmax(W z_i + b) - onehot(y_i)) z_i^T for W and the
    bracket for b. Two domains with variances v and w: each is (v - w) / 2 from their mean, so the
    penalty is the mean of ((v - w) / 2)^2."""
    from dabench_plugins.algorithms.fishr import fishr_penalty, per_sample_gradients

    head = torch.nn.Linear(2, 3)
    z, y = torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([2, 0])
    rows = per_sample_gradients(head, z, y)
    for i in range(2):
        delta = torch.softmax(head(z[i]), 0) - torch.nn.functional.one_hot(y[i], 3)
        torch.testing.assert_close(rows[i], torch.cat([torch.outer(delta, z[i]).flatten(), delta]))
    v, w = torch.tensor([1.0, 4.0, 0.0]), torch.tensor([3.0, 0.0, 0.0])
    assert float(fishr_penalty(torch.stack([v, w]))) == pytest.approx((1 + 4 + 0) / 3)


def test_fishr_keeps_its_moving_averages_in_the_checkpoint():
    algo = build("fishr")
    for i, b in enumerate(dg_batches(2)):
        algo.update(b, i)
    again = build("fishr")
    again.load_state_dict(algo.state_dict())
    assert torch.equal(again.ema_variances, algo.ema_variances) and len(again.ema_variances) == 3


def test_irm_penalty_by_hand():
    """Two samples, logits z and labels y: the penalty is d/dw CE(w z_0, y_0) x d/dw CE(w z_1, y_1)
    at w = 1, and d/dw CE(w z, y) = sum_k softmax(z)_k z_k - z_y."""
    from dabench_plugins.algorithms.irm import irm_penalty

    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([1, 1])
    p0, p1 = torch.softmax(z[0], 0), torch.softmax(z[1], 0)
    g0 = float((p0 * z[0]).sum() - z[0, 1])  # 2 e^2 / (e^2 + 1) - 0
    g1 = float((p1 * z[1]).sum() - z[1, 1])  # e / (1 + e) - 1
    assert float(irm_penalty(z, y).detach()) == pytest.approx(g0 * g1, rel=1e-6) and g0 * g1 < 0


def test_groupdro_keeps_its_domain_weights_in_the_checkpoint():
    algo = build("groupdro")
    for i, b in enumerate(dg_batches(3)):
        algo.update(b, i)
    again = build("groupdro")
    again.load_state_dict(algo.state_dict())
    assert torch.equal(again.q, algo.q) and len(again.q) == 3


@pytest.mark.parametrize("name", ["irm", "vrex", "groupdro", "mixup", "causirl-coral", "mldg", "fish", "fishr"])
def test_unsupervised_da_refuses_them(tmp_path, name):
    with pytest.raises(DabenchError, match="domain generalisation method"):
        run(RunConfig(algo=name, src="toy-src", tgt="toy-tgt", out=str(tmp_path)))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["irm", "vrex", "groupdro", "mixup", "causirl-mmd", "fish", "fishr", "mmd"])
def test_one_source_in_domain_generalisation_is_refused(tmp_path, name):
    from click.testing import CliRunner

    from dabench.cli import main

    r = CliRunner().invoke(main, ["run", "--algo", name, "--src", "toy-src", "--tgt", "toy-tgt", "--setting", "dg",
                                  "--steps", "2", "--out", str(tmp_path / "runs")], catch_exceptions=False)
    assert r.exit_code == 2 and "one source gives every image the same domain label" in " ".join(r.stderr.split())
    assert "Traceback" not in r.output and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["irm", "vrex", "groupdro", "mixup", "causirl-coral", "rsc", "selfreg", "fish", "fishr"])
def test_they_train_in_domain_generalisation(tmp_path, name):
    result = run(RunConfig(algo=name, src="toy-src,toy-mid", tgt="toy-tgt", setting="dg", steps=4, eval_every=2,
                           overrides={"batch_size": 8}, out=str(tmp_path)))
    assert len(result.records) == 2 and 0 <= result.records[-1]["tgt-test"]["acc"] <= 1
