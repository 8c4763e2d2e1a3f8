"""Writing tile shards atomically and reading them back with schema checks.

A shard root is a local folder or an object-store URI (``s3://``, ``gs://``).
Shards for a local root are written to a temporary file in the split folder
and renamed into place. Shards for an object store are written to a local
temporary file by the task that tiles them, hashed, uploaded to the final
URI and then deleted locally, so every node of a cluster can write its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cancerseg_ray import storage
from cancerseg_ray.data.schema import Column, Split, check_schema, tile_schema
from cancerseg_ray.errors import InputDataError, SchemaError

DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.json"
SPLITS_FILE = "splits.json"
STATS_FILE = "class_stats.json"

ROWS_PER_ROW_GROUP = 256
"""Tiles per Parquet row group: about 30 MB of PNG data, small enough to stream."""


def shard_path(root: Path | str, split: Split | str, image_id: str) -> Path | str:
    """Return where the shard of one image lives under the shard root.

    Returns:
        A ``Path`` under a local root, or a URI (with the root's query options)
        under an object-store root.
    """
    if storage.is_remote(root):
        return storage.join(str(root), str(split), f"{image_id}.parquet")
    return Path(root) / str(split) / f"{image_id}.parquet"


def recorded_path(location: Path | str) -> str:
    """Return the form in which a manifest records a shard or side file.

    A local file is recorded as its path. An object is recorded as its URI
    without the query, so the manifest names no endpoint or other option.
    """
    return storage.without_query(location)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(location: Path | str, payload: Any) -> None:
    """Write a JSON file of a shard folder to a local path or an object-store URI.

    A local file is written to a temporary name and renamed into place. An
    upload becomes visible only once complete. NaN and infinity are rejected,
    because strict JSON readers reject them.
    """
    text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n"
    storage.write_bytes(location, text.encode("utf-8"))


@dataclass
class ShardWriter:
    """Stream tile rows into a Parquet file that appears only when complete.

    For a local ``path``, rows go to a temporary file in the target folder and
    ``close`` renames it into place, so a crash leaves no half-written shard
    under the final name. For an object-store URI, rows go to a temporary file
    in the local temporary folder, and ``close`` hashes it, uploads it to
    ``path`` and deletes it.
    """

    path: Path | str
    class_names: Sequence[str]
    _rows: list[dict[str, Any]] = field(default_factory=list)
    _writer: pq.ParquetWriter | None = None
    _temporary: Path | None = None
    rows_written: int = 0

    def __post_init__(self) -> None:
        self._remote = storage.is_remote(self.path)
        if self._remote:
            self.path = str(self.path)
        else:
            self.path = Path(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._schema = tile_schema(list(self.class_names))

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= ROWS_PER_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            folder = None if self._remote else self.path.parent  # type: ignore[union-attr]
            stem = PurePosixPath(storage.without_query(self.path)).stem
            handle, name = storage.make_temporary_file(folder, prefix=f".{stem}.", suffix=".parquet.tmp")
            os.close(handle)
            self._temporary = Path(name)
            self._writer = pq.ParquetWriter(self._temporary, self._schema, compression="zstd")
        table = pa.Table.from_pylist(self._rows, schema=self._schema)
        self._writer.write_table(table)
        self.rows_written += len(self._rows)
        self._rows = []

    def close(self) -> str | None:
        """Finish the file and move it into place.

        Returns:
            The SHA-256 of the written file, or None when no rows were added
            (then no file is written).

        Raises:
            StorageError: If the upload to an object store failed. The
                temporary file is then deleted, and no object is left under ``path``.
        """
        self._flush()
        if self._writer is None:
            return None
        self._writer.close()
        if not self._remote:
            os.replace(self._temporary, self.path)
            return file_sha256(self.path)  # type: ignore[arg-type]
        assert self._temporary is not None  # set by the first flush
        try:
            checksum = file_sha256(self._temporary)
            storage.upload(self._temporary, self.path)
        finally:
            self._temporary.unlink(missing_ok=True)
            self._temporary = None
        return checksum

    def abort(self) -> None:
        """Drop the temporary file; an existing shard under the final name stays untouched."""
        if self._writer is not None:
            self._writer.close()
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)
        self._rows = []


def read_json(location: str | Path) -> Any:
    """Read a JSON file of a shard folder from a local path or an object-store URI.

    Raises:
        InputDataError: If the file is missing or not valid JSON.
    """
    if storage.is_remote(location):
        return _read_remote_json(location)
    try:
        return json.loads(Path(location).read_text())
    except FileNotFoundError as error:
        raise InputDataError(f"{location} not found; run jobs/make_shards.py to create the shards first") from error
    except json.JSONDecodeError as error:
        raise InputDataError(f"{location} is not valid JSON ({error}); re-create the shards") from error


def _read_remote_json(location: str) -> Any:
    try:
        return storage.read_json(location)
    except storage.StorageNotFoundError as error:
        raise InputDataError(
            f"{storage.redact(location)} not found ({error}); create the shards there with "
            "jobs/make_shards.py --output <URI>"
        ) from error


@dataclass(frozen=True)
class ShardFiles:
    """Shard files of a shard folder, ready for ``pyarrow.parquet`` and ``ray.data.read_parquet``.

    ``filesystem`` is None for a local folder, so that local paths are read as
    before. For an object store it is the folder's pyarrow filesystem, and
    ``paths`` are ``bucket/key`` paths in it.
    """

    filesystem: pafs.FileSystem | None
    paths: list[str]


def _remote_shard_paths(root: str, split: str) -> list[str]:
    folder = storage.join(root, split)
    if not storage.exists(folder):
        return []
    _, base = storage.resolve(folder)
    # Only the split folder's own files: hidden names are unfinished uploads of other tools.
    return [f"{base}/{name}" for name in storage.list_files(folder, suffix=".parquet")
            if "/" not in name and not name.startswith(".")]


def locate_shard_files(root: str | Path, splits: Iterable[Split | str]) -> ShardFiles:
    """Find the shard files of the given splits under a local folder or an object-store URI, checking each schema.

    Raises:
        SchemaError: If a file is not a readable Parquet file of the tile schema.
    """
    filesystem: pafs.FileSystem | None = None
    paths: list[str] = []
    if storage.is_remote(root):
        filesystem, _ = storage.resolve(root)
        for split in splits:
            paths.extend(_remote_shard_paths(str(root), str(split)))
    else:
        for split in splits:
            paths.extend(str(path) for path in sorted((Path(root) / str(split)).glob("*.parquet")))
    for path in paths:
        try:
            check_schema(pq.read_schema(path, filesystem=filesystem), source=path)
        except (pa.ArrowInvalid, OSError) as error:
            raise SchemaError(f"{path} is not a readable Parquet file ({error}); re-create the shards") from error
    return ShardFiles(filesystem, paths)


def list_shard_files(root: str | Path, splits: Iterable[Split | str]) -> list[str]:
    """List the shard files of the given splits, checking each file's schema.

    Returns:
        Local paths, or ``bucket/key`` paths in the filesystem of an
        object-store root; use :func:`locate_shard_files` to get that filesystem too.
    """
    return locate_shard_files(root, splits).paths


def read_shard_table(files: ShardFiles, path: str, *, columns: list[str]) -> pa.Table:
    """Read columns of one shard file found by :func:`locate_shard_files`."""
    return pq.read_table(path, columns=columns, filesystem=files.filesystem)


def class_counts_by_split(root: Path | str, num_classes: int) -> dict[str, dict[str, Any]]:
    """Sum class pixel counts and tile counts per split from the shards' count columns.

    ``root`` is a local shard folder or an object-store URI.
    """
    totals: dict[str, dict[str, Any]] = {}
    columns = [Column.IMAGE_ID.value, Column.CLASS_PIXEL_COUNTS.value, Column.IGNORE_PIXEL_COUNT.value]
    for split in Split:
        counts = np.zeros(num_classes, dtype=np.int64)
        ignored = 0
        tiles = 0
        images: set[str] = set()
        files = locate_shard_files(root, [split])
        for path in files.paths:
            table = read_shard_table(files, path, columns=columns)
            if table.num_rows == 0:
                continue
            matrix = np.asarray(table.column(Column.CLASS_PIXEL_COUNTS).to_pylist(), dtype=np.int64)
            if matrix.shape[1] != num_classes:
                raise SchemaError(f"{path}: {matrix.shape[1]} class counts per tile, the dataset has {num_classes} classes")
            counts += matrix.sum(axis=0)
            ignored += int(np.asarray(table.column(Column.IGNORE_PIXEL_COUNT)).sum())
            tiles += table.num_rows
            images.update(table.column(Column.IMAGE_ID).to_pylist())
        totals[str(split)] = {
            "tiles": tiles,
            "images": len(images),
            "class_pixel_counts": counts.tolist(),
            "ignore_pixel_count": ignored,
        }
    return totals
