"""``dabench report`` (one HTML page of a folder of runs) and ``dabench embed`` (the features' t-SNE),
on run folders written by hand with numbers you can check, and in a real browser."""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess

import pytest
from click.testing import CliRunner

from dabench.cli import main
from dabench.results.report import per_class, report
from dabench.results.records import read_runs
from dabench.runner import RunConfig, run
from tests.test_leaderboard import make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rec(step, src, val, test, class_acc):
    return {"step": step, "time_s": 1.0, "losses": {"cls": 0.5}, "src-val": {"acc": src}, "tgt-val": {"acc": val},
            "tgt-test": {"acc": test, "class_acc": class_acc}}


def sweep_folder(root):
    """Two algorithms, two seeds each, on one pair; source-val picks step 400 in every run."""
    ten = [0.1] * 8
    for algo, test, seeds in (("erm", 0.6, ((0.50, 1.00), (0.70, 0.80))), ("dann", 0.3, ((0.20, 0.40), (0.40, 0.60)))):
        for seed, (a, b) in enumerate(seeds):
            records = [rec(200, 0.80, 0.5, 0.5, [0.0, 0.0] + ten), rec(400, 0.90, 0.6, test, [a, b] + ten),
                       rec(600, 0.85, 0.7, 0.7, [1.0, 1.0] + ten)]
            run_dir = make_run(root, records, algo=algo, seed=seed)
            (run_dir / "steps.jsonl").write_text("".join(json.dumps({"step": s, "stage": "train", "cls": 2.0 / s})
                                                         + "\n" for s in range(1, 601)) + '{"step": 601, "cls"')
    return root


def test_per_class_scores_are_those_of_the_step_source_val_chose_averaged_over_seeds(tmp_path):
    runs, _, _ = read_runs(p.parent for p in sweep_folder(tmp_path).rglob("config.json"))
    classes, what, scores = per_class(runs)
    assert classes == [str(i) for i in range(10)] and "source-val" in what and "accuracy" in what
    assert scores["erm"][:3] == pytest.approx([60.0, 90.0, 10.0])  # (50 + 70) / 2, (100 + 80) / 2
    assert scores["dann"][:2] == pytest.approx([30.0, 50.0])


def test_report_holds_every_table_curve_and_heatmap_in_one_file(tmp_path):
    out = report(sweep_folder(tmp_path / "runs"), tmp_path / "page" / "report.html")
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text  # nothing fetched
    assert text.count('<table class="sortable">') >= 4  # source-val, last, the oracles ...
    assert ">source-val<" in text and "target-oracle (oracle: uses target labels)" in text
    assert "<td>erm</td><td data-v='2'>2</td><td data-v=\"60.0000\">60.0 ± 0.0</td>" in text  # step 400, both seeds
    # a card per algorithm, each with an evaluation chart and a loss chart
    assert text.count('<div class="card">') == 2 and text.count('<svg class="chart"') == 4
    heat = re.findall(r'<td class="heat" data-v="([\d.]+)"', text)
    assert heat[:2] == ["30.00", "50.00"] and heat[10:12] == ["60.00", "90.00"]  # dann's row, then erm's
    assert not list(out.parent.glob("*.partial"))


def test_report_on_a_folder_without_a_finished_run_exits_2(tmp_path):
    make_run(tmp_path, [rec(200, 0.8, 0.5, 0.5, [0.5] * 10)], done=False)
    r = CliRunner().invoke(main, ["report", str(tmp_path), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "no finished run" in r.stderr and "1 unfinished" in r.stderr
    assert not (tmp_path / "r.html").exists()
    r = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "does not exist" in r.stderr


def _chromium(args, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # starts a browser
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_report_opens_in_chromium_without_a_console_error_and_its_tables_sort(tmp_path):
    out = report(sweep_folder(tmp_path / "runs"), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    done = _chromium([f"--screenshot={shot}", "--window-size=1280,1600", out.as_uri()], tmp_path)
    assert shot.is_file(), done.stderr[-2000:]
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # the PNG header's size
    assert (width, height) == (1280, 1600) and shot.stat().st_size > 20_000  # a page, not a blank
    # The page's own script ran to its end, with no message on the console, and the browser built
    # its tables and charts. Then a click on "target test acc" sorts the rows in the browser.
    page = out.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", """<script>
var t = document.querySelector("table.sortable"), th = t.querySelectorAll("thead th")[2];
var order = function () { return Array.prototype.map.call(t.tBodies[0].rows, function (r) { return r.cells[0].textContent; }).join(","); };
var before = order(); th.click(); var up = order(); th.click();
document.title = "sorted " + before + " | " + up + " | " + order();
</script></body>"""))
    done = _chromium(["--dump-dom", probe.as_uri()], tmp_path)
    dom = done.stdout
    assert 'data-ready="1"' in dom and "CONSOLE" not in done.stderr, done.stderr[-2000:]
    assert dom.count("<svg") == 4 and dom.count("<polyline") >= 4 and dom.count("<tbody>") >= 5
    assert "<title>sorted dann,erm | dann,erm | erm,dann</title>" in dom  # dann 30 < erm 60: up, then down


def test_embed_writes_a_tsne_picture_the_report_shows(tmp_path):
    result = run(RunConfig(algo="dann", src="toy-src", tgt="toy-tgt", steps=20, eval_every=10, out=str(tmp_path)))
    r = CliRunner().invoke(main, ["embed", str(result.run_dir), "--images", "40"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    png = result.run_dir / "embed" / "tsne.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    page = report(tmp_path, tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "embed/tsne.png" not in page and ": tsne</figcaption>" in page
    r = CliRunner().invoke(main, ["embed", str(tmp_path / "not-a-run")])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_embed_refuses_a_run_without_weights(tmp_path):
    result = run(RunConfig(algo="erm", src="toy-src", tgt="toy-tgt", steps=20, eval_every=10, out=str(tmp_path)))
    (result.run_dir / "selected.pt").unlink()
    r = CliRunner().invoke(main, ["embed", str(result.run_dir), "--images", "40"])
    assert r.exit_code == 2 and "selected.pt" in r.stderr


def test_classification_records_carry_per_class_accuracy_checked_by_hand():
    import torch

    from dabench.metrics import ConfusionMatrix

    cm = ConfusionMatrix(3)
    # class 0: 2 of 3 right; class 1: 1 of 1 right; class 2: no image
    cm.add(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1]))
    summary = cm.summary("classification")
    assert summary == {"acc": 0.75, "class_acc": [pytest.approx(2 / 3), 1.0, None]}
