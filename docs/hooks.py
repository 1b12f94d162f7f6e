"""mkdocs hooks: the pages' tables that would drift if typed by hand, made from the registry.

``<!-- methods ... -->`` in a page gets the table of every registered algorithm (task, settings,
description, defaults per regime, its parity test); ``<!-- hyperparameters ... -->`` each
algorithm's hyperparameters (defaults, search range, meaning); ``<!-- cli ... -->`` every command
and option of ``dabench``; ``<!-- datasets ... -->`` every data set;
``<!-- include FILE -->`` a file of the repository (CONTRIBUTING.md on the plugins page).
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _parity(name: str) -> str:
    """The parity test that checks ``name`` against its authors' code, found by the file's name or
    the algorithm's name in quotes inside it ("" where none does)."""
    key = name.replace("-", "")
    for path in sorted((ROOT / "tests").glob("test_parity_*.py")):
        if key in path.stem.split("_")[2:] or re.search(rf'["\']{re.escape(name)}["\']', path.read_text()):
            return f"`tests/{path.name}`"
    return ""


def methods_table() -> str:
    from dabench.hparams import REGIMES
    from dabench.registry import REGISTRIES

    reg = REGISTRIES["algorithms"]
    rows = ["| method | task | runs in | description | defaults | parity test |", "|---|---|---|---|---|---|"]
    for name in reg.names():
        algo = reg.get(name)
        tasks = ["classification", "segmentation"] if algo.task == "any" else [algo.task]
        settings = ["DG only"] if algo.dg_only else ["UDA", "DG"] if algo.runs_in_dg() else ["UDA"]
        settings = {"required": ["SSDA (needs --tgt-labeled N)"], "all": ["all target labels"]}.get(algo.target_labels, settings)
        defaults = []
        for task in tasks:
            regimes = [None] if not any(p.regimes for p in algo.space(task).values()) else list(REGIMES)
            for regime in regimes:
                values = ", ".join(f"{k}={v.default}" for k, v in sorted(algo.space(task, regime).items()))
                label = " / ".join(x for x in (task if len(tasks) > 1 else "", regime or "") if x)
                defaults.append(f"{label}: {values}" if label else values)
        rows.append(f"| `{name}` | {algo.task} | {', '.join(settings)} | {_cell(algo.description())} | "
                    f"{'<br>'.join(defaults)} | {_parity(name) or ('baseline' if name in ('erm', 'oracle') else '–')} |")
    return "\n".join(rows)


def datasets_table() -> str:
    from dabench.registry import REGISTRIES, describe

    reg = REGISTRIES["datasets"]
    rows = ["| name | task | what it is, where it is read from |", "|---|---|---|"]
    for name in reg.names():
        obj = reg.get(name)
        rows.append(f"| `{name}` | {getattr(obj, 'task', 'any')} | {_cell(describe(obj))} |")
    return "\n".join(rows)


def hyperparameters() -> str:
    """A section per algorithm: each hyperparameter's defaults (per regime), search range and meaning."""
    from dabench.hparams import REGIMES
    from dabench.registry import REGISTRIES

    reg, out = REGISTRIES["algorithms"], []
    for name in reg.names():
        algo = reg.get(name)
        out.append(f"## {name}\n\n{_cell(algo.description())}\n")
        for task in ["classification", "segmentation"] if algo.task == "any" else [algo.task]:
            space = algo.space(task)
            regimes = list(REGIMES) if any(p.regimes for p in space.values()) else []
            heads = [f"default ({r})" for r in regimes] or ["default"]
            if algo.task == "any":
                out.append(f"On {task}:\n")
            out += ["| hyperparameter | " + " | ".join(heads) + " | search range | meaning |",
                    "|---|" + "---|" * (len(heads) + 2)]
            for key in sorted(space):
                p = space[key]
                values = [algo.space(task, r)[key].default for r in regimes] or [p.default]
                meaning = p.help + (f" (one of {', '.join(map(str, p.choices))})" if p.choices else "")
                out.append(f"| `{key}` | " + " | ".join(f"`{v}`" for v in values)
                           + f" | {_cell(p.search) if p.search else 'not searched'} | {_cell(meaning)} |")
            out.append("")
    return "\n".join(out)


def cli_reference() -> str:
    """Every command of ``dabench`` with its options: what each does and its default."""
    import click

    from dabench.cli import main

    out = []

    def walk(cmd: click.Command, path: str) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                walk(sub, f"{path} {name}")
            return
        args = " ".join(p.name.upper() for p in cmd.params if isinstance(p, click.Argument))
        out.append(f"## `{path}{' ' + args if args else ''}`\n\n{_cell(cmd.help or '')}\n")
        out.extend(["| option | default | what it does |", "|---|---|---|"])
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            choices = f" One of: {', '.join(p.type.choices)}." if isinstance(p.type, click.Choice) else ""
            default = "" if p.default in (None, False, ()) or p.is_flag else f"`{p.default}`"
            out.append(f"| `{', '.join(p.opts)}` | {default} | {_cell((p.help or '') + choices)} |")
        out.append("")

    walk(main, "dabench")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = re.sub(r"<!-- hyperparameters[^>]*-->", lambda m: hyperparameters(), markdown)
    markdown = re.sub(r"<!-- cli[^>]*-->", lambda m: cli_reference(), markdown)
    markdown = re.sub(r"<!-- methods[^>]*-->", lambda m: methods_table(), markdown)
    markdown = re.sub(r"<!-- datasets[^>]*-->", lambda m: datasets_table(), markdown)
    return re.sub(r"<!-- include (\S+) -->", lambda m: (ROOT / m.group(1)).read_text(), markdown)
