"""A third-party algorithm (and dataset) in its own distribution, found through entry points,
listed and run with no change to dabench: what CONTRIBUTING.md promises."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PLUGIN = '''
"""A throwaway plugin distribution."""
import torch
import torch.nn.functional as F
from dabench.algorithm import Algorithm
from dabench.data import Domain, TensorImages
from dabench.hparams import HParam
from dabench.registry import plugin


class CenterLoss(Algorithm):
    """Source CE plus pulling target features to the source mean (test plugin)."""

    hparams = {**Algorithm.hparams, "weight": HParam(0.1, None, "alignment weight")}

    def __init__(self, backbone, num_classes, hparams, steps):
        super().__init__(backbone, num_classes, hparams, steps)
        self.net = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.out_features, num_classes))
        self.optims["all"] = self.sgd(self.parameters())

    def update(self, batch, step):
        self.anneal(step)
        fs, ft = self.net[0](batch.src_x), self.net[0](batch.tgt_x)
        cls = F.cross_entropy(self.net[1](fs), batch.src_y)
        align = (fs.mean(0) - ft.mean(0)).pow(2).sum()
        self.step(cls + self.hp["weight"] * align, self.optims["all"])
        return {"cls": cls.item(), "align": align.item()}

    def predict(self, x):
        return self.net(x)


@plugin(task="classification", description="stripes, shifted by the argument")
def stripes(arg=None, *, root=None, image_size=None):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 2
    x = torch.rand(80, 3, 16, 16, generator=g) * 0.2 + float(arg or 0)
    x[y == 0, :, ::2] += 0.5
    x[y == 1, :, :, ::2] += 0.5
    return Domain("stripes", "classification", ["rows", "cols"], TensorImages((x.clamp(0, 1) * 255).byte(), y), image_size=16)
'''


def make_distribution(root):
    (root / "centerloss_plugin").mkdir()
    (root / "centerloss_plugin" / "__init__.py").write_text(PLUGIN)
    info = root / "centerloss_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: centerloss-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [dabench.algorithms]
        centerloss = centerloss_plugin:CenterLoss

        [dabench.datasets]
        stripes = centerloss_plugin:stripes
        """))


def dabench(args, root, cwd):
    env = os.environ | {"COLUMNS": "250", "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "dabench", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_third_party_algorithm_is_listed_and_runs(tmp_path):
    make_distribution(tmp_path)
    listed = dabench(["list", "algorithms"], tmp_path, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "centerloss" in listed.stdout and "weight=0.1" in listed.stdout
    assert "Source CE plus pulling" in listed.stdout
    datasets = dabench(["list", "datasets"], tmp_path, tmp_path)
    assert "stripes" in datasets.stdout

    out = tmp_path / "runs"
    ran = dabench(["run", "--algo", "centerloss", "--src", "stripes", "--tgt", "stripes:0.3", "--steps", "20",
                   "--eval-every", "10", "-H", "weight=0.5", "--out", str(out)], tmp_path, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "run folder:" in ran.stdout
    (run_dir,) = (out / "stripes_to_stripes_0.3" / "centerloss").iterdir()
    assert (run_dir / "done").exists()
    assert '"weight": 0.5' in (run_dir / "config.json").read_text()
