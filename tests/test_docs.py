"""The documentation site builds with every link and reference resolved, and its generated tables
follow the registry (a method added is a row, with its parity test)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a site build in a subprocess
def test_the_site_builds_strict_with_the_methods_table_from_the_registry(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    methods = (tmp_path / "site" / "methods" / "index.html").read_text()
    from dabench.registry import algorithms

    for name in algorithms.names():
        if algorithms.where(name).startswith("dabench_plugins."):
            assert f"<code>{name}</code>" in methods, name
    assert "<code>tests/test_parity_cdan.py</code>" in methods and "<code>tests/test_parity_udas.py</code>" in methods
    api = (tmp_path / "site" / "python" / "index.html").read_text()
    assert 'id="dabench.api.fit"' in api and 'id="dabench.results.report.report"' in api  # from the docstrings
    assert "Add an algorithm in your own package" in (tmp_path / "site" / "plugins" / "index.html").read_text()
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()  # every command and option, from click itself
    from dabench.cli import main

    for name, command in main.commands.items():
        assert f"dabench {name}" in cli, name
    assert "<code>--tgt-labeled</code>" in cli and "<code>--log</code>" in cli and "One of: jsonl, tensorboard, mlflow" in cli
    hps = (tmp_path / "site" / "hyperparameters" / "index.html").read_text()
    assert "final weight of the reversed domain gradient" in hps and "10^U(-3, -1.5)" in hps


def test_the_readme_stays_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 130  # what it is, the result tables (UDA, SSDA, multi-source, DG), two commands
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"plugins.md"}  # plugins.md is CONTRIBUTING.md
    assert {p for p in pages if f"(docs/{p})" not in readme} == set()
    nav = (ROOT / "mkdocs.yml").read_text()
    assert {p for p in pages | {"plugins.md"} if f": {p}" not in nav} == set()  # every page is in the site's menu


def test_every_markdown_table_has_its_header_separator():
    """A table whose header is not followed by a |---| row renders as a paragraph of pipes."""
    files = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", ROOT / "CONTRIBUTING.md",
             ROOT / "benchmarks" / "RESULTS.md"]
    broken = []
    for path in files:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            starts = line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))
            if starts and not (i + 1 < len(lines) and set(lines[i + 1].replace(" ", "")) <= set("|-:")
                               and "-" in lines[i + 1]):
                broken.append(f"{path.relative_to(ROOT)}:{i + 1}: {line[:60]}")
    assert not broken, "tables without a |---| row under the header:\n" + "\n".join(broken)
