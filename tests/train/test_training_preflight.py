"""Checks of training configs that run before Ray starts: names, files and folders, and how paths are shown."""

from __future__ import annotations

import json
import os

import pytest

from cancerseg_ray.config import describe_path
from cancerseg_ray.errors import ConfigError
from cancerseg_ray.train.config import TrainGridConfig
from cancerseg_ray.train.preflight import check_grid_config, check_shard_location
from tests.train.conftest import write_shard_metadata


def grid(shards, output, **overrides) -> TrainGridConfig:
    settings = {"variants": ["deeplabv3plus_resnet50"], "seeds": [0], "shards_dir": shards, "output_dir": output}
    settings.update(overrides)
    return TrainGridConfig.model_validate(settings)


def test_describe_path_names_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = describe_path("outputs/shards")
    assert text.startswith("outputs/shards (resolved to ")
    assert f"{tmp_path / 'outputs' / 'shards'}" in text
    assert f"from the current directory {tmp_path})" in text


def test_describe_path_keeps_absolute_path(tmp_path):
    assert describe_path(tmp_path / "shards") == str(tmp_path / "shards")
    assert describe_path((tmp_path / "shards").as_uri()) == (tmp_path / "shards").as_uri()


def test_valid_config_passes(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    check_grid_config(grid(shards, tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_missing_shards_names_both_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        check_grid_config(grid("outputs/shards", "runs"))
    message = str(caught.value)
    assert "shards_dir outputs/shards (resolved to" in message
    assert f"{tmp_path / 'outputs' / 'shards'}" in message
    assert "not found" in message
    assert "jobs/make_shards.py" in message


def test_shards_path_that_is_a_file(tmp_path):
    file = tmp_path / "shards.txt"
    file.write_text("")
    with pytest.raises(ConfigError, match="shards_dir .*shards.txt is a file, not a folder"):
        check_grid_config(grid(file, tmp_path / "runs"))


@pytest.mark.parametrize("missing", ["dataset.json", "class_stats.json"])
def test_shard_folder_without_metadata(tmp_path, missing):
    shards = write_shard_metadata(tmp_path / "shards")
    (shards / missing).unlink()
    with pytest.raises(ConfigError, match=f"has no {missing}, so it is not a shard folder"):
        check_grid_config(grid(shards, tmp_path / "runs"))


def test_split_without_tiles_is_named(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards", tiles={"train": 12, "val": 0, "test": 8})
    with pytest.raises(ConfigError, match="has no tiles in the val split"):
        check_grid_config(grid(shards, tmp_path / "runs"))


def test_evaluation_split_is_checked_alone(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards", tiles={"train": 12, "val": 0, "test": 8})
    check_shard_location(str(shards), splits=("test",))
    with pytest.raises(ConfigError, match="no tiles in the val split"):
        check_shard_location(str(shards), splits=("val",))


def test_file_uri_shards_are_checked(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    check_shard_location(shards.as_uri(), splits=("train", "val"))
    with pytest.raises(ConfigError, match="not found"):
        check_shard_location((tmp_path / "absent").as_uri(), splits=("train",))


def test_unset_shards_dir(tmp_path):
    with pytest.raises(ConfigError, match="shards_dir is not set; pass --shards"):
        check_grid_config(grid(None, tmp_path / "runs"))


def test_unknown_variant_is_named(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    with pytest.raises(ConfigError, match=r"unknown variants \['deeplabv3_xception'\]; valid names are"):
        check_grid_config(grid(shards, tmp_path / "runs", variants=["deeplabv3_xception"]))


def test_unknown_pretrained_key_is_named(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    weights = tmp_path / "x.pth"
    weights.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"unknown keys \['xception65'\] in pretrained; valid keys are"):
        check_grid_config(grid(shards, tmp_path / "runs", pretrained={"xception65": str(weights)}))


def test_missing_pretrained_file_names_both_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shards = write_shard_metadata(tmp_path / "shards")
    config = grid(shards, "runs", variants=["cancerseg_xa"], pretrained={"xception": "models/x.pth"})
    with pytest.raises(ConfigError) as caught:
        check_grid_config(config)
    message = str(caught.value)
    assert message.startswith("pretrained.xception models/x.pth (resolved to ")
    assert f"{tmp_path / 'models' / 'x.pth'}" in message
    assert "not found" in message


def test_pretrained_file_of_unused_family_is_not_opened(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    config = grid(shards, tmp_path / "runs", pretrained={"xception": str(tmp_path / "absent.pth")})
    check_grid_config(config)
    assert config.variants == ["deeplabv3plus_resnet50"]


def test_output_path_that_is_a_file(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    output = tmp_path / "runs"
    output.write_text("")
    with pytest.raises(ConfigError, match="output_dir .*runs is a file, not a folder"):
        check_grid_config(grid(shards, output))


def test_relative_shards_resolve_against_current_directory(tmp_path, monkeypatch):
    write_shard_metadata(tmp_path / "work" / "shards")
    monkeypatch.chdir(tmp_path / "work")
    check_grid_config(grid("shards", "runs"))
    assert os.path.isdir("shards")


def trained_output(tmp_path, shards, **settings):
    """An output folder as a finished training job leaves it: grid_config.json and Ray Train checkpoints."""
    output = tmp_path / "runs"
    (output / "ray_results" / "glas-deeplabv3plus_resnet50-seed0").mkdir(parents=True)
    (output / "grid_config.json").write_text(json.dumps(grid(shards, output, **settings).model_dump(mode="json")))
    return output


def test_resume_with_other_settings_is_refused(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    output = trained_output(tmp_path, shards, optimizer={"learning_rate": 0.001})

    with pytest.raises(ConfigError) as caught:
        check_grid_config(grid(shards, output, optimizer={"learning_rate": 0.0005}, batch_size=4))

    message = str(caught.value)
    assert "optimizer.learning_rate: 0.001 -> 0.0005" in message
    assert "batch_size: 24 -> 4" in message
    assert "--restart" in message


def test_resume_with_more_epochs_and_seeds_passes(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    output = trained_output(tmp_path, shards, epochs=2)

    check_grid_config(grid(shards, output, epochs=5, seeds=[0, 1], max_failures=0))


def test_restart_accepts_other_settings(tmp_path):
    shards = write_shard_metadata(tmp_path / "shards")
    output = trained_output(tmp_path, shards, optimizer={"learning_rate": 0.001})

    check_grid_config(grid(shards, output, optimizer={"learning_rate": 0.0005}, resume=False))
