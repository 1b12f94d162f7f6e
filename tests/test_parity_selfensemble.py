"""Self-ensembling against a transcription of its authors' training step (tests/reference/
selfensemble.py): the same weights, batches and augmented views (made by the plugin's augmentation
under one random state); losses, the student's and the teacher's parameters after every step agree
to 1e-5 relative."""
from __future__ import annotations

import pytest
import torch

from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.selfensemble import augment, self_ensembling_loss
from reference import selfensemble as ref
from reference.harness import assert_losses_match, assert_params_match, digit_batches, run_side_by_side, twin

STEPS = 20

pytestmark = pytest.mark.usefixtures("one_thread")


def build(**hp):
    cls = algorithms.get("self-ensembling")
    torch.manual_seed(0)
    return cls(backbones.get("digit-cnn")(None, image_size=28), 10, defaults(cls.space("classification", "digits")) | hp, STEPS)


@pytest.mark.parametrize("confidence", [0.96837722, 0.105])
def test_self_ensembling_matches_the_authors_step_for_step(confidence):
    """At the authors' threshold the untrained teacher is confident nowhere (only the class balance
    term, scaled by 0, and the source loss act); at 0.105 (just above the untrained uniform 0.1) the
    consistency term is on."""
    algo = build(confidence=confidence)
    student, teacher = twin(algo.student), twin(algo.student)
    tr = ref.Trainer(student, teacher, 10, confidence_thresh=confidence)
    algo.train()

    def reference_step(i, b):
        views = algo.views(b)  # the plugin's draw of the three views, from the same random state
        out = tr.f_train(views[0], b.src_y, views[1], views[2])
        assert_params_match([*algo.student.parameters(), *algo.teacher.parameters()],
                            [*student.parameters(), *teacher.parameters()], what=f"parameters after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, digit_batches(STEPS, batch=16, seed=15))
    assert_losses_match(logs, {"cls": "clf", "unsup": "unsup", "confident": "conf"})
    if confidence < 0.5:  # the consistency term was exercised
        assert max(a["confident"] for a, _ in logs) > 0


def test_the_loss_by_hand():
    """Two images, two classes. The teacher is sure of image 0 (0.99) and unsure of image 1: only
    image 0 counts, (0.6 - 0.99)^2 averaged over 2 classes and over 2 images; the class balance term
    is the BCE of the mean prediction (0.5, 0.5) to 1/2, times 2 classes, times the confident share
    1/2."""
    student = torch.tensor([[0.6, 0.4], [0.4, 0.6]])
    teacher = torch.tensor([[0.99, 0.01], [0.5, 0.5]])
    loss, share = self_ensembling_loss(student, teacher, 0.9, 0.005)
    consistency = (0.39 ** 2 + 0.39 ** 2) / 2 / 2
    balance = -(0.5 * torch.log(torch.tensor(0.5 + 1e-6)) * 2).item() * 2 * 0.5
    assert float(share) == 0.5 and float(loss) == pytest.approx(consistency + 0.005 * balance, rel=1e-5)


def test_the_augmentation_moves_pixels_and_keeps_shape():
    """Identity settings give the image back; noise alone has the asked std; shifts of up to 2
    pixels move a dot's centre within 2 pixels of where it was (and they do move it)."""
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 1.0
    torch.testing.assert_close(augment(x, 0.0, 0.0, 0.0), x, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    noisy = augment(torch.zeros(4, 3, 28, 28), 0.0, 0.0, 0.1)
    assert abs(float(noisy.std()) - 0.1) < 0.005
    torch.manual_seed(1)
    moved = augment(x.repeat(64, 1, 1, 1), 0.0, 2.0, 0.0)
    centres = (moved[:, 0] * torch.arange(8.0)).sum((1, 2)) / moved[:, 0].sum((1, 2))
    assert 2.0 <= float(centres.min()) and float(centres.max()) <= 6.0 and float(centres.std()) > 0.5


def test_it_trains(tmp_path):
    result = run(RunConfig(algo="self-ensembling", src="toy-src", tgt="toy-tgt", steps=4, eval_every=2,
                           overrides={"batch_size": 8}, out=str(tmp_path)))
    assert len(result.records) == 2
