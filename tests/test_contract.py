"""The plugin contract: flags are declared where they are true (never inherited from another
algorithm), the batch helpers a plugin slices its batch with, and dabench 0.1's helper names."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dabench.algorithm import FLAGS, Algorithm, ClassificationAlgorithm, SegmentationAlgorithm
from dabench.data import Batch, Labeled
from dabench.errors import DabenchError
from dabench.hparams import defaults
from dabench.registry import algorithms
from dabench.runner import RunConfig, run
from dabench_plugins.algorithms.adaptsegnet import AdaptSegNet
from dabench_plugins.algorithms.erm import ERM


class QuietERM(ERM):
    """Test-only: an ERM subclass that reads target images and declares no flag."""

    def update(self, batch, step):
        assert batch.tgt_x is not None
        return super().update(batch, step)


def test_flags_come_from_the_class_or_its_helper_base_never_from_another_algorithm():
    assert (ERM.task, ERM.needs_target, ERM.name) == ("any", False, "erm")
    # everything ERM says about itself stays with ERM: the subclass gets the safe defaults
    assert (QuietERM.task, QuietERM.needs_target, QuietERM.name) == ("classification", True, None)
    assert not QuietERM.runs_in_dg()
    assert not algorithms.get("entmin").runs_in_dg() and not algorithms.get("mcc").runs_in_dg()
    assert algorithms.get("coral").runs_in_dg() and algorithms.get("oracle").task == "any"
    # a segmentation method's subclass is a segmentation method through its helper base
    assert AdaptSegNet.task == "segmentation" and algorithms.get("udas").task == "segmentation"
    assert ClassificationAlgorithm.hparams["batch_size"].default == 64
    assert SegmentationAlgorithm.hparams["batch_size"].default == 1
    assert set(FLAGS) == {"name", "task", "target_labels", "needs_target", "dg_only"}


def test_domain_generalisation_refuses_an_erm_subclass_that_declares_nothing(tmp_path):
    algorithms.register("quiet-erm")(type("RegisteredQuietERM", (QuietERM,), {}))
    with pytest.raises(DabenchError, match="trains on target images"):
        run(RunConfig(algo="quiet-erm", src="toy-src,toy-mid", tgt="toy-tgt", setting="dg", out=str(tmp_path)))
    assert not list(tmp_path.iterdir())


def test_batch_helpers_by_hand():
    src_x, tgt_x = torch.arange(4.0).view(4, 1), torch.tensor([[10.0], [11.0]])
    lab = Labeled(torch.tensor([[20.0]]), torch.tensor([7]))
    da = Batch(src_x, torch.tensor([0, 1, 2, 3]), tgt_x, lab)
    x, y = da.labeled_sources()
    assert x.flatten().tolist() == [0, 1, 2, 3, 20] and y.tolist() == [0, 1, 2, 3, 7]
    assert [p[0].flatten().tolist() for p in da.labeled_parts()] == [[0, 1, 2, 3], [20]]
    seen = da.with_target(x)
    assert seen.flatten().tolist() == [0, 1, 2, 3, 20, 10, 11]
    # DA: [source, target]; the labelled target row between them is in neither group
    assert [g.flatten().tolist() for g in da.aligned_groups(seen)] == [[0, 1, 2, 3], [10, 11]]
    dg = Batch(src_x, torch.tensor([0, 1, 2, 3]), None, src_domain=torch.tensor([0, 0, 1, 1]))
    assert dg.with_target(src_x) is src_x
    assert [g.flatten().tolist() for g in dg.aligned_groups(src_x)] == [[0, 1], [2, 3]]


def test_a_plugin_written_for_dabench_0_1_still_runs_with_a_deprecation_warning():
    class Old(Algorithm):  # subclasses the bare contract and calls the helpers it used to hold
        def __init__(self, backbone, num_classes, hparams, steps):
            super().__init__(backbone, num_classes, hparams, steps)
            self.net = nn.Linear(1, 2)
            with pytest.warns(DeprecationWarning, match="ClassificationAlgorithm.sgd"):
                self.optims["m"] = self.sgd(self.net.parameters())

    old = Old(nn.Identity(), 2, defaults(Old.hparams), steps=10)
    with pytest.warns(DeprecationWarning, match="batch.labeled_sources"):
        x, _ = old.labeled_sources(Batch(torch.ones(3, 1), torch.zeros(3, dtype=torch.long), None))
    with pytest.warns(DeprecationWarning, match="anneal"):
        old.anneal(9)
    assert x.shape == (3, 1) and old.optims["m"].param_groups[0]["lr"] == pytest.approx(0.01 / 11 ** 0.75)
    with pytest.raises(AttributeError):
        old.no_such_helper
