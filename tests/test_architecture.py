"""docs/architecture.md stays true to the tree: every dabench module it names exists, every core
module is named, and the results layer it describes as torch-free imports no torch."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_core_module_is_named_and_every_named_module_exists():
    core = {p.name for p in (ROOT / "dabench").glob("*.py")}
    named = {n for n in re.findall(r"\b([a-z_]+\.py)\b", DOC) if not n.startswith("test_")}
    assert core - named == set(), "core modules missing from docs/architecture.md"
    assert named - core - {"pyproject.toml"} == set(), "docs/architecture.md names modules that do not exist"


def test_the_results_layer_imports_no_torch():
    for name in ("records", "results", "selection", "leaderboard", "curve"):
        tree = ast.parse((ROOT / "dabench" / f"{name}.py").read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "torch" not in imported, f"dabench/{name}.py imports torch"
