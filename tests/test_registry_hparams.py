"""Registry lookups with suggestions, plugins that say their own names, where each lives;
hyperparameter spaces, overrides and seeded search."""
from __future__ import annotations

import re
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from dabench import hparams as hp
from dabench.errors import DabenchError
from dabench import cli
from dabench.registry import REGISTRIES, Registry, Spec, algorithms, datasets
from dabench_plugins.algorithms.dann import DANN


def test_builtins_register_through_entry_points():
    assert {"erm", "oracle", "dann", "ccsa", "sagnet"} <= set(algorithms.names())
    assert {"syndigits", "uci-digits", "digits-m", "folder", "mnist", "usps", "svhn", "office31"} <= set(datasets.names())
    assert algorithms.get("dann") is DANN


def test_every_builtin_plugin_says_its_name_in_its_own_file():
    """Name -> code in two jumps: the name typed is the one written where the plugin is defined."""
    root = Path(__file__).resolve().parents[1] / "plugins"
    for kind, registry in REGISTRIES.items():
        for name in registry.names():
            where = registry.where(name)
            if not where.startswith("dabench_plugins."):
                continue  # an installed third-party plugin, or one a test registered
            assert registry.get(name).name == name, f"{kind} {name} calls itself {registry.get(name).name!r}"
            module = where.split(":")[0].removeprefix("dabench_plugins.").replace(".", "/")
            assert f'"{name}"' in (root / f"{module}.py").read_text(), f"{name} is not written in {module}.py"


def test_an_entry_point_whose_plugin_calls_itself_otherwise_is_refused():
    registry = Registry("algorithm")
    registry._entry_points = {"alias": EntryPoint("alias", "dabench_plugins.algorithms.erm:ERM", "dabench.algorithms")}
    with pytest.raises(DabenchError, match="'alias'.*calls itself 'erm'"):
        registry.get("alias")


def test_list_prints_where_each_plugin_lives(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=250))
    out = CliRunner().invoke(cli.main, ["list", "algorithms"]).stdout
    assert re.search(r"dabench_plugins\.algorithms\.dann:DANN\b", out)
    assert re.search(r"dabench_plugins\.algorithms\.mmd:DAN\b", out) and re.search(r"algorithms\.mmd:MMD\b", out)
    out = CliRunner().invoke(cli.main, ["list", "groups"]).stdout
    assert "dabench_plugins.datasets.digits:DIGITS4" in out


def test_a_plugin_registered_in_process_says_where_it_is_defined():
    registry = Registry("algorithm")

    @registry.register("mine")
    class Mine:
        pass

    assert Mine.name == "mine" and registry.where("mine") == f"{__name__}:{Mine.__qualname__}"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(DabenchError, match="Unknown algorithm 'ccsaa'. Did you mean 'ccsa'"):
        algorithms.get("ccsaa")


def test_spec_parses_name_and_argument():
    assert Spec.parse("folder:/data/x:y") == Spec("folder", "/data/x:y")
    assert Spec.parse("office31:amazon") == Spec("office31", "amazon")
    assert Spec.parse("mnist") == Spec("mnist", None)


def test_sample_zero_is_defaults_and_samples_are_seeded():
    space = DANN.hparams
    assert hp.sample(space, "dann", 0) == hp.defaults(space)
    a, b = hp.sample(space, "dann", 3), hp.sample(space, "dann", 3)
    assert a == b and a != hp.sample(space, "dann", 4)
    assert 10 ** -3 <= a["lr"] <= 10 ** -1.5
    assert a["disc_hidden"] == 100  # not searched


def test_overrides_are_type_checked():
    space = DANN.hparams
    values = hp.apply_overrides(space, hp.defaults(space), {"lr": "0.05", "batch_size": "32"})
    assert values["lr"] == 0.05 and values["batch_size"] == 32 and isinstance(values["batch_size"], int)
    with pytest.raises(DabenchError, match="'batch_size' expects a int"):
        hp.apply_overrides(space, values, {"batch_size": "3.5"})
    with pytest.raises(DabenchError, match="Unknown hyperparameter 'lamda_max'. Did you mean lambda_max"):
        hp.apply_overrides(space, values, {"lamda_max": "1"})
    with pytest.raises(DabenchError, match="expects a float"):
        hp.apply_overrides(space, values, {"lr": "fast"})
    assert hp.parse_value("x", "false", hp.HParam(True)) is False
