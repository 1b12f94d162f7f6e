"""ADDA against transcriptions of its authors' two programs (tests/reference/adda.py): the source
stage (cross-entropy plus the L2 regulariser on weights, Adam 1e-3) and the adversarial stage
(simultaneous steps of the target network on flipped domain labels and of the discriminator,
Adam 2e-4 beta1 0.5), the same weights and batches; losses and every parameter after every step
agree to 1e-5 relative."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from reference import adda as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, twin

PRE, ADAPT = 6, 10

pytestmark = pytest.mark.usefixtures("one_thread")


def build(**hp):
    cls = algorithms.get("adda")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10,
               defaults(cls.space("classification", "digits")) | {"pretrain_steps": PRE} | hp, ADAPT)


def test_adda_matches_the_authors_two_programs_step_for_step():
    algo = build()
    assert [(s.name, s.steps, s.evaluate) for s in algo.stages()] == [("source", PRE, False), ("adapt", ADAPT, True)]
    net = twin(algo.source)
    pre = ref.SourceTrainer(net)
    batches = digit_batches(PRE + ADAPT, batch=16, seed=14)
    algo.begin_stage(algo.stages()[0], SimpleNamespace(data=None), resumed=False)
    logs = []
    for i, b in enumerate(batches[:PRE]):
        logs.append((algo.update(b, i), pre.step(b.src_x, b.src_y)))
        assert_params_match(algo.source.parameters(), net.parameters(), what=f"source parameters after step {i}")
    assert_losses_match(logs, {"cls": "cls"})
    algo.begin_stage(algo.stages()[1], SimpleNamespace(data=None), resumed=False)
    target, adversary = copy.deepcopy(net), twin(algo.discriminator)
    adda = ref.AddaTrainer(net, target, adversary)
    logs = []
    for i, b in enumerate(batches[PRE:]):
        logs.append((algo.update(b, i), adda.step(b.src_x, b.tgt_x)))
        assert_params_match([*algo.target.parameters(), *algo.discriminator.parameters()],
                            [*target.parameters(), *adversary.parameters()], what=f"adapt parameters after step {i}")
        assert_params_match(algo.source.parameters(), net.parameters(), what="the frozen source network")
    assert_losses_match(logs, {"mapping": "mapping", "adversary": "adversary"})


def test_it_runs_both_stages_and_predicts_with_the_target_network(tmp_path):
    result = run(RunConfig(algo="adda", src="toy-src", tgt="toy-tgt", steps=4, eval_every=2,
                           overrides={"batch_size": 8, "pretrain_steps": 3}, out=str(tmp_path)))
    assert [r["step"] for r in result.records] == [4, 6, 7] and all(r["stage"] == "adapt" for r in result.records)
