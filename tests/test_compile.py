"""``--compile``: the networks run through torch.compile, and the run is the eager run's: the same
losses (to the compiler's rounding), the same parameter names in its checkpoint."""
from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo.utils import counters

from dabench.runner import RunConfig, run


def losses(result):
    return [json.loads(x) for x in (result.run_dir / "steps.jsonl").read_text().splitlines()]


def test_a_compiled_run_follows_the_eager_one(tmp_path):
    config = dict(algo="dann", src="syndigits:200", tgt="uci-digits", steps=3, eval_every=3)
    eager = run(RunConfig(**config, out=str(tmp_path / "eager")))
    counters.clear()
    compiled = run(RunConfig(**config, out=str(tmp_path / "compiled"), compile=True))
    assert counters["stats"]["unique_graphs"] > 0  # dynamo traced the networks
    assert compiled.config["compile"] is True and compiled.run_dir.name == eager.run_dir.name  # not part of the identity
    for a, b in zip(losses(eager), losses(compiled), strict=True):
        assert a.keys() == b.keys() and all(b[k] == pytest.approx(v, rel=1e-5) for k, v in a.items() if k != "stage")
    keys = [torch.load(r.run_dir / "checkpoint.pt", weights_only=False)["model"].keys() for r in (eager, compiled)]
    assert list(keys[0]) == list(keys[1]) and not any("_orig_mod" in k for k in keys[1])
