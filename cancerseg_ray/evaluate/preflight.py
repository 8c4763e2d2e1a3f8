"""Checks of an evaluation config that need no Ray: the shard, runs and report folders.

``jobs/evaluate.py`` runs them before it starts or joins Ray;
``run_evaluation`` runs them again for callers that use the package directly.
"""

from __future__ import annotations

from cancerseg_ray import storage
from cancerseg_ray.config import describe_path, require_local_folder
from cancerseg_ray.errors import ConfigError
from cancerseg_ray.evaluate.config import EvaluateConfig
from cancerseg_ray.train.grid import RUN_FILE
from cancerseg_ray.train.preflight import (
    check_output_location,
    check_shard_location,
    local_path_text,
)

TRAIN_HINT = "pass --runs with the output folder of jobs/train_all.py"


def check_runs_location(location: str) -> None:
    """Check that a runs folder exists and, when it is local, that it has at least one run record.

    An object-store runs folder is only checked for existence here, because
    listing it lists every checkpoint object below it as well.

    Raises:
        ConfigError: If the folder is missing or, when local, has no ``<variant>/seed<k>/run.json``.
        StorageError: If an object store cannot be reached.
    """
    if storage.is_remote(location):
        if not storage.exists(location):
            raise ConfigError(f"runs_dir {storage.redact(location)} not found; {TRAIN_HINT}")
        return
    folder = require_local_folder(local_path_text(location), field="runs_dir", hint=TRAIN_HINT)
    if not any(folder.glob(f"*/seed*/{RUN_FILE}")):
        raise ConfigError(
            f"runs_dir {describe_path(location)} has no run records (*/seed*/{RUN_FILE}); "
            f"{TRAIN_HINT}, after it has finished at least one run"
        )


def check_evaluate_config(config: EvaluateConfig) -> None:
    """Check everything about an evaluation config that can be checked without Ray.

    Raises:
        ConfigError: Naming the bad value or folder and what to do.
        StorageError: If an object store cannot be reached.
    """
    if config.shards_dir is None or config.runs_dir is None:
        raise ConfigError("shards_dir and runs_dir must be set; pass --shards and --runs")
    check_shard_location(config.shards_dir, splits=(config.split,))
    check_runs_location(config.runs_dir)
    check_output_location(config.output_dir)

