"""Registry lookups with suggestions; hyperparameter spaces, overrides and seeded search."""
from __future__ import annotations

import pytest

from dabench import hparams as hp
from dabench.errors import DabenchError
from dabench.registry import Spec, algorithms, datasets
from dabench_plugins.algorithms.dann import DANN


def test_builtins_register_through_entry_points():
    assert {"erm", "oracle", "dann", "ccsa", "sagnet"} <= set(algorithms.names())
    assert {"syndigits", "uci-digits", "digits-m", "folder", "mnist", "usps", "svhn", "office31"} <= set(datasets.names())
    assert algorithms.get("dann") is DANN


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
