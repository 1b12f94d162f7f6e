"""Model selection and the leaderboard, on run folders written by hand with numbers you can check."""
from __future__ import annotations

import csv
import io
import json

import pytest

from dabench.results import selection
from dabench.errors import DabenchError
from dabench.results.leaderboard import leaderboard, render


def rec(step, src, val, test):
    return {"step": step, "time_s": 1.0, "losses": {"cls": 0.5},
            "src-val": {"acc": src}, "tgt-val": {"acc": val}, "tgt-test": {"acc": test}}


def make_run(root, records, *, algo="dann", seed=0, done=True, tgt_labeled=0, hparam_index=0,
             src="syndigits", tgt="uci-digits", task="classification", tail="", **config):
    run_dir = root / f"{src}_to_{tgt}" / algo / f"seed{seed}-n{tgt_labeled}-hp{hparam_index}"
    run_dir.mkdir(parents=True)
    config = {"algo": algo, "src": src, "tgt": tgt, "backbone": "digit-cnn", "seed": seed, "steps": 600,
              "eval_every": 200, "tgt_labeled": tgt_labeled, "hparam_index": hparam_index, "hparams": {},
              "task": task, "metric": "acc" if task == "classification" else "miou",
              "classes": [str(i) for i in range(10)], "eval_size": "28x28"} | config
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    if done:
        (run_dir / "done").touch()
    return run_dir


# step:          200         400          600          800
CURVE = [rec(200, 0.90, 0.50, 0.80), rec(400, 0.95, 0.60, 0.50), rec(600, 0.80, 0.70, 0.60), rec(800, 0.70, 0.65, 0.55)]


def cell(board, method, label="dann"):
    table = next(t for t in board.tables if t.method.name == method)
    return next(r for r in table.rows if r.label == label)


def test_each_method_picks_its_step_and_never_the_best_test():
    assert selection.choose("source-val", CURVE, "acc")["step"] == 400  # best src-val, though its test is the worst
    assert selection.choose("target-oracle", CURVE, "acc")["step"] == 800  # DomainBed's oracle: no early stopping
    assert selection.choose("target-oracle-best", CURVE, "acc")["step"] == 600  # best tgt-val
    assert selection.choose("last", CURVE, "acc")["step"] == 800


def test_ties_go_to_the_later_step():
    records = [rec(200, 0.9, 0.5, 0.1), rec(400, 0.9, 0.5, 0.2), rec(600, 0.8, 0.4, 0.3)]
    assert selection.select("source-val", records, "acc") == 1
    assert selection.select("target-oracle-best", records, "acc") == 1


def test_selection_methods_never_see_the_target_test_split():
    seen = []

    def spy(records, metric):
        seen.extend(records)
        return 0

    method = selection.Method("spy", "spy", False, "src-val", spy)
    assert selection.choose(method, CURVE, "acc")["tgt-test"] == {"acc": 0.80}  # the caller still gets it
    selection.select_run(method, [CURVE, CURVE], "acc")
    assert len(seen) == 3 * len(CURVE)
    assert all("tgt-test" not in r and "src-val" in r for r in seen)
    with pytest.raises(TypeError):
        seen[0]["tgt-test"] = {"acc": 1.0}  # read-only
    assert all("tgt-test" in r for r in CURVE)  # the caller's records are untouched


def test_selected_test_values_averaged_over_seeds_with_sample_std(tmp_path):
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.60)], seed=0)
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.70)], seed=1)
    board = leaderboard(tmp_path)
    row = cell(board, "source-val")
    assert (row.n, row.mean, round(row.std, 2), row.src_val) == (2, 65.0, 7.07, 90.0)
    assert "| dann | 65.0 ± 7.1 | 2 | 90.0 |" in render(board, "markdown")
    assert "ddof=1" in render(board, "markdown")


def test_table_cells_follow_each_selection_method(tmp_path):
    make_run(tmp_path, CURVE)
    board = leaderboard(tmp_path)
    assert cell(board, "source-val").mean == 50.0
    assert cell(board, "target-oracle").mean == pytest.approx(55.0)  # the last step, as DomainBed's oracle
    assert cell(board, "target-oracle-best").mean == 60.0  # the best target-validation step
    assert cell(board, "last").mean == pytest.approx(55.0)


def test_hparam_sweep_picks_the_sample_with_the_better_validation_score(tmp_path):
    hp0 = [rec(200, 0.80, 0.70, 0.90)]  # better target validation, better test
    hp1 = [rec(200, 0.90, 0.60, 0.50)]  # better source validation
    assert selection.select_run("source-val", [hp0, hp1], "acc") == (1, 0)
    assert selection.select_run("target-oracle", [hp0, hp1], "acc") == (0, 0)
    make_run(tmp_path, hp0, hparam_index=0)
    make_run(tmp_path, hp1, hparam_index=1)
    board = leaderboard(tmp_path)
    assert (cell(board, "source-val").mean, cell(board, "source-val").n) == (50.0, 1)  # one seed, not two runs
    assert cell(board, "target-oracle").mean == 90.0
    assert cell(board, "target-oracle-best").mean == 90.0
    assert cell(board, "last").mean == 50.0  # last: hparams by src-val of the last record


def test_incomplete_runs_are_listed_and_not_averaged(tmp_path):
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.60)], seed=0)
    unfinished = make_run(tmp_path, [rec(200, 0.9, 0.5, 0.99), rec(400, 0.9, 0.5, 0.99)], seed=1, done=False)
    board = leaderboard(tmp_path)
    assert board.incomplete == [(unfinished, 400)]
    row = cell(board, "source-val")
    assert (row.n, row.mean, row.std) == (1, 60.0, 0.0)
    md = render(board, "markdown")
    assert "Incomplete runs" in md and f"| {unfinished.relative_to(tmp_path)} | 400 |" in md


def test_a_run_with_an_unreadable_line_is_skipped_and_named_a_training_one_is_listed(tmp_path):
    """A finished run wrote every record whole before its ``done``: a cut or garbage line is damage,
    and its numbers count nowhere (the records before the line would be another run's last step).
    A run still training may be mid-write: it is listed at its last whole record."""
    good = [rec(200, 0.9, 0.5, 0.60), rec(400, 0.8, 0.4, 0.70)]
    make_run(tmp_path, good, seed=0)
    cut = make_run(tmp_path, good, seed=1, tail='{"step": 600, "src-val": {"a')
    garbage = make_run(tmp_path, good[:1], seed=2, tail='garbage\n' + json.dumps(good[1]) + "\n")
    training = make_run(tmp_path, good, seed=3, done=False, tail='{"step": 600, "src-v')
    board = leaderboard(tmp_path)
    assert cell(board, "last").mean == 70.0 and cell(board, "last").n == 1
    reasons = dict(board.skipped)
    assert "line 3 is cut off" in reasons[cut] and "line 2 is not a record" in reasons[garbage]
    assert board.incomplete == [(training, 400)]
    assert "line 3 is cut off" in render(board, "markdown")


def test_malformed_config_is_skipped_with_its_reason(tmp_path):
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.60)])
    bad = make_run(tmp_path, [], algo="broken")
    (bad / "config.json").write_text("{not json")
    no_metric = make_run(tmp_path, [], algo="old", metric=None)
    cfg = json.loads((no_metric / "config.json").read_text())
    (no_metric / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "metric"}))
    board = leaderboard(tmp_path)
    reasons = dict(board.skipped)
    assert set(reasons) == {bad, no_metric}
    assert "unreadable config.json" in reasons[bad] and "metric" in reasons[no_metric]
    assert "Skipped" in render(board, "markdown") and cell(board, "last").mean == 60.0


def test_rows_name_budgets_and_the_oracle_table_is_marked(tmp_path):
    make_run(tmp_path, CURVE, algo="oracle", tgt_labeled="all")
    make_run(tmp_path, CURVE, algo="ccsa", tgt_labeled=100)
    make_run(tmp_path, CURVE, algo="ccsa", tgt_labeled=10)
    make_run(tmp_path, CURVE, algo="dann")
    board = leaderboard(tmp_path)
    assert [r.label for r in board.tables[0].rows] == ["ccsa (N=10)", "ccsa (N=100)", "dann", "oracle (all labels)"]
    md = render(board, "markdown")
    assert "## syndigits -> uci-digits · target-oracle (oracle: uses target labels)" in md
    assert "## syndigits -> uci-digits · target-oracle-best (oracle: uses target labels)" in md
    assert "## syndigits -> uci-digits · source-val\n" in md
    assert md.count("oracle: uses target labels") == 2
    assert "Selection: test-domain validation as DomainBed's oracle: the last evaluation" in md
    assert "Selection: best labelled target validation step (early stopping on target labels" in md


def test_latex_escapes_and_has_one_captioned_table_per_table(tmp_path):
    make_run(tmp_path, CURVE, algo="my_algo", tgt="office_31")
    tex = render(leaderboard(tmp_path), "latex")
    assert tex.count(r"\begin{table}") == 4 and tex.count(r"\caption{") == 4 and r"\toprule" in tex
    assert r"my\_algo & 50.0 $\pm$ 0.0 & 1 & 95.0 \\" in tex
    assert r"office\_31" in tex and r"(\%)" in tex and "my_algo" not in tex
    assert "(oracle: uses target labels; test-domain validation as DomainBed's oracle: the last evaluation" in tex
    assert "(oracle: uses target labels; best labelled target validation step" in tex


def test_csv_is_one_long_table(tmp_path):
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.60)], seed=0)
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.70)], seed=1)
    rows = list(csv.DictReader(io.StringIO(render(leaderboard(tmp_path), "csv"))))
    assert [r["selection"] for r in rows] == ["source-val", "target-oracle", "target-oracle-best", "last"]
    first = rows[0]
    assert (first["pair"], first["algorithm"], first["oracle"], first["n"]) == ("syndigits -> uci-digits", "dann", "False", "2")
    assert (float(first["mean"]), float(first["std"])) == (65.0, 7.0711)
    assert (rows[1]["oracle"], rows[2]["oracle"], rows[3]["oracle"]) == ("True", "True", "False")


def seg(step, src, val, miou, iou):
    return {"step": step, "src-val": {"miou": src, "pixacc": 0.9, "iou": [0.5, 0.5, 0.5]},
            "tgt-val": {"miou": val}, "tgt-test": {"miou": miou, "pixacc": 0.8, "iou": iou}}


def test_segmentation_per_class_table(tmp_path):
    kw = dict(src="gta5", tgt="cityscapes", task="segmentation", algo="adaptsegnet", classes=["road", "car", "sky"],
              eval_size="64x128")
    make_run(tmp_path, [seg(200, 0.5, 0.3, 0.35, [0.5, 0.2, None])], seed=0, **kw)
    make_run(tmp_path, [seg(200, 0.5, 0.3, 0.55, [0.7, 0.4, None])], seed=1, **kw)
    board = leaderboard(tmp_path)
    row = cell(board, "source-val", "adaptsegnet")
    assert row.mean == 45.0 and [round(v, 6) for v in row.iou[:2]] == [60.0, 30.0]
    md = render(board, "markdown")
    assert "3 classes, eval size 64x128" in md
    assert "| algorithm | road | car | sky | mIoU |" in md and "| adaptsegnet | 60.0 | 30.0 | – | 45.0 |" in md
    rows = list(csv.DictReader(io.StringIO(render(board, "csv"))))
    assert (rows[0]["iou_road"], rows[0]["iou_car"], rows[0]["iou_sky"], rows[0]["mean"]) == ("60.0", "30.0", "", "45.0")
    assert render(board, "latex").count(r"\begin{table}") == 8  # main + per-class, per method


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DabenchError, match="does not exist.*config.json.*dabench run"):
        leaderboard(tmp_path / "nope")
    with pytest.raises(DabenchError, match="holds no runs.*config.json"):
        leaderboard(tmp_path)
    with pytest.raises(DabenchError, match="markdown, latex, csv"):
        render(leaderboard(make_run(tmp_path, CURVE).parent), "html")


def test_synthia_16_class_table_adds_the_13_class_mean(tmp_path):
    from dabench_plugins.datasets.cityscapes import SYNTHIA_16, label_space

    iou = [0.1 * (i % 5) for i in range(16)]  # wall, fence, pole are indices 3, 4, 5 -> 0.3, 0.4, 0.0
    make_run(tmp_path, [seg(200, 0.5, 0.3, sum(iou) / 16, iou)], seed=0, src="synthia", tgt="cityscapes:16",
             task="segmentation", algo="erm", classes=SYNTHIA_16, eval_size="1024x512",
             class_subsets=label_space(SYNTHIA_16)["class_subsets"])  # as the runner records the data set's
    md = render(leaderboard(tmp_path), "markdown")
    by_hand = 100 * (sum(iou) - 0.3 - 0.4 - 0.0) / 13  # = 100 * 2.5 / 13
    assert "| mIoU | mIoU13 |" in md and f"| {100 * sum(iou) / 16:.1f} | {by_hand:.1f} |" in md
    assert "mIoU13 = mean IoU over the 13-class subset" in md


def test_a_19_class_table_has_no_13_class_mean(tmp_path):
    from dabench_plugins.datasets.cityscapes import CITYSCAPES_CLASSES

    iou = [0.5] * 19
    make_run(tmp_path, [seg(200, 0.5, 0.3, 0.5, iou)], seed=0, src="gta5", tgt="cityscapes",
             task="segmentation", algo="erm", classes=CITYSCAPES_CLASSES, eval_size="1024x512")
    md = render(leaderboard(tmp_path), "markdown")
    assert "| mIoU |" in md and "mIoU13" not in md


def test_runs_that_differ_in_a_minus_h_value_are_rows_of_their_own(tmp_path):
    # an ablation: the same algorithm with translator=none vs fda (set with -H), 2 seeds each;
    # the -H lr shared by all runs does not split rows, and hparam-search samples still share one
    ablation = {"none": [0.40, 0.50], "fda": [0.60, 0.70]}
    for translator, tests in ablation.items():
        for seed, test in enumerate(tests):
            root = tmp_path / translator
            make_run(root, [rec(200, 0.9, 0.5, test)], algo="udas", seed=seed,
                     hparams={"translator": translator, "lr": 0.01}, overrides=["lr", "translator"])
    make_run(tmp_path / "none", [rec(200, 0.95, 0.5, 0.10)], algo="udas", seed=0, hparam_index=1,
             hparams={"translator": "none", "lr": 0.01}, overrides=["lr", "translator"])
    board = leaderboard(tmp_path)
    assert cell(board, "source-val", "udas (translator=none)").mean == pytest.approx((10.0 + 50.0) / 2)
    assert cell(board, "source-val", "udas (translator=fda)").mean == pytest.approx(65.0)
    assert "| udas (translator=fda) | 65.0 ± 7.1 |" in render(board, "markdown")
    assert "udas,translator=fda,0,2,65.0" in render(board, "csv")


def test_a_minus_h_only_some_runs_of_the_table_set_names_its_row(tmp_path):
    # dann -H bsp=true beside plain erm: one dann config only, yet the row must not read as plain dann;
    # the value is written as the command line writes it
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.40)], algo="erm")
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.30)], algo="dann", hparams={"bsp": True}, overrides=["bsp"])
    board = leaderboard(tmp_path)
    assert {r.label for r in next(t for t in board.tables if t.method.name == "source-val").rows} == {"erm", "dann (bsp=true)"}
    assert "| dann (bsp=true) | 30.0 |" in render(board, "markdown")
    assert ",dann,bsp=true,0,1,30.0," in render(board, "csv")


def test_seeds_that_failed_are_counted_in_their_row_and_block_the_comparison(tmp_path):
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.40)], algo="erm")
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.40)], algo="erm", seed=1)
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.80)], algo="m3sda")
    for seed in (1, 2):  # stopped on a non-finite loss before any evaluation
        d = make_run(tmp_path, [], algo="m3sda", seed=seed, done=False)
        (d / "failed").write_text(json.dumps({"step": 60 + seed, "message": "Loss became non-finite at step 61."}))
    board = leaderboard(tmp_path)
    row = cell(board, "source-val", "m3sda")
    assert (row.n, row.failed, row.mean) == (1, 2, pytest.approx(80.0))
    text = render(board, "markdown")
    assert "| m3sda | 80.0 | 1 (+2 failed) | 90.0 | 2 of 3 seeds failed (non-finite loss): not compared |" in text
    assert "| syndigits_to_uci-digits/m3sda/seed1-n0-hp0 | 61 | Loss became non-finite at step 61. |" in text
    assert not board.incomplete and len(board.failed) == 2


def test_a_table_from_two_cpu_models_says_so(tmp_path):
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.40)], algo="erm", machine={"cpu": "AMD EPYC", "device": "cpu"})
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.50)], algo="dann", machine={"cpu": "Intel Xeon", "device": "cpu"})
    text = render(leaderboard(tmp_path), "markdown")
    assert "Runs from 2 machines (AMD EPYC, Intel Xeon): the same seed gives other numbers" in text
    one = tmp_path / "one"
    make_run(one, [rec(200, 0.9, 0.5, 0.40)], algo="erm", machine={"cpu": "Intel Xeon", "device": "cpu"})
    make_run(one, [rec(200, 0.9, 0.5, 0.50)], algo="dann", machine={"cpu": "Intel Xeon", "device": "cpu"})
    assert "machines" not in render(leaderboard(one), "markdown")


def test_runs_of_another_budget_or_network_are_rows_of_their_own_not_more_seeds(tmp_path):
    # seed 0 at 2,000 and at 10,000 steps in one folder: two rows of one seed each, not one seed
    # whose "search samples" source-val picks among (it would take the 10,000-step run: src-val 0.95)
    make_run(tmp_path, [rec(200, 0.90, 0.5, 0.40)], algo="erm", steps=2000)
    make_run(tmp_path / "long", [rec(200, 0.95, 0.5, 0.60)], algo="erm", steps=10000)
    make_run(tmp_path / "net", [rec(200, 0.99, 0.5, 0.70)], algo="erm", steps=2000, backbone="domainbed-cnn",
             seed=1)
    for seed, test in enumerate([0.70, 0.74]):  # dann at 10,000 steps: compared with erm at 10,000 steps
        make_run(tmp_path / "long", [rec(200, 0.95, 0.5, test)], algo="dann", steps=10000, seed=seed)
    make_run(tmp_path / "long", [rec(200, 0.95, 0.5, 0.62)], algo="erm", steps=10000, seed=1)
    board = leaderboard(tmp_path)
    labels = [r.label for r in next(t for t in board.tables if t.method.name == "source-val").rows]
    assert labels == ["dann (steps=10000, backbone=digit-cnn)", "erm (steps=2000, backbone=digit-cnn)",
                      "erm (steps=2000, backbone=domainbed-cnn)", "erm (steps=10000, backbone=digit-cnn)"]
    assert cell(board, "source-val", "erm (steps=2000, backbone=digit-cnn)").mean == pytest.approx(40.0)
    assert cell(board, "source-val", "erm (steps=10000, backbone=digit-cnn)").mean == pytest.approx(61.0)
    # dann 72.0 ± 2.8 against erm at its own budget, 61.0 ± 1.4: +11.0, twice the larger std 5.7
    assert "| dann (steps=10000, backbone=digit-cnn) | 72.0 ± 2.8 | 2 | 95.0 | +11.0 (beyond 5.7) |" in render(board, "markdown")


def test_selection_methods_are_scored_against_target_oracle(tmp_path):
    # three runs of one record each: (src-val, tgt-val, tgt-test) and label-free scores
    runs = [(0.9, 0.5, 0.40, dict(entropy=0.5, im=0.1, snd=1.0)),
            (0.8, 0.7, 0.60, dict(entropy=0.2, im=0.3, snd=2.0)),
            (0.7, 0.6, 0.65, dict(entropy=0.4, im=0.2, snd=3.0))]
    for seed, (src, val, test, scores) in enumerate(runs):
        make_run(tmp_path, [rec(200, src, val, test) | {selection.LABEL_FREE: scores}], seed=seed)
    board = leaderboard(tmp_path)
    got = {a.method: a for a in board.agreement}
    assert set(got) == {"source-val", "last", "entropy", "im", "snd"}  # target-oracle is the reference; no dev scores
    # oracle ranks the runs 1, 3, 2 (tgt-val) and picks the second (test 60)
    assert got["source-val"].rho == pytest.approx(-0.5)  # ranks 3, 2, 1: 1 - 6 x 6 / (3 x 8)
    assert got["source-val"].picked == pytest.approx(40) and got["source-val"].lost == pytest.approx(20)
    assert got["im"].rho == pytest.approx(1.0) and got["im"].lost == pytest.approx(0)
    assert got["entropy"].rho == pytest.approx(1.0)  # lower entropy is better: ranks 1, 3, 2
    assert got["snd"].rho == pytest.approx(0.5) and got["snd"].lost == pytest.approx(-5)  # picks the third: 65
    md = render(board, "markdown")
    assert "## Model selection against target-oracle-best\n" in md and "| syndigits -> uci-digits | dann | im | 3 | 1.00 |" in md
    assert any(t.method.name == "snd" for t in board.tables)  # scored runs get label-free tables too
    tex = render(board, "latex")
    assert r"\label{tab:selection-agreement}" in tex and r"dann & im & 3 & 1.00 & 60.0 & 60.0 & 0.0 \\" in tex


def test_target_oracle_is_domainbeds_last_step_and_the_best_step_oracle_keeps_its_own_name(tmp_path):
    # two hyperparameter samples of one seed, (step, src-val, tgt-val, tgt-test):
    hp0 = [rec(200, 0.9, 0.90, 0.95), rec(400, 0.9, 0.50, 0.40)]  # best tgt-val early, then worse
    hp1 = [rec(200, 0.8, 0.60, 0.55), rec(400, 0.8, 0.70, 0.65)]  # better tgt-val at the last step
    # DomainBed's OracleSelectionMethod: each sample's last record; the sample whose last tgt-val is best
    assert selection.select_run("target-oracle", [hp0, hp1], "acc") == (1, 1)
    # the best-step oracle: each sample's best tgt-val step (hp0's step 200 at 0.90), the best of those
    assert selection.select_run("target-oracle-best", [hp0, hp1], "acc") == (0, 0)
    make_run(tmp_path, hp0, hparam_index=0)
    make_run(tmp_path, hp1, hparam_index=1)
    make_run(tmp_path, [rec(200, 0.9, 0.2, 0.10), rec(400, 0.9, 0.3, 0.20)], seed=1)  # one sample: its last step
    board = leaderboard(tmp_path)
    assert cell(board, "target-oracle").mean == pytest.approx((65.0 + 20.0) / 2)
    assert cell(board, "target-oracle-best").mean == pytest.approx((95.0 + 20.0) / 2)
    md = render(board, "markdown")
    assert "| dann | 42.5 ± 31.8 | 2 | 85.0 |" in md  # target-oracle: src-val 80 and 90 at the chosen steps
    assert "| dann | 57.5 ± 53.0 | 2 | 90.0 |" in md  # target-oracle-best


def test_label_free_selection_is_scored_against_the_best_step_oracle(tmp_path):
    # three runs whose last step is not their best target-validation step
    runs = [[rec(200, 0.9, 0.80, 0.70), rec(400, 0.8, 0.10, 0.05)],
            [rec(200, 0.7, 0.30, 0.30), rec(400, 0.6, 0.60, 0.50)],
            [rec(200, 0.5, 0.20, 0.20), rec(400, 0.4, 0.40, 0.45)]]
    for seed, records in enumerate(runs):
        make_run(tmp_path, records, seed=seed)
    got = {a.method: a for a in leaderboard(tmp_path).agreement}
    # target-oracle-best: run 0 at step 200 (tgt-val 0.80): 70; DomainBed's target-oracle would take run 1's last (50)
    assert got["source-val"].oracle == pytest.approx(70.0) and got["source-val"].picked == pytest.approx(70.0)
    assert got["last"].picked == pytest.approx(5.0) and got["last"].lost == pytest.approx(65.0)
    # Spearman over runs of (score at the method's step) with the oracle's best tgt-val (0.8, 0.6, 0.4)
    assert got["source-val"].rho == pytest.approx(1.0) and got["last"].rho == pytest.approx(1.0)


def dg_run(root, src, tgt, records, seed=0, algo="erm", **extra):
    d = root / f"{src}_to_{tgt}" / algo / f"seed{seed}{''.join(f'-{v}' for v in extra.values())}"
    d.mkdir(parents=True)
    config = {"algo": algo, "src": src, "tgt": tgt, "seed": seed, "task": "classification", "metric": "acc",
              "setting": "dg", "steps": 2, "eval_every": 1, "hparams": {}, "classes": ["0", "1"],
              "sources": src.split(",")} | extra
    (d / "config.json").write_text(json.dumps(config))
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "done").touch()


def test_dg_test_domain_validation_is_domainbeds_oracle(tmp_path):
    dg_run(tmp_path, "B,C", "A", [rec(1, 0.9, 0.9, 0.80), rec(2, 0.8, 0.4, 0.30)])  # best tgt-val first, then the last
    dg_run(tmp_path, "A,C", "B", [rec(1, 0.9, 0.9, 0.70), rec(2, 0.8, 0.5, 0.60)])
    board = leaderboard(tmp_path)
    oracle = next(t for t in board.dg if t.method.name == "target-oracle")
    (_, (a, b)), = oracle.rows
    assert (a.mean, b.mean) == (pytest.approx(30.0), pytest.approx(60.0))  # the last steps, not 80 and 70
    md = render(board, "markdown")
    assert "Selection: test-domain validation as DomainBed's oracle (the last step;" in md


def test_dg_tables_rank_the_algorithms_and_compare_each_with_erm(tmp_path):
    """Held out A and B, two seeds each (target test %): erm 50, 52 | 60, 60; x 60, 62 | 59, 61;
    y 51, 51 | 40, 42. Column A ranks x 1, erm and y tied at 51 (2.5 each); column B erm and x tied
    at 60 (1.5 each), y 3: mean ranks erm 2.0, x 1.25, y 2.75. Against ERM with twice the larger
    std: x +10 in A (beyond 2.83) and 0 in B; y 0 in A and -19 in B (beyond 2.83)."""
    values = {"erm": ((50, 52), (60, 60)), "x": ((60, 62), (59, 61)), "y": ((51, 51), (40, 42))}
    for algo, (a, b) in values.items():
        for seed in range(2):
            dg_run(tmp_path, "B,C", "A", [rec(1, 0.9, 0.5, a[seed] / 100)], seed, algo)
            dg_run(tmp_path, "A,C", "B", [rec(1, 0.9, 0.5, b[seed] / 100)], seed, algo)
    table = next(t for t in leaderboard(tmp_path).dg if t.method.name == "source-val")
    assert [label for label, _ in table.rows] == ["erm", "x", "y"]
    assert table.ranks() == [pytest.approx(2.0), pytest.approx(1.25), pytest.approx(2.75)]
    assert [table.against_erm(cells) for _, cells in table.rows] == ["", "↑1 =1 ↓0", "↑0 =1 ↓1"]
    md = render(leaderboard(tmp_path), "markdown")
    assert "| algorithm | A | B | avg | rank | vs erm |" in md and "| 2.75 | ↑0 =1 ↓1 |" in md
    assert "Rank" in render(leaderboard(tmp_path), "latex")


def test_dg_rows_on_another_network_are_compared_with_erm_on_that_network(tmp_path):
    """Held out A, two seeds: on digit-cnn erm 50, 52 and x 60, 62; on another network erm 70, 72 and
    x 71, 73. x is +10 (beyond 2.83) against erm on its own network and +1 (inside) on the other."""
    values = {("erm", "digit-cnn"): (50, 52), ("x", "digit-cnn"): (60, 62), ("erm", "other"): (70, 72),
              ("x", "other"): (71, 73)}
    for (algo, net), a in values.items():
        for seed in range(2):
            dg_run(tmp_path, "B,C", "A", [rec(1, 0.9, 0.5, a[seed] / 100)], seed, algo, backbone=net)
    table = next(t for t in leaderboard(tmp_path).dg if t.method.name == "source-val")
    assert [label for label, _ in table.rows] == ["erm (backbone=digit-cnn)", "erm (backbone=other)",
                                                  "x (backbone=digit-cnn)", "x (backbone=other)"]
    assert [table.against_erm(cells) for _, cells in table.rows] == ["", "", "↑1 =0 ↓0", "↑0 =1 ↓0"]


def test_markdown_compares_every_row_with_the_reference_by_twice_the_larger_std(tmp_path):
    # erm: 0.50, 0.52 at the source-val step (mean 51.0, std 1.414); dann: 0.60, 0.64 (62.0, 2.828)
    # -> +11.0 against twice 2.828 = 5.7: beyond. sagnet: 0.50, 0.54 (52.0, 2.828) -> +1.0: inside 5.7.
    for algo, tests in (("erm", (0.50, 0.52)), ("dann", (0.60, 0.64)), ("sagnet", (0.50, 0.54))):
        for seed, t in enumerate(tests):
            make_run(tmp_path, [rec(200, 0.9, 0.5, t)], algo=algo, seed=seed)
    md = render(leaderboard(tmp_path), "markdown")
    assert "| algorithm | tgt-test acc (%) | n | src-val acc (%) | vs erm (twice the larger std) |" in md
    assert "| dann | 62.0 ± 2.8 | 2 | 90.0 | +11.0 (beyond 5.7) |" in md
    assert "| sagnet | 52.0 ± 2.8 | 2 | 90.0 | +1.0 (inside 5.7) |" in md
    assert "| erm | 51.0 ± 1.4 | 2 | 90.0 |  |" in md
    md = render(leaderboard(tmp_path), "markdown", reference="sagnet")
    assert "| erm | 51.0 ± 1.4 | 2 | 90.0 | -1.0 (inside 5.7) |" in md and "vs sagnet" in md


def test_per_seed_values_are_the_selected_steps_in_seed_order(tmp_path):
    # seed 10's folder sorts before seed 2's; each seed's value is its source-val step's test (0.70 at step 400, not 0.10)
    make_run(tmp_path, [rec(200, 0.8, 0.5, 0.10), rec(400, 0.9, 0.5, 0.70)], seed=10)
    make_run(tmp_path, [rec(200, 0.9, 0.5, 0.60)], seed=2)
    board = leaderboard(tmp_path)
    assert cell(board, "source-val").per_seed == ((2, pytest.approx(60.0)), (10, pytest.approx(70.0)))
    md = render(board, "markdown", per_seed=True)
    assert "| src-val acc (%) | per seed |" in md and "| dann | 65.0 ± 7.1 | 2 | 90.0 | 2: 60.0, 10: 70.0 |" in md
    assert "per seed" not in render(board, "markdown")
    row = next(csv.DictReader(io.StringIO(render(board, "csv"))))
    assert row["per_seed"] == "2:60.0 10:70.0"
    with pytest.raises(DabenchError, match="--format markdown or csv"):
        render(board, "latex", per_seed=True)


def test_dg_per_seed_table_under_the_dg_table(tmp_path):
    for seed, (a, b) in enumerate(((0.50, 0.60), (0.52, 0.64))):
        dg_run(tmp_path, "B,C", "A", [rec(1, 0.9, 0.5, a)], seed)
        dg_run(tmp_path, "A,C", "B", [rec(1, 0.9, 0.5, b)], seed)
    md = render(leaderboard(tmp_path), "markdown", per_seed=True)
    assert "| algorithm | A | B |" in md and "| erm | 0: 50.0, 1: 52.0 | 0: 60.0, 1: 64.0 |" in md
