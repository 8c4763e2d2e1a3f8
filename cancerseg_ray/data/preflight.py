"""Checks of ingest configs that run before Ray starts.

The ingest job reads its inputs on Ray workers. A folder or file that does not
exist would otherwise be found only after Ray has started, and the output
folder would already exist. These checks find such mistakes in a second and
name the resolved path.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from cancerseg_ray.config import require_local_file, require_local_folder
from cancerseg_ray.train.preflight import check_output_location

FOLDER_FIELDS = ("_dir", "root")
"""Endings of the names of source fields that name folders; every other path field names a file."""


def check_input_paths(source: BaseModel, *, prefix: str = "source") -> None:
    """Check that every local path of an ingest source exists, as the folder or file its field names.

    Raises:
        ConfigError: If a path is missing or is a file where a folder is expected, or the reverse.
    """
    for name in type(source).model_fields:
        value = getattr(source, name)
        if not isinstance(value, Path):
            continue
        field = f"{prefix}.{name}" if prefix else name
        hint = f"correct {field} in the config (docs/ingest.md shows the layout of each dataset)"
        if name.endswith(FOLDER_FIELDS):
            require_local_folder(value, field=field, hint=hint)
        else:
            require_local_file(value, field=field, hint=hint)


def check_ingest_config(config: BaseModel) -> None:
    """Check an ingest config's inputs and output before Ray starts.

    ``config`` is an ``IngestConfig`` (with a ``source`` section) or a
    ``FolderIngestConfig`` (with ``images_dir`` and ``masks_dir`` at the top level).

    Raises:
        ConfigError: If an input is missing or the output folder is a file.
        StorageNotFoundError: If the bucket of an object-store output does not exist.
    """
    source = getattr(config, "source", None)
    if isinstance(source, BaseModel):
        check_input_paths(source)
    else:
        check_input_paths(config, prefix="")
    check_output_location(str(config.output_dir))
