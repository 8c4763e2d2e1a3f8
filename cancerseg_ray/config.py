"""Loading typed job configurations from YAML files."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cancerseg_ray.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def load_yaml_config(path: str | Path, model: type[ConfigT], **overrides: object) -> ConfigT:
    """Read a YAML file into a pydantic model, applying command-line overrides.

    Args:
        path: YAML file.
        model: The config class to validate against.
        **overrides: Top-level fields to replace; ``None`` values are skipped.

    Raises:
        ConfigError: If the file is missing, is not YAML, or fails validation.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"config file {path} is invalid:\n{error}") from error
