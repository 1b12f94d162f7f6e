"""A third-party algorithm, backbone and dataset in their own distribution, found through entry
points, listed and run with no change to dabench: the code and entry points are taken from
CONTRIBUTING.md itself, so the page cannot drift from what works."""
from __future__ import annotations

import pytest

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

CONTRIBUTING = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text()


def section(title: str) -> str:
    return CONTRIBUTING.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def make_distribution(root: Path) -> None:
    text = section("Add an algorithm in your own package")
    code = "\n\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    (root / "my_plugin").mkdir()
    (root / "my_plugin" / "__init__.py").write_text(code)
    project = tomllib.loads(re.search(r"```toml\n(.*?)```", text, re.S).group(1))["project"]
    info = root / "my_dabench_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items()) + "\n"
        for group, eps in project["entry-points"].items()))


def dabench(args, root, cwd):
    env = os.environ | {"COLUMNS": "250", "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "dabench", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_the_plugin_of_contributing_md_is_listed_and_runs(tmp_path):
    make_distribution(tmp_path)
    listed = dabench(["list"], tmp_path, tmp_path)
    assert listed.returncode == 0, listed.stderr
    for text in ("meanmatch", "Source cross-entropy plus matching", "tiny-cnn", "stripes",
                 "my_plugin:MeanMatch", "my_plugin:tiny_cnn", "my_plugin:stripes"):
        assert text in listed.stdout
    detail = dabench(["list", "algorithms", "meanmatch"], tmp_path, tmp_path)  # its hyperparameters, as declared
    assert re.search(r"weight +│ 0\.1 +│", detail.stdout), detail.stdout

    commands = re.findall(r"^dabench run (.*?)$", section("Add an algorithm in your own package"), re.M)
    assert len(commands) == 1
    out = tmp_path / "runs"
    ran = dabench(["run", *shlex.split(commands[0]), "--steps", "20", "--eval-every", "10", "--out", str(out)],
                  tmp_path, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "run folder:" in ran.stdout
    (run_dir,) = (out / "stripes_to_stripes_0.3" / "meanmatch").iterdir()
    config = (run_dir / "config.json").read_text()
    assert (run_dir / "done").exists() and '"weight": 0.3' in config and '"backbone": "tiny-cnn"' in config
