"""Checks of a training grid config that need no Ray: names, local files and folders.

``jobs/train_all.py`` runs them before it starts or joins Ray, so a misspelt
name or path in a config fails at once with a message that names the bad
value, instead of after Ray has started. ``run_training_grid`` runs them again for
callers that use the package directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cancerseg_ray import storage
from cancerseg_ray.config import describe_path, require_local_file, require_local_folder
from cancerseg_ray.data.shards import DATASET_FILE, STATS_FILE, read_json
from cancerseg_ray.errors import ConfigError
from cancerseg_ray.models import list_models
from cancerseg_ray.train.config import TrainGridConfig
from cancerseg_ray.train.records import check_mlflow_available

logger = logging.getLogger(__name__)

BACKBONE_FAMILIES = ("resnet50", "xception")
"""Keys of the config's ``pretrained`` mapping: the backbone families of the model variants."""

MAKE_SHARDS_HINT = "pass --shards with a folder written by jobs/make_shards.py"


def backbone_family(variant: str) -> str:
    """Return the backbone family of a model variant: ``resnet50`` or ``xception``."""
    return "resnet50" if "resnet50" in variant else "xception"


def local_path_text(location: str) -> str:
    """Return a local location as a plain path, turning a ``file://`` URI into its absolute path."""
    if "://" in location:
        return storage.resolve(location)[1]
    return location


def check_shard_location(location: str, *, splits: Sequence[str]) -> None:
    """Check that a shard folder has ``dataset.json``, ``class_stats.json`` and tiles in each split.

    Only these two files are read; the Parquet files themselves are checked
    against the tile schema when a job reads them.

    Args:
        location: The shard folder: a local path or an object-store URI.
        splits: The splits the job reads, e.g. ``("train", "val")``.

    Raises:
        ConfigError: If the folder, one of the files or the tiles of a split are missing.
        StorageError: If an object store cannot be reached.
    """
    if storage.is_remote(location):
        described = storage.redact(location)
        for name in (DATASET_FILE, STATS_FILE):
            if not storage.exists(storage.join(location, name)):
                raise ConfigError(
                    f"shards_dir {described} has no {name}; create the shards with jobs/make_shards.py "
                    "and upload the whole shard folder there"
                )
        stats = read_json(storage.join(location, STATS_FILE))
    else:
        folder = require_local_folder(local_path_text(location), field="shards_dir", hint=MAKE_SHARDS_HINT)
        described = describe_path(location)
        for name in (DATASET_FILE, STATS_FILE):
            if not (folder / name).is_file():
                raise ConfigError(
                    f"shards_dir {described} has no {name}, so it is not a shard folder; {MAKE_SHARDS_HINT}"
                )
        stats = read_json(folder / STATS_FILE)
    tiles = {split: entry.get("tiles", 0) for split, entry in stats.get("splits", {}).items()}
    for split in splits:
        if not tiles.get(split):
            raise ConfigError(
                f"shards_dir {described} has no tiles in the {split} split (tiles per split: {tiles}); "
                "re-create the shards with split fractions that give this split at least one image"
            )


def check_output_location(location: str, *, field: str = "output_dir") -> None:
    """Check that an output folder can be created: its bucket exists, or no file is in its way.

    Raises:
        ConfigError: If a local file exists where the folder should be.
        StorageNotFoundError: If the bucket of an object-store location does not exist.
    """
    if storage.is_remote(location):
        storage.check_bucket(location)
        return
    path = Path(local_path_text(location)).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{field} {describe_path(location)} is a file, not a folder; choose another output folder")


def pretrained_weights(config: TrainGridConfig, variant: str) -> Path | None:
    """Return the absolute path of the local backbone weights of a variant, or None when none are configured.

    Raises:
        ConfigError: If the configured file does not exist.
    """
    family = backbone_family(variant)
    path = config.pretrained.get(family)
    if path is None:
        return None
    return require_local_file(
        path, field=f"pretrained.{family}",
        hint="give an existing local weight file in timm's layout, or remove the entry to train from random initialisation",
    )


GRID_CONFIG_FILE = "grid_config.json"
"""The grid config that the training job writes into its output folder."""

RAY_RESULTS = "ray_results"
"""Folder of Ray Train's checkpoints inside the training output folder."""

RESUME_SETTINGS = ("batch_size", "optimizer", "schedule", "early_stopping_patience", "scaling.num_workers",
                   "mixed_precision", "pretrained", "augmentation", "max_train_batches")
"""Settings that a resumed run must share with the run that wrote its checkpoints.

Variants, seeds and ``epochs`` may change: new runs start, and a larger
``epochs`` continues finished runs. Where the workers run, ``max_failures``,
``max_concurrent_runs`` and the MLflow settings do not change what a run learns.
"""


def _setting(config: dict[str, Any], name: str) -> Any:
    value: Any = config
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _leaves(name: str, value: Any) -> dict[str, Any]:
    """Flatten a nested setting into ``{"optimizer.learning_rate": 0.001, ...}``."""
    if isinstance(value, dict) and value:
        return {key: leaf for part, child in value.items() for key, leaf in _leaves(f"{name}.{part}", child).items()}
    return {name: value}


def changed_settings(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """List the :data:`RESUME_SETTINGS` that differ between two grid configs, as ``name: old -> new``."""
    changes = []
    for name in RESUME_SETTINGS:
        before, after = _leaves(name, _setting(previous, name)), _leaves(name, _setting(current, name))
        changes += [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(before.keys() | after.keys())
                    if before.get(key) != after.get(key)]
    return changes


def check_resume_settings(config: TrainGridConfig) -> None:
    """Refuse to continue runs in the output folder whose checkpoints were trained with other settings.

    Raises:
        ConfigError: If ``resume`` is on, the output folder has Ray Train
            checkpoints, and its ``grid_config.json`` differs in a :data:`RESUME_SETTINGS` entry.
    """
    previous_file = storage.join(config.output_dir, GRID_CONFIG_FILE)
    if not config.resume or not storage.exists(storage.join(config.output_dir, RAY_RESULTS)):
        return
    if not storage.exists(previous_file):
        return
    changes = changed_settings(storage.read_json(previous_file), config.model_dump(mode="json"))
    if changes:
        raise ConfigError(
            f"the output folder {describe_path(storage.redact(config.output_dir))} contains runs trained with other settings "
            f"({'; '.join(changes)}), and training would continue their checkpoints with the new ones. "
            "Choose another output folder, or pass --restart (resume: false in the config) to train every run "
            "again from epoch 1"
        )


def check_grid_config(config: TrainGridConfig) -> None:
    """Check everything about a training grid config that can be checked without Ray.

    The checks cover the shard folder, the variant names, the ``pretrained``
    keys and files of the variants in the grid, MLflow, and the output folder.
    Whether the cluster has the GPUs that ``use_gpu`` needs is checked after
    Ray starts (``check_gpus_available``).

    Raises:
        ConfigError: Naming the bad value or file and what to do.
        StorageError: If an object store cannot be reached.
    """
    if config.shards_dir is None:
        raise ConfigError("shards_dir is not set; pass --shards or set shards_dir in the config")
    unknown = sorted(set(config.variants) - set(list_models()))
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; valid names are {list_models()}")
    unknown_families = sorted(set(config.pretrained) - set(BACKBONE_FAMILIES))
    if unknown_families:
        raise ConfigError(
            f"unknown keys {unknown_families} in pretrained; valid keys are {list(BACKBONE_FAMILIES)}"
        )
    for variant in config.variants:
        pretrained_weights(config, variant)
    if config.mlflow.enabled:
        check_mlflow_available()
    check_shard_location(config.shards_dir, splits=("train", "val"))
    check_output_location(config.output_dir)
    check_resume_settings(config)
    logger.debug("training config passed the checks: shards %s, output %s",
                 storage.redact(config.shards_dir), storage.redact(config.output_dir))
