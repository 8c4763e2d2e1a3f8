"""Config files with mistakes give one readable line per problem."""

from __future__ import annotations

import pytest
import yaml

from cancerseg_ray.config import load_yaml_config
from cancerseg_ray.data.sources import IngestConfig
from cancerseg_ray.errors import ConfigError
from cancerseg_ray.train.config import TrainGridConfig
from tests.conftest import REPO_ROOT


def config_error(tmp_path, data, model) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_yaml_config(path, model)
    return str(caught.value)


def test_misspelled_field_gets_suggestion(tmp_path):
    data = {"variants": ["cancerseg_xa"], "seeds": [0], "batchsize": 2, "optimizer": {"learning_rat": 0.1}}

    message = config_error(tmp_path, data, TrainGridConfig)

    assert "- batchsize: unknown field; did you mean 'batch_size'?" in message
    assert "- optimizer.learning_rat: unknown field; did you mean 'learning_rate'?" in message


def test_misspelled_section_names_missing_section(tmp_path):
    data = yaml.safe_load((REPO_ROOT / "configs" / "ingest" / "slides.yaml").read_text())
    data["sorce"] = data.pop("source")

    message = config_error(tmp_path, data, IngestConfig)

    assert "- source: required field is missing" in message
    assert "- sorce: unknown field; did you mean 'source'?" in message


def test_wrong_type_shows_short_value(tmp_path):
    data = {"variants": ["cancerseg_xa"], "seeds": [0], "epochs": "x" * 200}

    message = config_error(tmp_path, data, TrainGridConfig)

    assert "- epochs: Input should be a valid integer" in message
    assert "(got 'xxxxx" in message
    assert "..." in message
    assert "errors.pydantic.dev" not in message
    assert "input_value" not in message
