"""Every section of CONTRIBUTING.md is held to the code: the first section's plugin is installed,
listed and run by tests/test_plugins.py; here, every name the other sections tell a contributor to
use (``dabench.cache.KeyedFolder``, ``batch.source_domains()``, ``batch.aligned_groups``,
``ctx.autocast()``, ``@plugin(..., images_of=...)``, files and extras) must exist, so the page
cannot drift from the code it describes."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import tomllib
from pathlib import Path

import pytest

from dabench.algorithm import Algorithm, ClassificationAlgorithm, SegmentationAlgorithm, StageContext
from dabench.data import Batch
from dabench.registry import REGISTRIES, plugin

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "CONTRIBUTING.md").read_text()
SECTIONS = {block.split("\n", 1)[0].strip(): block for block in TEXT.split("\n## ")[1:]}


def resolves(dotted: str) -> bool:
    """``dabench.cache.KeyedFolder`` -> the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def members(cls) -> set[str]:
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return fields | {name for name, _ in inspect.getmembers(cls)}


def names_in(section: str) -> list[str]:
    """Every name a section shows in backticks that should exist in the code."""
    spans = re.findall(r"`([^`\n]+)`", section)
    found = []
    for span in spans:
        found += re.findall(r"\b(?:dabench|dabench_plugins)(?:\.[A-Za-z_]\w*)+", span)
        found += [f"batch.{m}" for m in re.findall(r"\bbatch\.(\w+)", span)]
        found += [f"self.{m}" for m in re.findall(r"\bself\.(\w+)", span)]
        found += [f"ctx.{m}" for m in re.findall(r"\bctx\.(\w+)", span)]
        if span.startswith("@plugin("):
            found += [f"plugin:{k}" for k in re.findall(r"(\w+)=", span)]
    return found


def exists(name: str) -> bool:
    kind, _, attr = name.partition(".")
    if kind == "batch":
        return attr in members(Batch)
    if kind == "self":
        return any(attr in members(c) for c in (Algorithm, ClassificationAlgorithm, SegmentationAlgorithm))
    if kind == "ctx":
        return attr in members(StageContext)
    if name.startswith("plugin:"):
        return name.removeprefix("plugin:") in inspect.signature(plugin).parameters
    if name in {r.group for r in REGISTRIES.values()}:  # an entry-point group: dabench.datasets, ...
        return True
    return resolves(name)


@pytest.mark.parametrize("title", [t for t in SECTIONS if t != "Add an algorithm in your own package"])
def test_every_name_a_section_tells_you_to_use_exists(title):
    names = names_in(SECTIONS[title])
    if title == "Working on dabench itself":
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        commands = re.findall(r"^(?:python3|pytest)[^\n#]*", SECTIONS[title], re.M)
        assert 'pip install -e ".[dev]"' in commands[0] and "dev" in extras
        assert any(c.strip() == "pytest benchmarks/" for c in commands) and (ROOT / "benchmarks").is_dir()
        assert (ROOT / "tests" / "reference" / "harness.py").is_file()
        assert "benchmarks/bench_transcriptions.py" in SECTIONS[title]
        assert (ROOT / "benchmarks" / "bench_transcriptions.py").is_file()
        return
    assert names, f"section '{title}' names nothing the test can hold to the code"
    missing = [n for n in names if not exists(n)]
    assert missing == [], f"CONTRIBUTING.md, '{title}', names what the code lacks: {missing}"


def test_the_first_section_is_run_by_the_plugin_test():
    assert "CONTRIBUTING" in (ROOT / "tests" / "test_plugins.py").read_text()
    assert "Add an algorithm in your own package" in SECTIONS


def test_the_check_fails_on_a_name_the_code_lacks():
    assert not exists("dabench.cache.NoSuchFolder") and not exists("batch.tgt_labels") and not exists("ctx.gpu")
    assert not exists("dabench.widgets") and not exists("plugin:image_of")
    assert exists("dabench.cache.KeyedFolder") and exists("batch.source_domains") and exists("ctx.autocast")
