"""The Parquet tile schema: one row per tile, defined once here.

Every shard written by the ingest jobs carries this schema, and every reader
checks it. ``schemas/tile_schema.json`` and ``schemas/tile_schema.arrow`` are
exported from this module by ``python -m cancerseg_ray.schemas_export``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import pyarrow as pa

from cancerseg_ray.errors import SchemaError

SCHEMA_VERSION = 2
"""Bumped whenever a column is added, removed or changes type."""

METADATA_VERSION_KEY = b"cancerseg.schema_version"
METADATA_CLASSES_KEY = b"cancerseg.class_names"


class Column(StrEnum):
    """Column names of the tile schema."""

    IMAGE_ID = "image_id"
    SOURCE_PATH = "source_path"
    SPLIT = "split"
    GROUP_ID = "group_id"
    X = "x"
    Y = "y"
    LEVEL = "level"
    DOWNSAMPLE = "downsample"
    MPP = "mpp"
    BOUNDS_X = "bounds_x"
    BOUNDS_Y = "bounds_y"
    TILE_SIZE = "tile_size"
    VALID_WIDTH = "valid_width"
    VALID_HEIGHT = "valid_height"
    IMAGE_PNG = "image_png"
    MASK_PNG = "mask_png"
    CLASS_PIXEL_COUNTS = "class_pixel_counts"
    IGNORE_PIXEL_COUNT = "ignore_pixel_count"
    TISSUE_FRACTION = "tissue_fraction"
    TISSUE_TYPE = "tissue_type"


class Split(StrEnum):
    """Dataset splits. Every image (or slide, or patient) belongs to exactly one."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


_FIELDS: list[tuple[Column, pa.DataType, bool, str]] = [
    (Column.IMAGE_ID, pa.string(), False, "Identifier of the source image or slide (file stem)."),
    (Column.SOURCE_PATH, pa.string(), False, "Path of the source image or slide as given to the ingest job."),
    (Column.SPLIT, pa.string(), False, "train, val or test; assigned per image or group, never per tile."),
    (Column.GROUP_ID, pa.string(), False, "Split group (the image itself, or the slide or patient)."),
    (Column.X, pa.int32(), False, "Level-0 x of the tile's top-left corner, in pixels."),
    (Column.Y, pa.int32(), False, "Level-0 y of the tile's top-left corner, in pixels."),
    (Column.LEVEL, pa.int16(), False, "Pyramid level the pixels were read from (0 for plain images)."),
    (Column.DOWNSAMPLE, pa.float32(), False, "Level-0 pixels per tile pixel."),
    (Column.MPP, pa.float32(), True, "Micrometres per tile pixel; null when the source has no resolution."),
    (Column.BOUNDS_X, pa.int32(), False, "openslide.bounds-x of the slide (0 for plain images)."),
    (Column.BOUNDS_Y, pa.int32(), False, "openslide.bounds-y of the slide (0 for plain images)."),
    (Column.TILE_SIZE, pa.int16(), False, "Tile height and width in pixels."),
    (Column.VALID_WIDTH, pa.int16(), False, "Tile columns inside the source; the rest is padding."),
    (Column.VALID_HEIGHT, pa.int16(), False, "Tile rows inside the source; the rest is padding."),
    (Column.IMAGE_PNG, pa.binary(), False, "RGB tile, PNG-encoded (lossless)."),
    (Column.MASK_PNG, pa.binary(), False, "Class-id mask, 8-bit PNG; the ignore index marks unlabelled pixels."),
    (Column.CLASS_PIXEL_COUNTS, pa.list_(pa.int64()), False, "Pixels of each class in the mask, in class-id order."),
    (Column.IGNORE_PIXEL_COUNT, pa.int64(), False, "Pixels equal to the ignore index (padding included)."),
    (Column.TISSUE_FRACTION, pa.float32(), True, "Fraction of the tile covered by detected tissue; null if not computed."),
    (Column.TISSUE_TYPE, pa.string(), True, "Organ or sample type of the source (PanNuke types.npy, PUMA primary or metastatic); null if unknown."),
]


def tile_schema(class_names: list[str] | None = None) -> pa.Schema:
    """Build the Arrow schema of tile shards.

    Args:
        class_names: Class names in class-id order, stored in the schema
            metadata so a shard describes its own mask values.

    Returns:
        The schema, with the schema version (and class names) as metadata.
    """
    fields = [
        pa.field(name.value, dtype, nullable=nullable, metadata={b"description": text.encode()})
        for name, dtype, nullable, text in _FIELDS
    ]
    metadata = {METADATA_VERSION_KEY: str(SCHEMA_VERSION).encode()}
    if class_names is not None:
        metadata[METADATA_CLASSES_KEY] = json.dumps(list(class_names)).encode()
    return pa.schema(fields, metadata=metadata)


def check_schema(schema: pa.Schema, *, source: str) -> None:
    """Raise SchemaError unless ``schema`` has every tile column with its type.

    Args:
        schema: Schema read from a shard or produced by a transformation.
        source: File or dataset name used in the error message.
    """
    expected = tile_schema()
    problems = []
    for field in expected:
        index = schema.get_field_index(field.name)
        if index < 0:
            problems.append(f"missing column {field.name!r}")
        elif not schema.field(index).type.equals(field.type):
            problems.append(
                f"column {field.name!r} has type {schema.field(index).type}, expected {field.type}"
            )
    version = (schema.metadata or {}).get(METADATA_VERSION_KEY)
    if version is not None and int(version) != SCHEMA_VERSION:
        problems.append(f"schema version {int(version)}, this package reads version {SCHEMA_VERSION}")
    if problems:
        raise SchemaError(
            f"{source} is not a tile shard of this package: " + "; ".join(problems)
            + ". Re-create it with jobs/make_shards.py."
        )


def schema_as_json(schema: pa.Schema | None = None) -> dict[str, Any]:
    """Describe the tile schema as a JSON-serialisable dictionary."""
    schema = schema or tile_schema()
    return {
        "title": "cancerseg_ray tile shard",
        "schema_version": SCHEMA_VERSION,
        "columns": [
            {
                "name": field.name,
                "type": str(field.type),
                "nullable": field.nullable,
                "description": (field.metadata or {}).get(b"description", b"").decode(),
            }
            for field in schema
        ],
    }
