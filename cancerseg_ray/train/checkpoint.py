"""The checkpoint contract: one file that a later job can load with nothing else.

``checkpoint.pt`` contains the model weights, optimiser and scheduler state, the
epoch, the model config, the class map and the metric history. It contains
only tensors and plain Python containers, so it loads with
``torch.load(weights_only=True)`` and never unpickles code.

``epoch`` is the number of the last completed epoch, counted from 1 as in the
history and the logs. Format 1 counted from 0, and :func:`load_checkpoint`
converts such files when it reads them.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch

from cancerseg_ray.errors import CheckpointError

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 2
"""Version of the checkpoint layout; 2 numbers epochs from 1, where 1 numbered them from 0."""
REQUIRED_KEYS = ("format_version", "model_state", "model_config", "class_map", "epoch")


def save_checkpoint(directory: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as ``checkpoint.pt`` into ``directory``."""
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint payload lacks {missing}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    torch.save(payload, path)
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file, or the ``checkpoint.pt`` inside a checkpoint directory.

    Raises:
        CheckpointError: If the file is missing, unreadable or not in this format.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint of this package: {error}") from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this package (top level is {type(payload).__name__})")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks the checkpoint fields {missing}")
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}; this package reads up to {FORMAT_VERSION}. "
            "Upgrade cancerseg_ray."
        )
    if payload["format_version"] < 2:
        _number_epochs_from_one(payload)
    return payload


def _number_epochs_from_one(payload: dict[str, Any]) -> None:
    """Convert the 0-based epoch numbers of a format-1 checkpoint to the 1-based numbers of format 2, in place."""
    payload["epoch"] = int(payload["epoch"]) + 1
    entries = list(payload.get("history", []))
    if isinstance(payload.get("metrics"), dict) and not any(entry is payload["metrics"] for entry in entries):
        entries.append(payload["metrics"])
    for entry in entries:
        for key in ("epoch", "resumed_after_epoch"):
            if key in entry:
                entry[key] = int(entry[key]) + 1
    payload["format_version"] = FORMAT_VERSION


def load_model(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights (eval mode)."""
    from cancerseg_ray.models import ModelConfig, build_model

    payload = load_checkpoint(path, map_location=map_location)
    config = ModelConfig.model_validate({**payload["model_config"], "pretrained_path": None})
    model = build_model(config, restoring=True)
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model {config.variant}: {error}") from error
    model.eval()
    return model, payload


def file_digest(path: str | Path) -> str:
    """SHA-256 of a checkpoint file, used to identify the exact model in reports and serving."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
