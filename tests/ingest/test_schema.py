"""The tile schema, its checks and its exported copies."""

from __future__ import annotations

import pyarrow as pa
import pytest

from cancerseg_ray.data.schema import SCHEMA_VERSION, Column, check_schema, tile_schema
from cancerseg_ray.errors import SchemaError
from cancerseg_ray.schemas_export import exported_files, read_arrow_schema
from tests.conftest import REPO_ROOT


def test_schema_has_every_column_once():
    schema = tile_schema(["a", "b"])
    assert schema.names == [column.value for column in Column]
    assert schema.metadata[b"cancerseg.schema_version"] == str(SCHEMA_VERSION).encode()


def test_check_schema_names_missing_column():
    schema = tile_schema().remove(tile_schema().get_field_index(Column.MASK_PNG))
    with pytest.raises(SchemaError, match="shard.parquet .*missing column 'mask_png'"):
        check_schema(schema, source="shard.parquet")


def test_check_schema_names_wrong_type():
    schema = tile_schema()
    index = schema.get_field_index(Column.X)
    schema = schema.set(index, pa.field(Column.X.value, pa.float64()))
    with pytest.raises(SchemaError, match="column 'x' has type double, expected int32"):
        check_schema(schema, source="shard.parquet")


def test_exported_schemas_match_code():
    for name, content in exported_files().items():
        path = REPO_ROOT / "schemas" / name
        assert path.is_file(), f"{path} is missing; run make schemas"
        assert path.read_bytes() == content, f"{path} is stale; run make schemas"


def test_exported_arrow_schema_round_trips():
    assert read_arrow_schema(REPO_ROOT / "schemas" / "tile_schema.arrow").equals(tile_schema())
