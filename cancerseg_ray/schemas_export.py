"""Export the tile schema and the job config schemas into a folder (``schemas/`` in the repository).

Run ``python -m cancerseg_ray.schemas_export schemas`` after changing a schema;
a test checks that the committed files match the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa

from cancerseg_ray.data.config import FolderIngestConfig
from cancerseg_ray.data.labels import LabelMap
from cancerseg_ray.data.schema import schema_as_json, tile_schema
from cancerseg_ray.data.sources import IngestConfig
from cancerseg_ray.evaluate.config import EvaluateConfig
from cancerseg_ray.train.config import TrainGridConfig

JSON_SCHEMAS = {
    "ingest_config.schema.json": FolderIngestConfig,
    "ingest_sources.schema.json": IngestConfig,
    "label_map.schema.json": LabelMap,
    "train_config.schema.json": TrainGridConfig,
    "evaluate_config.schema.json": EvaluateConfig,
}


def exported_files() -> dict[str, bytes]:
    """Return file name -> content of every exported schema."""
    files = {
        "tile_schema.json": (json.dumps(schema_as_json(), indent=2) + "\n").encode(),
        "tile_schema.arrow": tile_schema().serialize().to_pybytes(),
    }
    for name, model in JSON_SCHEMAS.items():
        files[name] = (json.dumps(model.model_json_schema(), indent=2) + "\n").encode()
    return files


def read_arrow_schema(path: str | Path) -> pa.Schema:
    """Read a schema exported as ``tile_schema.arrow``."""
    return pa.ipc.read_schema(pa.py_buffer(Path(path).read_bytes()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0] if argv else "schemas")
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in exported_files().items():
        (folder / name).write_bytes(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
