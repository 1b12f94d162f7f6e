"""dabench: a benchmark toolkit for domain adaptation.

    import dabench
    run = dabench.fit("dann", src="syndigits", tgt="uci-digits", steps=500)      # trains, returns a Run
    print(run.evaluate("uci-digits"))                                            # metrics on a domain or arrays
    run.save("dann.pt"); same = dabench.load("dann.pt"); same.predict(images)    # logits

    from dabench.results.leaderboard import leaderboard, render                          # tables from run folders
    print(render(leaderboard("runs"), "markdown"))

The names below are imported on first use, so ``import dabench`` (and ``dabench leaderboard``,
which reads run folders only) does not import torch. ``dabench.sweeping.sweep`` and
``dabench.results.leaderboard`` are the modules of those names.
"""
from __future__ import annotations

import importlib

from dabench.errors import DabenchError

__version__ = "0.1.0"

_LAZY = {
    "fit": "dabench.api", "load": "dabench.api", "Run": "dabench.api",
    "Domain": "dabench.data", "from_arrays": "dabench.data",
    "RunConfig": "dabench.runner", "RunResult": "dabench.runner", "run": "dabench.runner",
    "plan": "dabench.sweeping.sweep",
}

__all__ = ["DabenchError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dabench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
