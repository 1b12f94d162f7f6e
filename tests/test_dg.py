"""Several sources and domain generalisation: one minibatch per source domain per step, no target
image in DG training, the DG versions of CORAL and MMD on hand-checked numbers, the
leave-one-domain-out sweep and its tables, and DomainBed's two DG selections."""
from __future__ import annotations

import re

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner

from conftest import TOY_CLASSES, toy_images
from dabench.algorithm import ClassificationAlgorithm
from dabench.cli import main
from dabench.data import Batch, Domain, SourceDomains, TensorImages, source_stream, stream
from dabench.errors import DabenchError
from dabench.hparams import defaults
from dabench.layers import pairwise_mean
from dabench.results.leaderboard import leaderboard, render
from dabench.protocol import build_splits, load_domain
from dabench.registry import algorithms, backbones, datasets, plugin, shared_images
from dabench.runner import RunConfig, run
from dabench.sweeping.sweep import plan_dg
from dabench_plugins.algorithms.coral import mean_cov_penalty
from dabench_plugins.algorithms.mmd import gaussian_mmd


@datasets.register("toy-mid")
@plugin(task="classification", description="test-only third toy domain")
def toy_mid(arg=None, *, root=None, image_size=None) -> Domain:
    return Domain("toy-mid", "classification", TOY_CLASSES, toy_images(100, 0.2, 3), image_size=16)


SEEN: list[Batch] = []


@algorithms.register("probe-dg")
class Probe(ClassificationAlgorithm):
    """Test-only: keeps every batch it is given, trains a linear layer on the source labels."""

    needs_target = False

    def __init__(self, backbone, num_classes, hparams, steps):
        super().__init__(backbone, num_classes, hparams, steps)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, num_classes))
        self.optims["model"] = self.sgd(self.net.parameters())

    def update(self, batch, step):
        SEEN.append(batch)
        loss = torch.nn.functional.cross_entropy(self.net(batch.src_x), batch.src_y)
        self.optimise(loss, self.optims["model"])
        return {"cls": loss.item()}

    def predict(self, x):
        return self.net(x)


def tiny(n: int, value: int) -> TensorImages:
    return TensorImages(torch.full((n, 3, 4, 4), value, dtype=torch.uint8), torch.full((n,), value % 10))


# --- data ---------------------------------------------------------------------------------------

def test_one_minibatch_per_source_domain_per_step_and_the_first_keeps_its_stream():
    a, b = tiny(10, 1), tiny(6, 2)
    both = SourceDomains([a, b])
    assert len(both) == 16 and both.labels().tolist() == [1] * 10 + [2] * 6
    steps = list(source_stream(both, 4, seed=3, start=0, stop=5))
    alone = list(stream(a, 4, 3, 0, 0, 5))
    for (x, y, d), (xa, ya) in zip(steps, alone):
        assert d.tolist() == [0] * 4 + [1] * 4 and y.tolist() == [1] * 4 + [2] * 4
        assert torch.equal(x[:4], xa) and torch.equal(y[:4], ya)  # domain 0 = the single-source stream
    resumed = list(source_stream(both, 4, seed=3, start=3, stop=5))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(steps[3:], resumed))  # a pure function of (seed, step)
    x, y = both.get_batch([9, 10, 0])  # pooled, in the order asked, across the domain boundary
    assert y.tolist() == [1, 2, 1]


def test_batch_source_domains_groups_by_index():
    b = Batch(torch.arange(6.0)[:, None], torch.arange(6), None, src_domain=torch.tensor([0, 0, 1, 1, 2, 2]))
    assert [y.tolist() for _, y in b.source_domains()] == [[0, 1], [2, 3], [4, 5]]
    assert b.to(torch.device("cpu")).tgt_x is None


# --- protocol and runner ------------------------------------------------------------------------

def test_dg_splits_pool_each_sources_holdout_and_hold_no_target_images():
    src, mid, tgt = (load_domain(n, None) for n in ("toy-src", "toy-mid", "toy-tgt"))
    s = build_splits([src, mid], tgt, 0, 0, setting="dg")
    assert s.tgt_train is None and s.setting == "dg"
    assert isinstance(s.src_train, SourceDomains) and [len(d) for d in s.src_train.domains] == [128, 80]
    assert len(s.src_val) == 32 + 20  # 20% of each source, pooled: DomainBed's training-domain validation
    assert s.sizes()["tgt_train"] == 0 and len(s.tgt_test) == 30  # the test split is the one UDA runs test on
    uda = build_splits([src, mid], tgt, 0, 0)
    assert len(uda.tgt_train) == 72 and (uda.tgt_test.indices == s.tgt_test.indices).all()
    with pytest.raises(DabenchError, match="no labelled-target budget"):
        build_splits([src, mid], tgt, 5, 0, setting="dg")
    with pytest.raises(DabenchError, match="twice"):
        build_splits([src, src], tgt, 0, 0)
    with pytest.raises(DabenchError, match="both a source and the target"):
        build_splits([src, tgt], tgt, 0, 0)
    seg_src, seg_tgt = load_domain("toyseg-src", None), load_domain("toyseg-tgt", None)
    with pytest.raises(DabenchError, match="supported for classification"):
        build_splits([seg_src, seg_tgt], load_domain("toyseg-src", None), 0, 0)


def test_a_dg_run_gives_the_algorithm_no_target_image(tmp_path):
    SEEN.clear()
    result = run(RunConfig(algo="probe-dg", src="toy-src,toy-mid", tgt="toy-tgt", setting="dg", steps=3, eval_every=3,
                           overrides={"batch_size": 8}, out=str(tmp_path)))
    assert len(SEEN) == 3
    for b in SEEN:
        assert b.tgt_x is None and b.src_domain.tolist() == [0] * 8 + [1] * 8
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["setting"] == "dg" and config["sources"] == ["toy-src", "toy-mid"] and config["src"] == "toy-src,toy-mid"
    assert "tgt-unlabeled" not in result.records[-1]  # no label-free score reads target images in DG
    assert {"src-val", "tgt-val", "tgt-test"} <= set(result.records[-1])
    SEEN.clear()
    uda = run(RunConfig(algo="probe-dg", src="toy-src,toy-mid", tgt="toy-tgt", steps=2, eval_every=2,
                        overrides={"batch_size": 8}, out=str(tmp_path)))
    assert all(b.tgt_x.shape[0] == 8 for b in SEEN) and uda.run_dir != result.run_dir


def test_dg_refuses_algorithms_that_need_target_images_and_sources_that_hold_the_targets_images(tmp_path):
    with pytest.raises(DabenchError, match="trains on target images.*erm"):
        run(RunConfig(algo="dann", src="toy-src,toy-mid", tgt="toy-tgt", setting="dg", out=str(tmp_path)))
    with pytest.raises(DabenchError, match="digits-m holds its images"):
        run(RunConfig(algo="erm", src="digits-m,syndigits:100", tgt="uci-digits", setting="dg", out=str(tmp_path)))
    result = CliRunner().invoke(main, ["run", "--algo", "cdan", "--src", "toy-src,toy-mid", "--tgt", "toy-tgt",
                                       "--setting", "dg", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "domain generalisation" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["run", "--algo", "dan", "--src", "toy-src,toy-mid", "--tgt", "toy-tgt",
                                       "--setting", "dg", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "trains on target images" in result.output and "mmd" in result.output
    assert not list(tmp_path.iterdir())


def test_uda_refuses_a_domain_generalisation_only_method(tmp_path):
    result = CliRunner().invoke(main, ["run", "--algo", "mmd", "--src", "toy-src", "--tgt", "toy-tgt",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--setting dg" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())
    listing = CliRunner().invoke(main, ["list", "algorithms"], env={"COLUMNS": "250"})
    assert re.search(r"mmd +│ classification │ DG only", listing.output)


# --- the DG terms of CORAL and MMD: every pair of source domains ---------------------------------

def build(name: str, **hp):
    torch.manual_seed(0)
    cls = algorithms.get(name)
    backbone = backbones.get("digit-cnn")(None, in_channels=3, image_size=28, pretrained=None, num_classes=10)
    return cls(backbone, 10, defaults(cls.space("classification")) | {"lr": 10.0} | hp, steps=100)


def dg_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(4, 3, 28, 28, generator=g) * s + s for s in (0.5, 1.0, 1.5)])
    return Batch(x, torch.randint(0, 10, (12,), generator=g), None, src_domain=torch.arange(3).repeat_interleave(4))


def test_pairwise_mean_by_hand():
    groups = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)]
    assert pairwise_mean(groups, lambda a, b: (a - b).abs()).item() == pytest.approx((1 + 3 + 2) / 3)
    assert pairwise_mean([torch.ones(2)], lambda a, b: a.sum()).item() == 0  # one domain: nothing to align


def coral_dg_term(algo, b):
    """DomainBed's CORAL penalty: mean and covariance differences of the featurizer outputs, averaged over pairs."""
    feats = algo.featurizer(b.src_x)
    g = [feats[i * 4:(i + 1) * 4] for i in range(3)]
    return (mean_cov_penalty(g[0], g[1]) + mean_cov_penalty(g[0], g[2]) + mean_cov_penalty(g[1], g[2])) / 3


def test_domainbed_mmd_by_hand():
    """DomainBed's Gaussian MMD: kernels exp(-gamma d^2), gamma = 1e-3 ... 1e3, diagonals included."""
    x, y = torch.zeros(1, 1), torch.ones(1, 1)
    cross = sum(math.exp(-g) for g in (0.001, 0.01, 0.1, 1, 10, 100, 1000))
    assert gaussian_mmd(x, y).item() == pytest.approx(7 + 7 - 2 * cross, rel=1e-6)
    z = torch.randn(6, 4)
    assert gaussian_mmd(z, z).item() == pytest.approx(0, abs=1e-5)
    assert gaussian_mmd(z, z + 1).item() > 0.1


def mmd_dg_term(algo, b):
    """DomainBed's MMD: Gaussian kernels at fixed bandwidths on the featurizer outputs, averaged over pairs."""
    feats = algo.featurizer(b.src_x)
    g = [feats[i * 4:(i + 1) * 4] for i in range(3)]
    return (gaussian_mmd(g[0], g[1]) + gaussian_mmd(g[0], g[2]) + gaussian_mmd(g[1], g[2])) / 3


@pytest.mark.parametrize("name, weight, value, term, key, extra", [
    ("coral", "mmd_gamma", 1.0, coral_dg_term, "coral", {}),
    ("mmd", "mmd_gamma", 1.0, mmd_dg_term, "mmd", {"optimizer": "sgd"})])  # SGD: one step is -lr x the gradient
def test_dg_update_descends_the_term_averaged_over_pairs_of_source_domains(name, weight, value, term, key, extra):
    step, b = 50, dg_batch()
    with_term = build(name, **{weight: value}, **extra)
    without = copy.deepcopy(with_term)
    without.hp[weight] = 0.0
    start = copy.deepcopy(with_term)
    expected_value = term(start, b)
    grads = torch.autograd.grad(value * expected_value, list(start.parameters()), allow_unused=True)
    logged = with_term.update(b, step)
    without.update(b, step)
    assert logged[key] == pytest.approx(expected_value.item(), rel=1e-4) and expected_value.item() > 0
    lr = with_term.optims["model"].param_groups[0]["lr"]
    moved = [(p - q, -lr * g) for p, q, g in zip(with_term.parameters(), without.parameters(), grads) if g is not None]
    scale = max(e.abs().max().item() for _, e in moved)
    assert scale > 1e-5
    for got, expected in moved:
        assert torch.allclose(got, expected, atol=1e-3 * scale, rtol=1e-3)


@pytest.mark.parametrize("name", ["sagnet", "rotation", "erm", "mmd"])
def test_dg_algorithms_train_without_target_images(name):
    algo = build(name, lr=0.01)
    losses = algo.update(dg_batch(), 0)
    assert losses and all(v == v for v in losses.values())


# --- the leave-one-domain-out sweep and its tables -------------------------------------------------

def test_plan_dg_holds_each_domain_out_and_lodo_adds_the_validation_runs():
    base = RunConfig(algo="", src="", tgt="")
    configs, _ = plan_dg(["erm"], [0], 1, base, ("a", "b", "c"))
    assert [(c.src, c.tgt, c.setting) for c in configs] == [("b,c", "a", "dg"), ("a,c", "b", "dg"), ("a,b", "c", "dg")]
    configs, _ = plan_dg(["erm", "coral"], [0, 1], 1, base, ("a", "b", "c"), lodo=True)
    pairs = {(c.src, c.tgt) for c in configs}
    assert len(configs) == 2 * 2 * 9 and {("c", "b"), ("b", "c"), ("c", "a"), ("a", "c"), ("b", "a"), ("a", "b")} < pairs
    configs, _ = plan_dg(["m3sda"], [0], 1, base, ("a", "b", "c"), setting="uda")  # multi-source DA
    assert [(c.src, c.tgt, c.setting) for c in configs] == [("b,c", "a", "uda"), ("a,c", "b", "uda"), ("a,b", "c", "uda")]
    configs, notes = plan_dg(["erm"], [0], 1, base, ("digits-m", "uci-digits", "syndigits"))
    assert ("syndigits", "uci-digits") in {(c.src, c.tgt) for c in configs}  # digits-m is uci-digits recoloured
    assert any("digits-m left out" in n for n in notes)
    # a data set's argument that names a domain or a folder names other images: all sources stay
    configs, notes = plan_dg(["erm"], [0], 1, base, ("pacs:photo", "pacs:sketch", "pacs:cartoon"))
    assert [(c.src, c.tgt) for c in configs][0] == ("pacs:sketch,pacs:cartoon", "pacs:photo") and not notes


def test_which_sources_hold_the_targets_images(tmp_path):
    assert shared_images(["pacs:photo", "pacs:sketch"], "pacs:cartoon") == []
    assert shared_images(["folder:/data/a", "syndigits"], "folder:/data/b") == []
    assert shared_images(["folder:/data/a", "office31:amazon"], "folder:/data/a") == ["folder:/data/a"]
    (tmp_path / "x").mkdir()
    same_folder = f"folder:{tmp_path}/x/.."  # one folder written two ways
    assert shared_images([same_folder, f"folder:{tmp_path}/x"], f"folder:{tmp_path}") == [same_folder]
    assert shared_images(["digits-m", "mnist5k"], "uci-digits") == ["digits-m"]  # images_of
    assert shared_images(["syndigits:500", "uci-digits"], "syndigits") == ["syndigits:500"]  # a generator's count


def test_uda_refuses_a_source_that_holds_the_targets_images(tmp_path):
    for src, tgt in (("uci-digits", "digits-m"), ("uci-digits", "uci-digits")):
        result = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", src, "--tgt", tgt, "--steps", "2",
                                           "--out", str(tmp_path)])
        assert result.exit_code == 2 and "holds its images" in result.output and "--algo oracle" in result.output
        assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def rec(step, src, val, test):
    return {"step": step, "src-val": {"acc": src}, "tgt-val": {"acc": val}, "tgt-test": {"acc": test}}


def write(root, src, tgt, records, seed=0, algo="erm"):
    d = root / f"{src}_to_{tgt}" / algo / f"seed{seed}"
    d.mkdir(parents=True)
    sources = src.split(",")
    config = {"algo": algo, "src": src, "tgt": tgt, "seed": seed, "task": "classification", "metric": "acc",
              "setting": "dg", "steps": 2, "eval_every": 1, "hparams": {}, "classes": ["0", "1"],
              **({"sources": sources} if len(sources) > 1 else {})}
    (d / "config.json").write_text(json.dumps(config))
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "done").touch()


def test_dg_tables_per_held_out_domain_with_training_domain_and_leave_one_domain_out_selection(tmp_path):
    # held out A, trained on B and C: source-val picks step 1 (test 0.50), leave-one-domain-out step 2 (test 0.70)
    write(tmp_path, "B,C", "A", [rec(1, 0.9, 0.1, 0.50), rec(2, 0.8, 0.1, 0.70)])
    write(tmp_path, "C", "B", [rec(1, 0.9, 0.30, 0.0), rec(2, 0.9, 0.60, 0.0)])  # held out B, trained on C
    write(tmp_path, "B", "C", [rec(1, 0.9, 0.40, 0.0), rec(2, 0.9, 0.50, 0.0)])  # held out C, trained on B
    for seed, test in ((0, 0.60), (1, 0.80)):
        write(tmp_path, "A,C", "B", [rec(1, 0.5, 0.2, 0.1), rec(2, 0.6, 0.2, test)], seed=seed)
    board = leaderboard(tmp_path)
    assert not board.tables  # DG runs go to the per-held-out-domain tables only
    tables = {t.method.name: t for t in board.dg}
    assert set(tables) == {"source-val", "lodo", "target-oracle", "last"}
    assert tables["source-val"].domains == ["A", "B", "C"] and tables["source-val"].columns == ["A", "B"]
    (label, (a, b)), = tables["source-val"].rows
    assert label == "erm" and a.mean == pytest.approx(50.0) and b.mean == pytest.approx(70.0) and b.n == 2
    assert b.std == pytest.approx(14.142, abs=1e-3)
    assert tables["source-val"].average([a, b]) == pytest.approx(60.0)
    (_, (a, b)), = tables["lodo"].rows
    assert a.mean == pytest.approx(70.0)  # (0.6 + 0.5) / 2 at step 2 beats (0.3 + 0.4) / 2 at step 1
    assert b is None  # held out B has no validation runs: no LODO cell, and no average
    text = render(board, "markdown")
    assert "## Domain generalisation, A, B, C · lodo" in text and "| erm | 70.0 (1) | – | – |" in text
    assert "training-domain validation" in text
    assert "B,C -> A (dg)" in render(board, "csv") and r"\pm" in render(board, "latex")


def test_dg_sweep_from_the_cli_and_its_leaderboard(tmp_path):
    args = ["sweep", "--algos", "erm,sagnet", "--dg", "toy-src,toy-mid,toy-tgt", "--lodo", "--seeds", "1",
            "--steps", "2", "--eval-every", "2", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "18 finished" in result.output
    board = leaderboard(tmp_path)
    lodo = next(t for t in board.dg if t.method.name == "lodo")
    assert [label for label, _ in lodo.rows] == ["erm", "sagnet"]
    assert all(c is not None for _, cells in lodo.rows for c in cells) and len(lodo.columns) == 3
    result = CliRunner().invoke(main, ["sweep", "--algos", "erm", "--dg", "toy-src,toy-mid", "--src", "toy-src"])
    assert result.exit_code == 2 and "without --src" in result.output
    result = CliRunner().invoke(main, ["sweep", "--algos", "erm", "--dg", "nope"])
    assert result.exit_code == 2 and "Unknown group 'nope'" in result.output
    empty = tmp_path / "empty"  # each domain holds the other's images: nothing is left to train on
    result = CliRunner().invoke(main, ["sweep", "--algos", "erm", "--dg", "digits-m,uci-digits", "--out", str(empty)])
    assert result.exit_code == 2 and "plans no run" in result.output and "no source left" in result.output
    assert not empty.exists()
    listed = CliRunner().invoke(main, ["list", "groups"])
    assert "digits4" in listed.output and "mnistm5k" in listed.output


def test_a_multi_source_da_sweep_holds_each_domain_out_as_the_target(tmp_path):
    """--dg GROUP --setting uda: each domain in turn is the target (its unlabelled images in
    training), the others the sources; the leaderboard has a multi-source table, a column per target."""
    args = ["sweep", "--algos", "m3sda", "--dg", "toy-src,toy-mid,toy-tgt", "--setting", "uda", "--seeds", "1",
            "--steps", "2", "--eval-every", "2", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    board = leaderboard(tmp_path)
    table = next(t for t in board.dg if t.method.name == "source-val")
    assert table.setting == "uda" and table.title.startswith("Multi-source DA") and len(table.columns) == 3
    assert all(c is not None for _, cells in table.rows for c in cells)
    refused = CliRunner().invoke(main, [*args, "--lodo"])
    assert refused.exit_code == 2 and "Drop --lodo or --setting uda" in " ".join(refused.output.split())


def test_the_python_api_takes_several_sources_and_the_dg_setting(tmp_path):
    import dabench

    x = toy_images(40, 0.1, 9)
    with pytest.raises(DabenchError, match=r"different classes \(4: tl, tr, bl, br vs 4: 0, 1, 2, 3\)"):
        dabench.fit("erm", src=["toy-src", (x.images, x.targets)], tgt="toy-tgt", setting="dg", out=tmp_path)
    arrays = dabench.from_arrays(x.images, x.targets, classes=TOY_CLASSES)
    result = dabench.fit("coral", src=["toy-src", arrays], tgt="toy-tgt", setting="dg", steps=2,
                         eval_every=2, out=tmp_path, progress=False)
    assert result.config["setting"] == "dg" and result.config["sources"][0] == "toy-src"
    assert result.config["sources"][1].startswith("arrays-") and result.predict(x.images[:3]).shape == (3, 4)
