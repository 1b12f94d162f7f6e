"""Hyperparameters: a default and a random-search distribution, declared per algorithm.

DomainBed-style search: sample 0 is the defaults; sample k > 0 draws every hyperparameter
from its distribution with a generator seeded by (algorithm, k), so a sweep is reproducible.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dabench.errors import DabenchError

Sampler = Callable[[np.random.Generator], Any]


# The kinds of data an author may publish a setting for, as DomainBed's registry tells small
# images from ImageNet-size ones: ``digits`` (small images, a network trained from scratch: the
# digit CNN) and ``imagenet`` (ImageNet-size images, a pretrained network). A backbone plugin
# declares its regime (``@plugin(regime=...)``); a run records the one its defaults came from.
REGIMES = ("digits", "imagenet")


@dataclass(frozen=True)
class HParam:
    default: Any
    search: Sampler | None = None  # None: not searched, always the default
    help: str = ""
    choices: tuple | None = None
    # Where the authors' default differs by kind of data: {"digits": value, "imagenet": value};
    # a regime not named keeps ``default``.
    regimes: dict[str, Any] | None = None

    @property
    def type(self) -> type:
        return type(self.default)

    def in_regime(self, regime: str | None) -> "HParam":
        """This hyperparameter with its default for ``regime`` (itself when no default differs)."""
        if not self.regimes or regime not in self.regimes:
            return self
        return dataclasses.replace(self, default=self.regimes[regime], regimes=None)


@dataclass(frozen=True)
class Search:
    """A random-search distribution that can say what it draws (``dabench list algorithms NAME``)."""

    text: str
    draw: Callable[[np.random.Generator], Any]

    def __call__(self, rng: np.random.Generator) -> Any:
        return self.draw(rng)

    def __str__(self) -> str:
        return self.text


def log_uniform(lo: float, hi: float) -> Sampler:
    """10 ** U(lo, hi), as DomainBed writes its learning-rate spaces."""
    return Search(f"10^U({lo:g}, {hi:g})", lambda rng: float(10 ** rng.uniform(lo, hi)))


def uniform(lo: float, hi: float) -> Sampler:
    return Search(f"U({lo:g}, {hi:g})", lambda rng: float(rng.uniform(lo, hi)))


def int_uniform(lo: float, hi: float) -> Sampler:
    """int(U(lo, hi)): step counts."""
    return Search(f"int(U({lo:g}, {hi:g}))", lambda rng: int(rng.uniform(lo, hi)))


def choice(options: list) -> Sampler:
    return Search(f"one of {', '.join(map(str, options))}", lambda rng: options[int(rng.integers(len(options)))])


def int_log2(lo: float, hi: float) -> Sampler:
    """int(2 ** U(lo, hi)): batch sizes and widths."""
    return Search(f"int(2^U({lo:g}, {hi:g}))", lambda rng: int(2 ** rng.uniform(lo, hi)))


def defaults(space: dict[str, HParam]) -> dict[str, Any]:
    return {k: p.default for k, p in space.items()}


def sample(space: dict[str, HParam], name: str, index: int) -> dict[str, Any]:
    """The index-th random-search sample; index 0 is the defaults."""
    if index == 0:
        return defaults(space)
    rng = np.random.default_rng([zlib.crc32(name.encode()), index])
    return {k: (p.search(rng) if p.search else p.default) for k, p in sorted(space.items())}


def parse_value(key: str, text: str, p: HParam) -> Any:
    """Turn a command-line string into the declared type, or say what was expected."""
    kind = p.type
    try:
        if kind is bool:
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value: Any = low in ("true", "1", "yes")
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = text
    except ValueError:
        raise DabenchError(
            f"Hyperparameter '{key}' expects a {kind.__name__} (default {p.default!r}), got '{text}'."
            f" Write it as -H {key}={p.default}."
        ) from None
    if p.choices is not None and value not in p.choices:
        raise DabenchError(
            f"Hyperparameter '{key}' must be one of {', '.join(map(str, p.choices))}; got '{text}'."
        )
    return value


def apply_overrides(space: dict[str, HParam], values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Check override keys and types against the space; strings are parsed, typed values checked."""
    out = dict(values)
    for key, raw in overrides.items():
        if key not in space:
            import difflib

            close = difflib.get_close_matches(key, list(space), n=2, cutoff=0.5)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise DabenchError(
                f"Unknown hyperparameter '{key}'.{hint} This algorithm accepts: "
                f"{', '.join(f'{k}={p.default}' for k, p in sorted(space.items()))}."
            )
        p = space[key]
        if isinstance(raw, str) and p.type is not str:
            out[key] = parse_value(key, raw, p)
        elif p.type is float and isinstance(raw, int) and not isinstance(raw, bool):
            out[key] = float(raw)
        elif not isinstance(raw, p.type) or (p.type is int and isinstance(raw, bool)):
            raise DabenchError(f"Hyperparameter '{key}' expects a {p.type.__name__}, got {raw!r}.")
        else:
            out[key] = parse_value(key, str(raw), p) if p.choices else raw
    check_values(out)
    return out


def check_values(values: dict[str, Any]) -> None:
    """What no algorithm can train with: a learning rate that is not a finite positive number, a
    batch of fewer than one image. Checked before anything is built, for the CLI and the API alike."""
    for key, value in values.items():
        if (key == "lr" or key.endswith("_lr")) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (math.isfinite(value) and value > 0):
                raise DabenchError(f"Hyperparameter '{key}' must be a finite number above 0, got {value!r}.")
        if key == "batch_size" and isinstance(value, int) and value < 1:
            raise DabenchError(f"Hyperparameter 'batch_size' must be 1 or more (images per domain per step), got {value}.")
