"""dabench: a benchmark toolkit for domain adaptation.

    import dabench
    result = dabench.run(dabench.RunConfig(algo="dann", src="syndigits", tgt="uci-digits"))
    print(dabench.render(dabench.leaderboard("runs"), "markdown"))
"""
__version__ = "0.1.0"

from dabench.errors import DabenchError
from dabench.runner import RunConfig, RunResult, run
from dabench.sweep import plan, sweep  # binds the function over the submodule's name, on purpose
from dabench.leaderboard import leaderboard, render  # likewise

__all__ = ["DabenchError", "RunConfig", "RunResult", "run", "plan", "sweep", "leaderboard", "render"]
