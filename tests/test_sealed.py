"""The promise of unsupervised DA, tested as a hostile third-party plugin would break it: a stage
hook that looks through every object it is handed (with the garbage collector's referents, so
closures, private attributes and containers count too) finds no target label."""
from __future__ import annotations

import gc
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from dabench.registry import algorithms, datasets, plugin
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.erm import ERM

from conftest import toy_tgt

HANDED: list[list] = []  # what each begin_stage could reach
LABELS: list = []  # the label buffers of the target data sets the runs built


def reachable(*roots, limit: int = 300_000) -> list:
    """Every object reachable from ``roots``, modules, classes and module namespaces left out."""
    module_dicts = {id(m.__dict__) for m in list(sys.modules.values()) if m is not None}
    seen, out, queue = set(), [], list(roots)
    while queue and len(out) < limit:
        obj = queue.pop()
        if id(obj) in seen or isinstance(obj, (types.ModuleType, type)) or id(obj) in module_dicts:
            continue
        seen.add(id(obj))
        out.append(obj)
        queue.extend(gc.get_referents(obj))
    assert len(out) < limit, "the walk did not end"
    return out


def buffer_of(obj) -> int | None:
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().data_ptr()
    if isinstance(obj, np.ndarray):
        return obj.__array_interface__["data"][0]
    return None


@algorithms.register("snoop")
class Snoop(ERM):
    """Test-only: a third-party algorithm whose stage hook keeps everything it can reach."""

    def begin_stage(self, stage, ctx, resumed):
        HANDED.append(reachable(ctx, stage, self))
        return super().begin_stage(stage, ctx, resumed)


@datasets.register("watched-tgt")
@plugin(task="classification", description="test-only: toy-tgt, its labels remembered")
def watched_tgt(arg=None, *, root=None, image_size=None):
    domain = toy_tgt()
    LABELS.append({buffer_of(domain.train.targets)})
    return domain


def leaked(handed: list, labels: set) -> list:
    return [o for o in handed if buffer_of(o) in labels]


def test_no_target_label_is_reachable_from_a_stage_hook_in_unsupervised_da(tmp_path):
    run(RunConfig(algo="snoop", src="toy-src", tgt="watched-tgt", steps=2, eval_every=2, out=str(tmp_path)))
    handed, labels = HANDED[-1], LABELS[-1]
    assert not leaked(handed, labels)
    # the walk is thorough: it reaches the target images, and, given a labelled budget, the labels
    assert any(isinstance(o, torch.Tensor) and o.dtype == torch.uint8 and o.shape[1:] == (3, 16, 16) for o in handed)
    run(RunConfig(algo="snoop", src="toy-src", tgt="watched-tgt", steps=2, eval_every=2, tgt_labeled=4,
                  out=str(tmp_path)))
    assert leaked(HANDED[-1], LABELS[-1])


@pytest.mark.parametrize("memory_mb", ["1024", "0"])  # decoded once in memory, or file by file
def test_no_folder_label_is_reachable_either(tmp_path, monkeypatch, memory_mb):
    monkeypatch.setenv("DABENCH_FOLDER_MEMORY_MB", memory_mb)
    rng = np.random.default_rng(0)
    for domain in ("src", "tgt"):
        for c in ("a", "b"):
            (tmp_path / domain / c).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / domain / c / f"{i}.png")
    from dabench_plugins.datasets import folder as folder_plugin

    made = []
    original = folder_plugin.ImageFiles.__init__

    def remember(self, files, labels, size):
        original(self, files, labels, size)
        if "tgt" in str(files[0]):
            made.append(self.targets)

    monkeypatch.setattr(folder_plugin.ImageFiles, "__init__", remember)
    run(RunConfig(algo="snoop", src=f"folder:{tmp_path / 'src'}", tgt=f"folder:{tmp_path / 'tgt'}", steps=2,
                  eval_every=2, out=str(tmp_path / "runs")))
    labelled = {buffer_of(t) for t in made if (t >= 0).all()}
    assert labelled and not leaked(HANDED[-1], labelled)
