"""Label maps, split assignment and class statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cancerseg_ray.data.labels import ClassSpec, LabelMap, load_label_map
from cancerseg_ray.data.schema import Split
from cancerseg_ray.data.splits import SplitFractions, assign_splits, load_splits, save_splits
from cancerseg_ray.data.statistics import inverse_frequency_weights
from cancerseg_ray.errors import ConfigError, LabelMapError
from cancerseg_ray.io.images import read_label_mask
from tests.conftest import GLAS_LABEL_MAP


def make_label_map(**kwargs) -> LabelMap:
    return LabelMap(
        classes=[ClassSpec(name="background", mask_values=[0]), ClassSpec(name="tumour", mask_values=[1, 2])],
        **kwargs,
    )


def test_map_mask_maps_values_to_class_ids():
    label_map = make_label_map(ignore_mask_values=[9])
    raw = np.array([[0, 1], [2, 9]], dtype=np.uint8)
    mapped = label_map.map_mask(raw, source="m.png")
    assert mapped.dtype == np.uint8
    assert mapped.tolist() == [[0, 1], [1, 255]]


def test_map_mask_rejects_unmapped_values_with_their_list():
    label_map = make_label_map()
    raw = np.array([[0, 7], [300, 1]], dtype=np.uint16)
    with pytest.raises(LabelMapError, match=r"m\.png: mask values \[7, 300\] are not in the label map"):
        label_map.map_mask(raw, source="m.png")


def test_label_map_rejects_value_in_two_classes():
    with pytest.raises(ValueError, match="mask value 1 is listed for both"):
        LabelMap(classes=[ClassSpec(name="a", mask_values=[1]), ClassSpec(name="b", mask_values=[1])])


def test_label_map_rejects_ignore_index_inside_class_ids():
    with pytest.raises(ValueError, match="collides with class ids"):
        make_label_map(ignore_index=1)


def test_load_label_map_reads_glas_file():
    label_map = load_label_map(GLAS_LABEL_MAP)
    assert label_map.class_names == ["background", "gland"]
    assert label_map.ignore_index == 255


def test_load_label_map_names_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="label map file not found: .*nope.yaml"):
        load_label_map(tmp_path / "nope.yaml")


def test_assign_splits_is_reproducible_and_order_free():
    groups = [f"slide{i:02d}" for i in range(20)]
    fractions = SplitFractions(train=0.6, val=0.2, test=0.2)
    first = assign_splits(groups, fractions=fractions, seed=3)
    second = assign_splits(list(reversed(groups)), fractions=fractions, seed=3)
    other_seed = assign_splits(groups, fractions=fractions, seed=4)
    assert first == second
    assert first != other_seed
    counts = {split: sum(1 for s in first.values() if s is split) for split in Split}
    assert counts == {Split.TRAIN: 12, Split.VAL: 4, Split.TEST: 4}


def test_assign_splits_gives_every_split_a_group():
    assignment = assign_splits(["a", "b", "c"], fractions=SplitFractions(train=0.8, val=0.1, test=0.1), seed=0)
    assert sorted(str(s) for s in assignment.values()) == ["test", "train", "val"]


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        SplitFractions(train=0.5, val=0.2, test=0.2)


def test_splits_round_trip_through_file(tmp_path):
    assignment = assign_splits(["a", "b", "c", "d", "e"], fractions=SplitFractions(), seed=0)
    path = tmp_path / "splits.json"
    save_splits(path, assignment=assignment, image_to_group={k: k for k in assignment}, seed=0,
                fractions=SplitFractions(), group_by="image")
    assert load_splits(path) == assignment
    assert json.loads(path.read_text())["seed"] == 0


def test_load_splits_names_invalid_file(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="split file .*splits.json is invalid"):
        load_splits(path)


def test_inverse_frequency_weights_match_hand_computation():
    # Frequencies 0.5, 0.25, 0.25 give inverse 2, 4, 4; normalised 0.2, 0.4, 0.4.
    weights = inverse_frequency_weights([200, 100, 100])
    np.testing.assert_allclose(weights, [0.2, 0.4, 0.4])


def test_inverse_frequency_weights_class_without_pixels_gets_zero():
    weights = inverse_frequency_weights([300, 0, 100])
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights, [0.25, 0.0, 0.75])
    assert weights.sum() == pytest.approx(1.0)


def test_inverse_frequency_weights_reject_empty_counts():
    with pytest.raises(ValueError, match="no labelled pixels"):
        inverse_frequency_weights([0, 0])


def test_indexed_png_mask_keeps_palette_indices(tmp_path):
    values = np.zeros((8, 8), dtype=np.uint8)
    values[2:5] = 3
    image = Image.fromarray(values, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    image.save(tmp_path / "mask.png")
    mask = read_label_mask(tmp_path / "mask.png")
    assert mask.shape == (8, 8)
    assert sorted(np.unique(mask).tolist()) == [0, 3]
