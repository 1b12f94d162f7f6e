"""The shipped street-scene pair: streets-sim (flat colours) and streets-real (photo textures),
drawn from a seed in the Cityscapes label space."""
from __future__ import annotations

import pytest
import torch

from dabench.data import SEGMENTATION, Domain
from dabench.errors import DabenchError
from dabench.protocol import build_splits, load_domain
from dabench.registry import datasets
from dabench_plugins.datasets.cityscapes import CITYSCAPES_CLASSES
from dabench_plugins.datasets.streets import CLASSES, DEFAULT_COUNT, streets_real, streets_sim

FACTORIES = {"streets-sim": streets_sim, "streets-real": streets_real}


@pytest.fixture(scope="module")
def pair() -> dict[str, Domain]:
    return {name: load_domain(name, None) for name in FACTORIES}


def test_both_are_registered_as_segmentation_data_sets():
    for name, factory in FACTORIES.items():
        assert datasets.get(name) is factory
        assert factory.task == SEGMENTATION


def test_classes_are_cityscapes_names_in_cityscapes_order():
    assert CLASSES == [c for c in CITYSCAPES_CLASSES if c in CLASSES]
    assert len(CLASSES) == 8


@pytest.mark.parametrize("name", FACTORIES)
def test_the_same_seed_draws_the_same_streets(name):
    a, b = FACTORIES[name]("12"), FACTORIES[name]("12")
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.train.targets, b.train.targets)


def test_default_shapes_dtypes_and_ranges(pair):
    for name, d in pair.items():
        assert (d.name, d.task, d.classes, d.test) == (name, SEGMENTATION, CLASSES, None)
        assert d.image_size == (128, 64)  # (W, H)
        images, labels = d.train.images, d.train.targets
        assert images.dtype == torch.uint8 and images.shape == (DEFAULT_COUNT, 3, 64, 128)
        assert labels.shape == (DEFAULT_COUNT, 64, 128) and labels.dtype == torch.int64
        assert 0 <= labels.min() and labels.max() < len(CLASSES)  # no ignored pixels
        x, y = d.train.get_batch([0, 5])
        assert x.dtype == torch.float32 and x.shape == (2, 3, 64, 128) and -1 <= x.min() and x.max() <= 1
        assert y.shape == (2, 64, 128)
        assert d.info["images"] == DEFAULT_COUNT


def test_every_class_is_drawn_in_most_images_of_both_domains(pair):
    for d in pair.values():
        labels = d.train.targets.flatten(1)
        for c, name in enumerate(CLASSES):
            shown = (labels == c).any(1).float().mean().item()
            share = (labels == c).float().mean().item()
            assert shown > 0.6, f"{d.name}: {name} is in only {shown:.0%} of the images"
            assert share > 0.005, f"{d.name}: {name} covers only {share:.2%} of the pixels"


def test_real_is_textured_and_sim_is_flat(pair):
    """Side by side pixels of one class differ by under a grey level in sim, by about ten in real;
    sim's cars are blue, real's are painted white, black, grey, red or blue."""
    texture, car = {}, {}
    for name, d in pair.items():
        x, y = d.train.images[:100].float(), d.train.targets[:100]
        same = y[..., 1:] == y[..., :-1]
        texture[name] = (x[..., 1:] - x[..., :-1]).abs().mean(1)[same].mean().item()
        car[name] = x.permute(1, 0, 2, 3)[:, y == CLASSES.index("car")].mean(1)  # mean R, G, B
    assert texture["streets-sim"] < 2 and texture["streets-real"] > 5 * texture["streets-sim"]
    assert car["streets-sim"][2] > car["streets-sim"][0] + 50
    assert abs(car["streets-real"][2] - car["streets-real"][0]) < 20


def test_image_size_is_the_height_and_the_width_twice_that():
    for factory in FACTORIES.values():
        d = factory("10", image_size=32)
        assert d.image_size == (64, 32)
        assert d.train.images.shape == (10, 3, 32, 64) and d.train.targets.shape == (10, 32, 64)


@pytest.mark.parametrize("arg", ["abc", "5", "-20", "2.5"])
def test_a_bad_count_says_what_the_argument_is(arg):
    with pytest.raises(DabenchError, match="number of images, a whole number of at least 10"):
        load_domain(f"streets-sim:{arg}", None)


@pytest.mark.parametrize("size", [8, 0])
def test_a_bad_image_size_says_it_is_the_height(size):
    with pytest.raises(DabenchError, match="height"):
        streets_real("10", image_size=size)


def test_the_pair_splits_for_segmentation(pair):
    s = build_splits(pair["streets-sim"], pair["streets-real"], 0, 0)  # as load_domain made them
    assert (s.task, s.classes, s.image_size) == (SEGMENTATION, CLASSES, (128, 64))
    assert len(s.tgt_test) == 150 and len(s.tgt_train) + len(s.tgt_val) + len(s.tgt_test) == DEFAULT_COUNT
    assert len(s.src_train) + len(s.src_val) == DEFAULT_COUNT and s.tgt_labeled is None
    assert torch.equal(s.tgt_test[0][1], pair["streets-real"].train.targets[s.tgt_test.indices[0]])
