"""SWAD (``--swad``): the loss-valley averaging against a transcription of its authors' code
(tests/reference/swad.py), and the trainer's use of it: the averaged weights are the mean of the
steps' weights over the segments it reports, its record is what every selection picks, resume is
exact, and a run too short for the window is refused."""
from __future__ import annotations

import random

import pytest
import torch
from click.testing import CliRunner

from dabench.api import load
from dabench.cli import main
from dabench.errors import DabenchError
from dabench.files import load_pt
from dabench.results.selection import select
from dabench.runner import RunConfig, run
from dabench.swad import LossValley
from dabench_plugins.algorithms.erm import ERM
from reference import swad as ref
from test_dg import toy_mid  # noqa: F401 - registers the third toy domain

VALLEYS = {
    "never converges": [5, 4, 3, 2, 1, 0.5],
    "converges at the third evaluation": [1.0, 1.1, 1.2, 1.0, 1.05, 1.1, 1.0, 0.9],
    "full window, then the valley dies": [5, 4, 3, 2, 1.5, 1.2, 1.0, 1.1, 1.15, 1.2, 1.3, 2.5, 3, 3.5, 4, 5, 6, 7],
    "a loss above the threshold inside the window": [2.0, 0.9, 3.0, 1.0, 0.5, 0.6, 0.7, 0.65, 0.66, 0.7, 0.6],
}


def random_walks(n: int = 30):
    rng = random.Random(3)
    for _ in range(n):
        loss, losses = 2.0, []
        for _ in range(rng.randint(3, 20)):
            loss = max(0.05, loss + rng.uniform(-0.4, 0.3))
            losses.append(loss)
        yield losses


def both(losses: list[float], eval_every: int = 2):
    """Step weights of a small layer, one evaluation every ``eval_every`` steps with ``losses``;
    the final average by dabench and by the transcription."""
    g = torch.Generator().manual_seed(len(losses))
    layer = torch.nn.Linear(3, 2)
    weights = [[torch.randn(p.shape, generator=g) for p in layer.parameters()] for _ in range(eval_every * len(losses))]
    valley = LossValley()
    evaluations = iter(losses)
    for i, params in enumerate(weights, start=1):
        valley.observe(params, i)
        if i % eval_every == 0:
            valley.evaluated(next(evaluations))
    ours, converged = valley.final()
    theirs = ref.train(layer, weights, eval_every, losses)
    return ours, converged, theirs, weights


@pytest.mark.parametrize("losses", [*VALLEYS.values(), *random_walks()],
                         ids=[*VALLEYS, *(f"walk{i}" for i in range(30))])
def test_the_average_matches_the_authors_loss_valley(losses):
    ours, converged, theirs, _ = both(losses)
    module = theirs.module if isinstance(theirs, ref.AveragedModel) else theirs
    for mine, reference in zip(ours.params, module.parameters()):
        torch.testing.assert_close(mine, reference.detach(), rtol=1e-6, atol=1e-7)
    assert (ours.n, ours.start, ours.end) == (int(theirs.n_averaged), theirs.start_step, theirs.end_step)


def test_the_valley_cases_do_what_their_names_say():
    assert not both(VALLEYS["never converges"])[1]
    for name in ("converges at the third evaluation", "full window, then the valley dies"):
        ours, converged, _, _ = both(VALLEYS[name])
        assert converged and ours.n > 1
    valley = LossValley()
    for i, loss in enumerate(VALLEYS["full window, then the valley dies"], start=1):
        valley.observe([torch.zeros(1)], i)
        valley.evaluated(loss)
    assert valley.dead_valley


def test_the_average_is_the_mean_of_the_steps_of_the_segments_it_lists():
    losses = VALLEYS["full window, then the valley dies"]
    ours, _, _, weights = both(losses)
    expected = [torch.zeros_like(p) for p in weights[0]]
    for start, end in ours.parts:  # each segment's own mean, the segments (with repeats) weighed alike
        for total, *steps in zip(expected, *weights[start - 1:end]):
            total += torch.stack(steps).mean(0) / len(ours.parts)
    for mine, theirs in zip(ours.params, expected):
        torch.testing.assert_close(mine, theirs)


def toy(tmp_path, **kw) -> RunConfig:
    base = dict(algo="erm", src="toy-src,toy-mid", tgt="toy-tgt", setting="dg", steps=24, eval_every=2, swad=True,
                overrides={"batch_size": 8}, out=str(tmp_path))
    return RunConfig(**(base | kw))


@pytest.fixture
def scripted_valley(monkeypatch):
    """The trainer's evaluations hand SWAD a known valley (the toy's own loss only falls), and every
    step's weights are kept."""
    steps: dict[int, list[torch.Tensor]] = {}
    losses = iter(VALLEYS["full window, then the valley dies"][:12])
    observe, evaluated = LossValley.observe, LossValley.evaluated
    monkeypatch.setattr(LossValley, "observe", lambda self, params, step: (
        steps.__setitem__(step, [p.detach().clone() for p in params]), observe(self, params, step))[1])
    monkeypatch.setattr(LossValley, "evaluated", lambda self, loss: evaluated(self, next(losses)))
    return steps


def test_a_swad_run_holds_the_average_of_the_steps_it_reports(tmp_path, scripted_valley):
    result = run(toy(tmp_path))
    last = result.records[-1]
    assert last["stage"] == "swad" and last["step"] == 24 and last["swad"]["converged"]
    assert [r["step"] for r in result.records[:-1]] == list(range(2, 25, 2))
    assert "loss" in result.records[0]["src-val"]  # the validation loss SWAD reads
    parts = last["swad"]["segments"]
    assert len(parts) == last["swad"]["n"] > 1
    weights = load_pt(result.run_dir / "selected.pt", "selected")
    assert weights["selection"] == "swad"
    names = [name for name, _ in load(result.run_dir).algorithm.named_parameters()]  # the order SWAD saw them in
    for k, name in enumerate(names):
        expected = sum(torch.stack([scripted_valley[s][k] for s in range(a, b + 1)]).mean(0) for a, b in parts) / len(parts)
        torch.testing.assert_close(weights["model"][name], expected.cpu())  # the valley saw the run's device
    for method in ("source-val", "last", "target-oracle", "target-oracle-best", "entropy"):
        assert select(method, result.records, "acc") == len(result.records) - 1


class _Killed(Exception):
    pass


def test_a_swad_run_resumes_exactly(tmp_path, monkeypatch):
    full = run(toy(tmp_path / "full", steps=16))
    original = ERM.update

    def dies_at_step_11(self, batch, step):
        if step == 11:
            raise _Killed()
        return original(self, batch, step)

    monkeypatch.setattr(ERM, "update", dies_at_step_11)
    with pytest.raises(_Killed):
        run(toy(tmp_path / "killed", steps=16))
    monkeypatch.setattr(ERM, "update", original)
    resumed = run(toy(tmp_path / "killed", steps=16, resume=True))
    strip = lambda records: [{k: v for k, v in r.items() if k != "time_s"} for r in records]  # noqa: E731
    assert strip(resumed.records) == strip(full.records)
    a = load_pt(full.run_dir / "selected.pt", "selected")["model"]
    b = load_pt(resumed.run_dir / "selected.pt", "selected")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_swad_run_is_its_own_folder_and_leaderboard_row(tmp_path):
    plain = run(toy(tmp_path, swad=False, steps=12))
    averaged = run(toy(tmp_path, steps=12))
    assert plain.run_dir != averaged.run_dir and plain.run_dir.parent == averaged.run_dir.parent
    assert "swad" not in plain.run_dir.name and averaged.config["swad"] is True
    r = CliRunner().invoke(main, ["leaderboard", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 0 and "swad=true" in r.stdout


def test_a_run_too_short_for_the_window_is_refused(tmp_path):
    with pytest.raises(DabenchError, match="window of 6 evaluations.*10 steps at --eval-every 2 give 5. Use --steps 12 "
                                           "or more, or --eval-every 1 or less"):
        run(toy(tmp_path, steps=10))
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--steps", "1000",
                                  "--swad", "--out", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 2 and "Use --steps 1200 or more" in " ".join(r.stderr.split()) and "Traceback" not in r.output
    assert not list(tmp_path.iterdir())
