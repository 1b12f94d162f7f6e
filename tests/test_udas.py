"""UDAS: its losses on hand-checkable examples, its stages, caches and resume."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner

from dabench import RunConfig, run
from dabench.algorithm import Stage, StageContext, TrainData
from dabench.cache import KeyedFolder
from dabench.cli import main
from dabench.errors import DabenchError
from dabench.runner import build
from dabench.trainer import NullReporter
from dabench.data import Batch, Labeled, get_batch
from dabench_plugins.algorithms import udas as udas_module
from dabench_plugins.algorithms.udas import ADAPT, SELFTRAIN, UDAS, symmetric_ce, symmetric_kl, teacher_kl

SEG = dict(src="toyseg-src", tgt="toyseg-tgt", backbone="toy-segnet", steps=4, eval_every=2)
FAST = {"translator": "fda", "selftrain_steps": 2}


def config(tmp_path, **kw) -> RunConfig:
    overrides = FAST | kw.pop("overrides", {})
    return RunConfig(algo="udas", out=str(tmp_path), overrides=overrides, **(SEG | kw))


def test_symmetric_kl_is_zero_when_primary_and_auxiliary_agree_and_matches_a_hand_value():
    logits = torch.randn(2, 3, 4, 5)
    assert symmetric_kl(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # one pixel, F_p = (0.5, 0.5), F_a = (0.9, 0.1):
    # (0.5-0.9)(ln 0.5 - ln 0.9) + (0.5-0.1)(ln 0.5 - ln 0.1) = 0.4 ln(9/5) + 0.4 ln 5 = 0.4 ln 9
    p = torch.log(torch.tensor([0.5, 0.5])).view(1, 2, 1, 1)
    a = torch.log(torch.tensor([0.9, 0.1])).view(1, 2, 1, 1)
    assert symmetric_kl(p, a).item() == pytest.approx(0.4 * math.log(9), rel=1e-5)
    assert symmetric_kl(a, p).item() == pytest.approx(0.4 * math.log(9), rel=1e-5)


def test_consistency_is_the_papers_symmetric_cross_entropy_by_hand():
    """Two pixels. Pixel 1: F_p = (0.5, 0.5), F_a = (0.8, 0.2):
    -(0.8 ln 0.5 + 0.2 ln 0.5) - (0.5 ln 0.8 + 0.5 ln 0.2) = ln 2 + 0.5 ln(1/0.16) = ln 2 + ln 2.5 = ln 5.
    Pixel 2: both (0.5, 0.5): 2 ln 2 = ln 4. Mean over pixels: (ln 5 + ln 4) / 2 = ln(20) / 2."""
    p = torch.zeros(1, 2, 1, 2)
    a = torch.tensor([[math.log(4.0), 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)  # pixel 1: (0.8, 0.2)
    assert symmetric_ce(p, a).item() == pytest.approx(math.log(20) / 2, rel=1e-6)
    assert symmetric_ce(a, p).item() == pytest.approx(math.log(20) / 2, rel=1e-6)
    sharp = torch.tensor([30.0, 0.0]).view(1, 2, 1, 1)
    assert symmetric_ce(sharp, sharp).item() == pytest.approx(0.0, abs=1e-6)  # equal one-hot maps: 0


def adapt_algo(tmp_path, **hparams):
    """A UDAS in its adaptation stage (no translator, no self-training) and a batch of its data."""
    prep = build(config(tmp_path, device="cpu", overrides={"translator": "none", "selftrain_rounds": 0} | hparams))
    algo = prep.algorithm
    algo.stage = Stage(ADAPT, 4)
    s = prep.splits
    x, y = get_batch(s.src_train, [0, 1])
    return algo, Batch(x, y, get_batch(s.tgt_train, [0, 1]))


def segmenter_grads(algo) -> list[torch.Tensor]:
    return [p.grad.clone() for p in algo.segmenter.parameters()]


def test_adaptation_gradient_holds_lambda_kl_times_the_consistency_on_target_images(tmp_path):
    algo, batch = adapt_algo(tmp_path)
    assert algo.hp["lambda_kl"] == 1.0 and algo.hp["consistency"] == "ce"  # the paper's defaults
    without = copy.deepcopy(algo)
    without.hp["lambda_kl"] = 0.0
    fresh = copy.deepcopy(algo)
    out = fresh.outputs(batch.tgt_x)
    expected = torch.autograd.grad(symmetric_ce(out["main"], out["aux"]), list(fresh.segmenter.parameters()),
                                   allow_unused=True)
    algo.update(batch, 0)
    without.update(batch, 0)
    for g_with, g_without, g_kl in zip(segmenter_grads(algo), segmenter_grads(without), expected):
        g_kl = torch.zeros_like(g_with) if g_kl is None else g_kl
        assert torch.allclose(g_with - g_without, g_kl, atol=1e-6, rtol=1e-3)
    assert any(g is not None and g.abs().sum() > 0 for g in expected)


def labelled_batch(batch: Batch, images: torch.Tensor, labels: torch.Tensor) -> Batch:
    return Batch(batch.src_x, batch.src_y, batch.tgt_x, Labeled(images, labels))


def adapt_from(algo, batch, seed=0) -> list[torch.Tensor]:
    """The segmenter's weights after one adaptation step of a copy of ``algo`` (CutMix's box seeded)."""
    algo = copy.deepcopy(algo)
    torch.manual_seed(seed)
    algo.update(batch, 0)
    return [p.detach().clone() for p in algo.segmenter.parameters()]


def test_labelled_target_pixels_reach_adaptation_only_through_domain_cutmix(tmp_path, monkeypatch):
    """Two different labelled target batches change the adaptation step (through CutMix); with CutMix
    made to paste nothing, they no longer change it: there is no other path (UDAS, Domain CutMix)."""
    algo, batch = adapt_algo(tmp_path, autoaugment=False)
    lab_x, lab_y = batch.tgt_x, torch.zeros(2, *batch.tgt_x.shape[-2:], dtype=torch.long)
    one = labelled_batch(batch, lab_x, lab_y)
    other = labelled_batch(batch, -lab_x, (lab_y + 1) % 3)
    assert any(not torch.equal(a, b) for a, b in zip(adapt_from(algo, one), adapt_from(algo, other)))

    monkeypatch.setattr(udas_module, "domain_cutmix", lambda x, y, tx, ty, lam: (x, y))
    assert all(torch.equal(a, b) for a, b in zip(adapt_from(algo, one), adapt_from(algo, other)))
    direct = copy.deepcopy(algo)
    direct.hp["tgt_direct"] = True  # dabench 0.1's extra supervised group: a second path
    assert any(not torch.equal(a, b) for a, b in zip(adapt_from(direct, one), adapt_from(direct, other)))


def test_self_training_descends_the_pseudo_label_loss(tmp_path):
    """Changing the pseudo-labels changes the self-training step, by the gradient of the pseudo-label
    segmentation loss."""
    algo, batch = adapt_algo(tmp_path)
    algo.teacher = copy.deepcopy(algo.segmenter).requires_grad_(False).eval()
    algo.stage = Stage(f"{SELFTRAIN} 1", 2)
    shape = (2, *batch.tgt_x.shape[-2:])
    a = Batch(batch.src_x, batch.src_y, batch.tgt_x, tgt_pseudo=torch.zeros(shape, dtype=torch.long))
    b = Batch(batch.src_x, batch.src_y, batch.tgt_x, tgt_pseudo=torch.full(shape, 2, dtype=torch.long))
    ga, gb = copy.deepcopy(algo), copy.deepcopy(algo)
    ga.update(a, 0)
    gb.update(b, 0)
    fresh = copy.deepcopy(algo)
    params = list(fresh.segmenter.parameters())

    def pseudo_grad(labels):
        loss, _ = fresh.supervised([(batch.tgt_x, labels)])
        return torch.autograd.grad(loss, params, allow_unused=True)

    for pa, pb, ea, eb in zip(segmenter_grads(ga), segmenter_grads(gb), pseudo_grad(a.tgt_pseudo), pseudo_grad(b.tgt_pseudo)):
        if ea is None:
            continue
        assert torch.allclose(pa - pb, ea - eb, atol=1e-6, rtol=1e-3)


def test_teacher_kl_counts_only_labelled_pixels():
    t = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]])).T.reshape(1, 2, 1, 2)  # two pixels
    s = torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1]])).T.reshape(1, 2, 1, 2)
    # pixel 0: KL((.5,.5) || (.9,.1)) = 0.5 ln(.5/.9) + 0.5 ln(.5/.1); pixel 1: 0 (equal)
    kl0 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5)
    assert teacher_kl(t, s, torch.tensor([[[0, 1]]])).item() == pytest.approx(kl0 / 2, rel=1e-5)
    assert teacher_kl(t, s, torch.tensor([[[0, 255]]])).item() == pytest.approx(kl0, rel=1e-5)
    assert teacher_kl(t, s, torch.tensor([[[255, 255]]])).item() == 0.0


def test_stages_follow_the_ablation_hyperparameters(tmp_path):
    full = build(config(tmp_path, device="cpu", overrides={"translator": "cyclegan", "selftrain_rounds": 2})).algorithm
    assert [(s.name, s.steps, s.evaluate) for s in full.stages()] == [
        ("translate", 4, False), ("adapt", 4, True), ("self-train 1", 2, True), ("self-train 2", 2, True)]
    plain = build(config(tmp_path, device="cpu", overrides={"translator": "none", "selftrain_rounds": 0})).algorithm
    assert [(s.name, s.steps) for s in plain.stages()] == [("translate", 0), ("adapt", 4)]
    assert plain.teacher is None


def test_a_round_makes_the_student_the_teacher(tmp_path):
    prep = build(config(tmp_path, device="cpu", overrides={"selftrain_rounds": 2}))
    algo = prep.algorithm
    ctx = StageContext(TrainData(prep.splits.src_train, prep.splits.tgt_train, prep.splits.tgt_labeled), tmp_path / "run", tmp_path / "cache", torch.device("cpu"), "fp32", 0, NullReporter())
    with torch.no_grad():
        for p in algo.segmenter.parameters():
            p.add_(1.0)  # the student has moved away from the teacher
    algo.begin_stage(Stage("self-train 2", 2), ctx, resumed=False)
    for t, s in zip(algo.teacher.state_dict().values(), algo.segmenter.state_dict().values()):
        assert torch.equal(t, s)
    before = [p.clone() for p in algo.teacher.parameters()]
    with torch.no_grad():
        for p in algo.segmenter.parameters():
            p.add_(1.0)
    algo.begin_stage(Stage("self-train 2", 2), ctx, resumed=True)  # resumed inside the round: keep its teacher
    assert all(torch.equal(a, b) for a, b in zip(before, algo.teacher.parameters()))
    assert not algo.teacher.training and all(not p.requires_grad for p in algo.teacher.parameters())


def test_full_run_records_every_stage_and_pseudo_labels_are_cached(tmp_path):
    result = run(config(tmp_path, tgt_labeled=3))
    stages = [(r["step"], r["stage"]) for r in result.records]
    assert stages == [(2, "adapt"), (4, "adapt"), (6, "self-train 1")]
    assert {"seg", "adv", "disc", "kl"} <= set(result.records[0]["losses"])
    assert {"seg", "pseudo", "teacher_kl"} <= set(result.records[-1]["losses"])
    labels = result.run_dir / "pseudo" / "round1"
    n = result.config["splits"]["tgt_train"]
    assert (labels / "done").exists() and len(list(labels.glob("*.png"))) == n
    timings = [json.loads(line) for line in (result.run_dir / "timings.jsonl").read_text().splitlines()]
    assert [(t["stage"], t["part"], t["steps"]) for t in timings] == [
        ("adapt", "prepare", 0), ("adapt", "train", 4), ("adapt", "evaluate", 0),
        ("self-train 1", "prepare", 0), ("self-train 1", "train", 2), ("self-train 1", "evaluate", 0)]
    assert [t.get("evaluations") for t in timings if t["part"] == "evaluate"] == [2, 1]  # as the records above
    assert all(t["seconds"] >= 0 for t in timings)


@pytest.mark.parametrize("where", ["pseudo-label round 1", "self-train 1"])
def test_a_run_killed_while_pseudo_labelling_or_self_training_resumes_to_the_same_numbers(tmp_path, where):
    hparams = {"selftrain_steps": 4}
    full = run(config(tmp_path / "a", overrides=hparams))
    killed = _StopIn(where, after=2)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "b", overrides=hparams), reporter=killed)
    labels = next((tmp_path / "b").glob("*/udas/*/pseudo/round1"))
    assert (labels / "done").exists() == (where == "self-train 1")  # killed mid-labelling: a half-written folder
    resumed = run(config(tmp_path / "b", overrides=hparams, resume=True))
    assert [r["tgt-test"] for r in resumed.records] == [r["tgt-test"] for r in full.records]
    assert [r["stage"] for r in resumed.records] == ["adapt", "adapt", "self-train 1", "self-train 1"]
    assert (labels / "done").exists()


class _StopIn(NullReporter):
    """Interrupts the run like Ctrl-C after ``after`` progress steps of the named stage."""

    def __init__(self, stage, after):
        self.stage, self.after, self.current = stage, after, None

    def start(self, total, done, stage="train"):
        self.current = stage

    def advance(self, step, losses):
        if self.current == self.stage and step >= self.after:
            raise KeyboardInterrupt


def test_half_written_pseudo_labels_are_made_again_not_trained_on(tmp_path):
    prep = build(config(tmp_path, device="cpu"))
    algo = prep.algorithm
    ctx = StageContext(TrainData(prep.splits.src_train, prep.splits.tgt_train, prep.splits.tgt_labeled), tmp_path / "run", tmp_path / "cache", torch.device("cpu"), "fp32", 0, NullReporter())
    algo.begin_stage(Stage("self-train 1", 2), ctx, resumed=False)
    folder = tmp_path / "run" / "pseudo" / "round1"
    (folder / "done").unlink()  # as if killed while labelling
    for png in list(folder.glob("*.png"))[3:]:
        png.unlink()
    data = algo.begin_stage(Stage("self-train 1", 2), ctx, resumed=True)
    assert (folder / "done").exists() and len(list(folder.glob("*.png"))) == len(prep.splits.tgt_train)
    x, y = data.tgt_train[0]
    assert y.dtype == torch.int64 and y.shape == x.shape[-2:]
    key = json.loads((folder / "key.json").read_text())
    (folder / "key.json").write_text(json.dumps(key | {"threshold": 0.9}))
    with pytest.raises(DabenchError, match="different config"):
        algo.begin_stage(Stage("self-train 1", 2), ctx, resumed=True)


def test_translated_source_is_cached_by_translator_config_and_reused(tmp_path, monkeypatch):
    run(config(tmp_path, overrides={"selftrain_rounds": 0}))
    folders = list((tmp_path / "cache" / "translated").glob("*/fda-*"))
    assert len(folders) == 1 and (folders[0] / "done").exists()
    assert json.loads((folders[0] / "key.json").read_text())["hparams"] == {"beta": 0.01}
    # the same translator config in another run (another seed of the segmenter's settings) reuses it
    monkeypatch.setattr("dabench_plugins.translators.fda.FDA.translate",
                        lambda *a: pytest.fail("translated again instead of reading the cache"))
    run(config(tmp_path, overrides={"selftrain_rounds": 0, "lambda_kl": 0.5}))
    monkeypatch.undo()
    run(config(tmp_path, overrides={"selftrain_rounds": 0, "fda_beta": 0.05}))  # another config: its own folder
    assert len(list((tmp_path / "cache" / "translated").glob("*/fda-*"))) == 2
    key = json.loads((folders[0] / "key.json").read_text())
    (folders[0] / "key.json").write_text(json.dumps(key | {"steps": 7}))
    r = CliRunner().invoke(main, ["run", "--algo", "udas", "--src", "toyseg-src", "--tgt", "toyseg-tgt", "--backbone",
                                  "toy-segnet", "--steps", "4", "--out", str(tmp_path), "--overwrite",
                                  "-H", "translator=fda", "-H", "selftrain_rounds=0"])
    assert r.exit_code == 2 and "different config" in r.stderr and "Traceback" not in r.output


def test_a_cyclegan_translator_trains_in_its_own_stage_then_is_skipped_when_cached(tmp_path, monkeypatch):
    tiny = {"translator": "cyclegan", "selftrain_rounds": 0, "cyclegan_ngf": 4, "cyclegan_ndf": 4,
            "cyclegan_blocks": 1, "translator_steps": 2, "cyclegan_load_size": 40, "cyclegan_crop_size": 32}
    seen = []
    original = udas_module.UDAS.update

    def spy(self, batch, step):
        if self.stage.name == "translate":
            seen.append((tuple(batch.src_x.shape[-2:]), tuple(batch.tgt_x.shape[-2:])))
        return original(self, batch, step)

    monkeypatch.setattr(udas_module.UDAS, "update", spy)
    first = run(config(tmp_path, overrides=tiny))
    assert seen == [((64, 96), (32, 64))] * 2  # the translator gets each domain at its own size, unstretched
    assert [r["stage"] for r in first.records] == ["adapt", "adapt"] and first.records[-1]["step"] == 6
    again = run(config(tmp_path, overrides=tiny | {"lambda_kl": 0.5}))  # cache hit: the translate steps are skipped
    assert [r["step"] for r in again.records] == [4, 6]


def test_adversarial_false_never_forwards_a_target_image(tmp_path, monkeypatch):
    prep = build(config(tmp_path, device="cpu", overrides={"adversarial": False, "translator": "none"}))
    algo = prep.algorithm
    algo.stage = algo.stages()[1]
    src = prep.splits.src_train.get_batch([0, 1])
    seen = []
    monkeypatch.setattr(algo, "outputs", lambda x: seen.append(x.shape) or UDAS.outputs(algo, x))
    from dabench.data import Batch
    losses = algo.update(Batch(src[0], src[1], torch.randn(2, 3, 32, 64)), 0)
    assert set(losses) == {"seg"} and seen == [torch.Size([2, 3, 64, 96])]


@pytest.mark.parametrize("hparam, message", [("translator=nope", "translator"), ("views=0", "views")])
def test_bad_udas_hyperparameters_exit_2(tmp_path, hparam, message):
    r = CliRunner().invoke(main, ["run", "--algo", "udas", "--src", "toyseg-src", "--tgt", "toyseg-tgt", "--backbone",
                                  "toy-segnet", "--out", str(tmp_path), "-H", hparam])
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "toyseg-src_to_toyseg-tgt").exists()


def test_keyed_folder_refuses_another_config(tmp_path):
    a = KeyedFolder(tmp_path / "f", {"x": 1})
    a.start()
    assert not a.complete
    a.finish()
    assert a.complete
    with pytest.raises(DabenchError, match="differs in: x"):
        KeyedFolder(tmp_path / "f", {"x": 2}).complete


def test_keyed_folder_lock_lets_one_builder_in_at_a_time(tmp_path):
    import threading
    import time

    inside, most, builds = [0], [0], []

    def build(k):
        folder = KeyedFolder(tmp_path / "f", {"x": 1})
        with folder.lock():
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            if not folder.complete:
                folder.start()
                time.sleep(0.2)  # a slow build: the other thread must wait, then find it done
                folder.finish()
                builds.append(k)
            inside[0] -= 1

    threads = [threading.Thread(target=build, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and len(builds) == 1


def test_udas_runs_on_gta5_and_cityscapes_folders_in_their_published_layouts(tmp_path):
    from test_seg_datasets import make_cityscapes, make_gta5

    data = tmp_path / "data"
    make_gta5(data)
    make_cityscapes(data)
    cfg = RunConfig(algo="udas", src="gta5", tgt="cityscapes", backbone="toy-segnet", steps=2, eval_every=2,
                    image_size=32, data_root=str(data), out=str(tmp_path / "runs"), tgt_labeled=1,
                    overrides={"translator": "fda", "fda_beta": 0.09, "selftrain_steps": 2})
    with pytest.warns(UserWarning, match="differ in size"):
        result = run(cfg)
    assert [r["stage"] for r in result.records] == ["adapt", "self-train 1"]
    assert len(result.records[-1]["tgt-test"]["iou"]) == 19
    cache = next((tmp_path / "runs" / "cache" / "translated").glob("gta5_to_cityscapes/fda-*"))
    assert len(list(cache.glob("*.png"))) == result.config["splits"]["src_train"]
