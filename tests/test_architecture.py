"""docs/architecture.md stays true to the tree: every dabench module it names exists, every core
module is named, and the results layer it describes as torch-free imports no torch."""
from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dabench import runfolder

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
README = (ROOT / "README.md").read_text()


def test_every_core_module_is_named_and_every_named_module_exists():
    package = ROOT / "dabench"
    core = {p.relative_to(package).as_posix() for p in package.rglob("*.py")
            if p.name != "__init__.py" or p.parent == package}  # a sub-package's __init__ holds its docstring
    named = {n for n in re.findall(r"(?<![/\w])((?:[a-z_]+/)?[a-z_]+\.py)\b", DOC)
             if not n.startswith(("test_", "tests/", "plugins/", "benchmarks/", "docs/"))}
    assert core - named == set(), "core modules missing from docs/architecture.md"
    assert named - core - {"pyproject.toml"} == set(), "docs/architecture.md names modules that do not exist"
    paths = set(re.findall(r"\b((?:plugins|dabench|tests|benchmarks|docs)/[\w/]+\.(?:py|md))\b", DOC))
    assert {p for p in paths if not (ROOT / p).exists()} == set(), "docs/architecture.md names files that do not exist"


def test_the_results_layer_imports_no_torch():
    """Imported in a fresh interpreter, the run-folder module and the results layer load no torch
    (not even through another dabench module)."""
    layer = ("runfolder", "results", "results.records", "results.selection", "results.leaderboard", "results.curve")
    code = f"import sys; import {', '.join('dabench.' + m for m in layer)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", "the results layer imports torch"


def test_no_module_but_runfolder_names_a_run_folder_file():
    """The run folder's file names are spelled once, in dabench/runfolder.py: no other module has
    a file name of it as a literal (``"results.jsonl"``), nor joins a bare one onto a path
    (``run_dir / "done"``; "done" as a word elsewhere is fine)."""
    names = {v for k, v in vars(runfolder).items() if k.isupper() and isinstance(v, str)}
    for path in [*(ROOT / "dabench").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        if path.name == "runfolder.py":
            continue
        tree = ast.parse(path.read_text())
        literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        joined = {n.right.value for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)
                  and isinstance(n.right, ast.Constant)}
        spelled = {n for n in names if "." in n} & literals | names & joined
        assert not spelled, f"{path.relative_to(ROOT)} spells run-folder file names {sorted(spelled)}"


def test_the_core_reads_tasks_from_their_descriptions_not_from_branches():
    """No core module compares a task's name (``task == "segmentation"``): what differs between
    tasks is a field of ``dabench.tasks.Task``."""
    pending = {"tasks.py"}
    names = {"classification", "segmentation"}
    for path in (ROOT / "dabench").rglob("*.py"):
        if path.name in pending:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                sides = [node.left, *node.comparators]
                spelled = {s.value for s in sides if isinstance(s, ast.Constant)} | {
                    s.id.lower() for s in sides if isinstance(s, ast.Name) and s.id in ("CLASSIFICATION", "SEGMENTATION")}
                assert not spelled & names, f"dabench/{path.name}:{node.lineno} branches on a task's name"


def test_plugins_import_nothing_from_the_spine():
    """A plugin gets what it needs from the engine through its arguments (``StageContext`` for a
    stage), never from the runner or the trainer; the core never imports a plugin."""
    for path in (ROOT / "plugins").rglob("*.py"):
        modules = {(n.module or "") for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        assert not modules & {"dabench.runner", "dabench.trainer", "dabench.cli", "dabench.api"}, path.name
    for path in (ROOT / "dabench").rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in modules if m.startswith("dabench_plugins")}, path.name


def test_the_readme_names_the_one_thing_that_downloads():
    """dabench reaches the network in one place, timm's ImageNet weights behind ``--pretrained
    imagenet``, and the README's promise names exactly that."""
    fetches = []
    for path in [*(ROOT / "dabench").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg in ("pretrained", "download") and \
                    isinstance(node.value, ast.Constant) and node.value.value is True:
                fetches.append(path.name)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("urllib", "requests", "http") or n == "torch.hub" for n in names), \
                    f"{path.name} imports a network client"
    assert fetches == ["nets.py"], fetches  # timm.create_model(name, pretrained=True) in timm_model, for "imagenet"
    promise = next(b for b in README.split("\n- **") if b.startswith("Nothing downloads"))
    assert "`--pretrained imagenet`" in promise and "`--pretrained PATH`" in promise


def test_every_name_means_one_thing():
    """The names issue 22 found used twice: a lazily exported function is never also a submodule
    (``dabench.plan`` was both, and importing the module rebound the name); one class is called
    Run (a trained model), one function fit (the notebook API's), one choose (a whole record)."""
    import importlib.util

    import dabench
    from dabench import trainer
    from dabench.results import records, selection

    for name in dabench._LAZY:
        assert importlib.util.find_spec(f"dabench.{name}") is None, f"dabench.{name} is a module and an export"
    from dabench.sweeping import cost  # noqa: F401 - the module that was plan.py
    assert callable(dabench.plan) and dabench.plan.__module__ == "dabench.sweeping.sweep"
    assert not hasattr(records, "Run") and hasattr(records, "RunRecords")
    assert not hasattr(trainer, "fit") and hasattr(trainer, "train_and_evaluate")
    assert not any(hasattr(m, "choose") for m in selection.METHODS.values())
    # the -H values are overrides; hparams are the values a run used (config.json)
    from dabench.runner import RunConfig

    assert "hparams" not in {f.name for f in dataclasses.fields(RunConfig)}
    with pytest.warns(DeprecationWarning, match="overrides"):
        old = RunConfig(algo="erm", src="a", tgt="b", hparams={"lr": 0.1})
    assert old.overrides == {"lr": 0.1}


def test_one_data_root_resolution_and_one_image_resize():
    """The data root ($DABENCH_DATA when no --data-root) is resolved in one function
    (``protocol.resolve_data_root``), and images are resized for a network in one
    (``data.resize_images``): no other module reads that variable or calls an interpolation on
    images (``layers.upsample`` resizes logits; augmentations and translators work on batches)."""
    for path in [*(ROOT / "dabench").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        reads = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr == "get" and ast.unparse(n.func.value) == "os.environ"
                 and any(isinstance(a, ast.Constant) and a.value == "DABENCH_DATA" for a in n.args)]
        assert not reads or path.name == "protocol.py", f"dabench/{path.name} resolves the data root itself"
    for name in ("api.py", "predict.py", "segdata/pairs.py", "segdata/prepared.py", "divergence.py"):
        text = (ROOT / "dabench" / name).read_text()
        assert "interpolate(" not in text and "Image.BILINEAR" not in text and "BICUBIC" not in text, name


def test_every_package_is_installed():
    """A wheel holds the packages pyproject.toml lists: every folder of dabench and plugins with an
    __init__.py is one of them (an editable install would hide a missing one)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join([name, *p.parent.relative_to(ROOT / folder).parts])
             for name, folder in (("dabench", "dabench"), ("dabench_plugins", "plugins"))
             for p in (ROOT / folder).rglob("__init__.py")}
    assert listed == found


def test_the_methods_page_names_every_registered_algorithms_source():
    """The methods page's "transcribed from" table has a row for every algorithm the registry holds
    (a plugin added without its source named there fails here)."""
    from dabench.registry import algorithms

    page = (ROOT / "docs" / "methods.md").read_text()
    table = page[page.index("| method | transcribed from"):]
    table = table[:table.index("\n\n")]
    named = set()
    for line in table.splitlines()[2:]:
        cell = line.split("|")[1].strip()
        parts = [p.strip() for p in cell.split(",")]
        for p in parts:
            named.add(parts[0] + p if p.startswith("-") else p)
    baselines = {"erm", "oracle"}  # source only and target labels only: nothing of an author's to transcribe
    shipped = {n for n in algorithms.names() if algorithms.where(n).startswith("dabench_plugins.")}  # not the tests' own
    registered = shipped - baselines
    assert registered - named == set(), "algorithms missing from docs/methods.md's method table"
