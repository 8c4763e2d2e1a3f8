"""Loading typed job configurations from YAML files, and checking the local paths they name.

Relative paths in a config file, like relative paths on the command line,
resolve against the current directory, not against the config file's folder.
The bundled configs rely on this: ``configs/demo/ingest.yaml`` names
``examples/data/glas/images``, which exists below the repository root, where
``make demo`` runs the jobs.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cancerseg_ray.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def describe_path(path: str | os.PathLike[str]) -> str:
    """Return a path as written, followed by the absolute path it resolves to when it is relative.

    Absolute paths and URIs are returned unchanged, so redact object-store
    URIs with ``storage.redact`` before passing them.

    Error messages use it to show a user who ran a job from another folder
    where the job looked, for example
    ``outputs/shards (resolved to /home/me/outputs/shards from the current directory /home/me)``.
    """
    text = os.fspath(path)
    expanded = Path(text).expanduser()
    if "://" in text or expanded.is_absolute():
        return text
    return f"{text} (resolved to {os.path.abspath(expanded)} from the current directory {Path.cwd()})"


def require_local_folder(path: str | os.PathLike[str], *, field: str, hint: str) -> Path:
    """Return the absolute form of a local folder named by a config field, or raise if it is missing.

    Args:
        path: The folder as written in the config or on the command line.
        field: The config field that names it, for the message (``shards_dir``).
        hint: What the user should do, appended to the message.

    Raises:
        ConfigError: If nothing exists at ``path`` or it is not a folder.
    """
    folder = Path(os.path.abspath(Path(path).expanduser()))
    if not folder.exists():
        raise ConfigError(f"{field} {describe_path(path)} not found; {hint}")
    if not folder.is_dir():
        raise ConfigError(f"{field} {describe_path(path)} is a file, not a folder; {hint}")
    return folder


def require_local_file(path: str | os.PathLike[str], *, field: str, hint: str) -> Path:
    """Return the absolute form of a local file named by a config field, or raise if it is missing.

    Args:
        path: The file as written in the config or on the command line.
        field: The config field that names it, for the message (``pretrained.resnet50``).
        hint: What the user should do, appended to the message.

    Raises:
        ConfigError: If ``path`` is not an existing file.
    """
    file = Path(os.path.abspath(Path(path).expanduser()))
    if not file.is_file():
        state = "is a folder, not a file" if file.is_dir() else "not found"
        raise ConfigError(f"{field} {describe_path(path)} {state}; {hint}")
    return file


def _shown_input(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_names(model: type[BaseModel] | None, parent: str) -> set[str]:
    """Return the field names of the model found at the dotted ``parent`` path below ``model``; empty if none."""
    for part in [part for part in parent.split(".") if part]:
        field = model.model_fields.get(part) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return set(model.model_fields) if model is not None else set()


def format_validation_error(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """Format pydantic's errors as one line per problem: the field, what is wrong, and the value given.

    An unknown field gets the closest name among the fields of its level of
    the model and the fields that the same config lacks, so a misspelled
    ``sorce:`` reads as "did you mean 'source'?".
    """
    problems = error.errors(include_url=False)
    missing = {".".join(map(str, problem["loc"])) for problem in problems if problem["type"] == "missing"}
    lines = []
    for problem in problems:
        field = ".".join(map(str, problem["loc"])) or "(top level)"
        if problem["type"] == "extra_forbidden":
            parent = field.rpartition(".")[0]
            names = {name.rpartition(".")[2] for name in missing if name.rpartition(".")[0] == parent}
            names |= _field_names(model, parent)
            close = difflib.get_close_matches(field.rpartition(".")[2], sorted(names), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; remove it or check its spelling"
            lines.append(f"- {field}: unknown field{hint}")
        elif problem["type"] == "missing":
            lines.append(f"- {field}: required field is missing")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"- {field}: {message} (got {_shown_input(problem['input'])})")
    return "\n".join(lines)


def load_yaml_config(path: str | Path, model: type[ConfigT], **overrides: object) -> ConfigT:
    """Read a YAML file into a pydantic model, applying command-line overrides.

    Paths inside the file are kept as written. Relative ones resolve against
    the current directory when a job uses them (see the module docstring).

    Args:
        path: YAML file.
        model: The config class to validate against.
        **overrides: Top-level fields to replace; ``None`` values are skipped.

    Raises:
        ConfigError: If the file is missing, is not YAML, or fails validation.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {describe_path(path)} not found; pass --config with an existing YAML file")
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
        raise ConfigError(f"config file {path} is invalid:\n{format_validation_error(error, model)}") from None
