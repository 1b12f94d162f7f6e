"""DANN against a transcription of the JMLR paper's update (tests/reference/dann.py, explicit
gradients instead of a reversal layer): the same weights and batches; losses, lambda and every
parameter after every step agree to 1e-5 relative."""
from __future__ import annotations

import torch

from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from reference import dann as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, twin


def test_dann_matches_the_papers_update_step_for_step():
    steps = 25
    cls = algorithms.get("dann")
    torch.manual_seed(0)
    algo = cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", "digits")), steps)
    lower, upper = twin(algo.featurizer.lower), twin(algo.featurizer.upper)
    label, domain = twin(algo.classifier), twin(algo.discriminator)
    tr = ref.PaperTrainer(lower, upper, label, domain, steps)
    logs = []
    for i, b in enumerate(digit_batches(steps, batch=16, seed=4)):
        logs.append((algo.update(b, i), tr.step(i, b.src_x, b.src_y, b.tgt_x)))
        assert_params_match(
            list(algo.featurizer.lower.parameters()) + list(algo.featurizer.upper.parameters())
            + list(algo.classifier.parameters()) + list(algo.discriminator.parameters()),
            list(lower.parameters()) + list(upper.parameters()) + list(label.parameters()) + list(domain.parameters()),
            what=f"parameters after step {i}")
    assert_losses_match(logs, {"cls": "cls", "dom": "dom", "lambda": "lambda"})
    assert logs[-1][1]["lambda"] > 0.99  # the schedule ran its whole course


def test_dann_with_bsp_matches_the_papers_update_plus_the_bsp_authors_term():
    """-H bsp=true: 1e-4 x the squared top singular values of the source and target features the
    domain classifier reads, added as the BSP authors' script adds it; seen to fail with the term's
    gradient reversed."""
    steps = 12
    cls = algorithms.get("dann")
    torch.manual_seed(0)
    algo = cls(backbones.get("digit-cnn")(None, image_size=28), 10,
               defaults(cls.space("classification", "digits")) | {"bsp": True}, steps)
    lower, upper = twin(algo.featurizer.lower), twin(algo.featurizer.upper)
    label, domain = twin(algo.classifier), twin(algo.discriminator)
    tr = ref.PaperTrainer(lower, upper, label, domain, steps, bsp=True)
    logs = []
    for i, b in enumerate(digit_batches(steps, batch=16, seed=4)):
        logs.append((algo.update(b, i), tr.step(i, b.src_x, b.src_y, b.tgt_x)))
        assert_params_match(
            list(algo.featurizer.lower.parameters()) + list(algo.featurizer.upper.parameters())
            + list(algo.classifier.parameters()) + list(algo.discriminator.parameters()),
            list(lower.parameters()) + list(upper.parameters()) + list(label.parameters()) + list(domain.parameters()),
            what=f"parameters after step {i}")
    assert_losses_match(logs, {"cls": "cls", "dom": "dom", "bsp": "bsp"})
