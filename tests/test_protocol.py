"""What an algorithm may see: no target labels in UDA, a fixed test split, seeded budgets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dabench.data import Batch, ImagesOnly, step_indices
from dabench.errors import DabenchError
from dabench.protocol import balanced_pick, build_splits, load_domain
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.erm import ERM


def test_target_labels_never_reach_update(tmp_path, monkeypatch):
    seen: list[Batch] = []
    original = ERM.update

    def spy(self, batch, step):
        seen.append(batch)
        return original(self, batch, step)

    monkeypatch.setattr(ERM, "update", spy)
    run(RunConfig(algo="erm", src="toy-src", tgt="toy-tgt", steps=5, eval_every=5, out=str(tmp_path)))
    assert len(seen) == 5
    for batch in seen:
        assert batch.tgt_labeled is None
        assert [f.name for f in dataclasses.fields(batch)] == ["src_x", "src_y", "tgt_x", "tgt_labeled", "tgt_pseudo", "src_domain"]
        assert batch.tgt_pseudo is None  # only a self-training stage fills it, with its own model's labels
        assert batch.tgt_x.ndim == 4  # images only: the unlabelled stream has no label to carry


def test_unlabelled_target_split_yields_images_only():
    splits = build_splits(load_domain("toy-src", None), load_domain("toy-tgt", None), 0, seed=0)
    assert isinstance(splits.tgt_train, ImagesOnly)
    assert isinstance(splits.tgt_train[0], torch.Tensor) and splits.tgt_train[0].shape == (3, 16, 16)
    assert splits.tgt_train.get_batch([0, 1]).shape == (2, 3, 16, 16)
    assert splits.tgt_labeled is None


def test_test_split_is_fixed_across_seeds_and_disjoint_from_train_and_val():
    src, tgt = load_domain("toy-src", None), load_domain("toy-tgt", None)
    a, b = build_splits(src, tgt, 8, seed=0), build_splits(src, tgt, 8, seed=1)
    assert np.array_equal(a.tgt_test.indices, b.tgt_test.indices)
    train = set(a.tgt_train._images.indices.tolist())  # the unlabelled view keeps the indices of target train
    assert not train & set(a.tgt_test.indices.tolist())
    assert not train & set(a.tgt_val.indices.tolist())
    assert len(train) + len(a.tgt_val) + len(a.tgt_test) == 120
    # the labelled budget comes out of target train only, and depends on the seed
    lab_a = set(a.tgt_labeled.base.indices[a.tgt_labeled.indices].tolist())
    assert lab_a <= train and len(lab_a) == 8
    assert not np.array_equal(a.tgt_labeled.indices, b.tgt_labeled.indices)


def test_labelled_budget_is_class_balanced():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3)
    pick = balanced_pick(labels, 9, seed=0)
    assert np.bincount(labels[pick]).tolist() == [3, 3, 3]
    pick = balanced_pick(labels, 12, seed=0)
    assert np.bincount(labels[pick]).tolist() == [5, 4, 3]  # class 2 runs out; the others fill in


def test_budget_larger_than_target_train_is_refused():
    with pytest.raises(DabenchError, match="more labelled target samples than target train holds"):
        build_splits(load_domain("toy-src", None), load_domain("toy-tgt", None), 10_000, seed=0)


def test_batches_are_a_function_of_seed_and_step():
    first = [step_indices(10, 4, 3, 0, s) for s in range(6)]
    assert [step_indices(10, 4, 3, 0, s) for s in range(3, 6)] == first[3:]
    flat = sum(first[:5], [])[:20]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs cover all
    assert step_indices(10, 4, 4, 0, 0) != first[0]


class _ItemByItem(torch.utils.data.Dataset):
    """A file-backed dataset stand-in: items only, no get_batch."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), i % 3


def test_views_on_item_by_item_data_go_through_a_dataloader_with_the_same_batches():
    from dabench.data import ImagesOnly, Subset, TensorImages, in_memory, step_indices, stream

    base = _ItemByItem(10)
    view = ImagesOnly(Subset(base, [9, 8, 7, 6, 5]))
    assert not in_memory(view) and in_memory(Subset(TensorImages(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3)), [0]))
    got = list(stream(view, batch_size=3, seed=1, stream_id=1, start=2, stop=4))
    for step, x in zip(range(2, 4), got):
        want = [9 - i for i in step_indices(5, 3, 1, 1, step)]
        assert x[:, 0, 0, 0].tolist() == want
