"""Output location of an ingest run and the file handling that both ingest drivers share.

An ingest run writes to a local folder or to an object-store URI, ``s3://``
or ``gs://``. S3 options such as ``?endpoint_override=host:port&scheme=http``
go in the URI's query. Both drivers open it with :meth:`OutputRoot.prepare`,
which checks the bucket before any Ray work starts. They then use this module
to read and write ``splits.json``, ``manifest.json``, ``dataset.json`` and
``errors.json``, to decide which items a re-run skips, and to remove shards
left in another split's folder.

The manifest records a local shard by its absolute path and a shard on an
object store by its URI without the query (see ``shards.recorded_path``), so
it names no endpoint. A re-run resolves such a URI with the query of its own
output URI.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cancerseg_ray import storage
from cancerseg_ray.data.schema import Split
from cancerseg_ray.data.shards import (
    DATASET_FILE,
    ERRORS_FILE,
    MANIFEST_FILE,
    file_sha256,
    recorded_path,
    shard_path,
    write_json,
)
from cancerseg_ray.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

_COLLAPSED_URI = re.compile(r"^(s3|gs|gcs|file):/(?!/)", flags=re.IGNORECASE)


def check_uri_intact(output_dir: str) -> None:
    """Raise when an output location is a URI whose ``//`` was collapsed, as ``pathlib.Path`` does.

    ``Path("s3://b/x")`` becomes ``s3:/b/x``. Without this check, ingest would
    write into a local folder named ``s3:``.

    Raises:
        ConfigError: If ``output_dir`` starts with ``s3:/``, ``gs:/``, ``gcs:/`` or ``file:/`` and one slash.
    """
    if _COLLAPSED_URI.match(output_dir):
        raise ConfigError(
            f"ingest output {output_dir} looks like a URI whose '//' was collapsed by pathlib.Path; "
            "pass the URI as a string, as in s3://bucket/shards"
        )


@dataclass(frozen=True)
class OutputRoot:
    """The output folder of an ingest run.

    Attributes:
        location: Absolute local path, or the object-store URI as given, query included.
        remote: Whether ``location`` is an object-store URI.
    """

    location: str
    remote: bool

    @classmethod
    def prepare(cls, output_dir: str | os.PathLike[str]) -> OutputRoot:
        """Check an output location, then create a local folder or check that a URI's bucket exists.

        Raises:
            ConfigError: If ``output_dir`` is a collapsed URI (``s3:/bucket``)
                or has a scheme other than ``s3``, ``gs`` or ``file``.
            StorageNotFoundError: If the bucket of a URI does not exist.
            StorageError: If the object store cannot be reached.
        """
        text = os.fspath(output_dir)
        check_uri_intact(text)
        if storage.is_remote(text):
            storage.check_bucket(text)
            return cls(text, remote=True)
        _, path = storage.resolve(text)
        Path(path).mkdir(parents=True, exist_ok=True)
        return cls(path, remote=False)

    @property
    def result_dir(self) -> Path | str:
        """The location as ``IngestResult.output_dir`` reports it: a ``Path``, or the URI."""
        return self.location if self.remote else Path(self.location)

    @property
    def display(self) -> str:
        """The location for messages and logs, with credentials replaced by ``***``."""
        return storage.redact(self.location)

    def join(self, *parts: str) -> str:
        """Return the location of a file below the root."""
        return storage.join(self.location, *parts)

    def shard(self, split: Split | str, name: str) -> Path | str:
        """Return the location of the shard ``<split>/<name>.parquet``."""
        return shard_path(self.location, split, name)

    def locate(self, recorded: str) -> str | None:
        """Return the location below this root of a shard path recorded in the manifest.

        A path below this root is returned as it is, with this root's query for
        an object store. A manifest copied or moved with its folder still names
        the old folder, for example after a copy to another disk or to a bucket.
        Its shard is then looked up at the same ``<split>/<file>`` below this
        root. The caller's checksum check decides whether that copy is intact.

        Returns:
            The location, or None when the recorded path names no split folder.
        """
        base = (storage.without_query(self.location) if self.remote else self.location).rstrip("/") + "/"
        if recorded.startswith(base) and len(recorded) > len(base):
            return self.join(*recorded[len(base):].split("/"))
        parts = storage.without_query(recorded).replace("\\", "/").rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] not in {split.value for split in Split}:
            return None
        return self.join(parts[-2], parts[-1])

    def record(self, recorded: str) -> str:
        """Return a recorded shard path as this root records it; the shard must have been located."""
        location = self.locate(recorded)
        if location is None:
            raise ValueError(f"shard path {recorded!r} names no split folder")
        return recorded_path(location)

    def exists(self, location: Path | str) -> bool:
        """Tell whether a file or object exists at a location below the root."""
        if not self.remote:
            return Path(location).is_file()
        return storage.exists(location)

    def read_json(self, name: str) -> Any | None:
        """Read a JSON file of the root, or return None if it does not exist.

        Raises:
            StorageError: If the file cannot be read or is not valid JSON.
        """
        location = self.join(name)
        if not self.exists(location):
            return None
        return storage.read_json(location)

    def write_json(self, name: str, payload: Any) -> None:
        """Write a JSON file of the root, atomically for a local root."""
        write_json(self.join(name), payload)

    def delete(self, location: Path | str) -> None:
        """Delete a file or object below the root if it exists."""
        if self.exists(location):
            storage.delete_file(location)

    def shard_is_intact(self, recorded: str, checksum: str) -> bool:
        """Tell whether a shard recorded in the manifest exists with the recorded SHA-256.

        NOTE: This reads the whole shard back, from the object store for a URI,
        so checking a large dataset before a re-run costs one full download.
        """
        location = self.locate(recorded)
        if location is None:
            return False
        if not self.remote:
            path = Path(location)
            return path.is_file() and file_sha256(path) == checksum
        return storage.exists(location) and storage.sha256(location) == checksum


def check_settings(root: OutputRoot, fingerprint: str, *, overwrite: bool) -> None:
    """Reject a run into a root whose ``dataset.json`` was written with other tile settings.

    Raises:
        ConfigError: If the settings fingerprints differ and ``overwrite`` is false.
    """
    if overwrite:
        return
    previous = root.read_json(DATASET_FILE)
    if previous is not None and previous.get("settings_fingerprint") != fingerprint:
        raise ConfigError(
            f"{root.display} contains shards made with other settings; choose a new output folder or set overwrite: true"
        )


def load_manifest(root: OutputRoot) -> dict[str, dict[str, Any]]:
    """Return the manifest's entries by item id, or an empty dict when the root has no manifest."""
    payload = root.read_json(MANIFEST_FILE)
    if payload is None:
        return {}
    return {entry["image_id"]: entry for entry in payload.get("images", [])}


def remove_stale_shards(root: OutputRoot, *, item_id: str, shard_name: str, current: set[str]) -> None:
    """Delete shards of a re-tiled item left in other split folders, so no item is in two splits.

    Args:
        root: Output root.
        item_id: Item named in the log message.
        shard_name: File stem of the item's shards.
        current: Recorded paths of the shards this run wrote for the item.
    """
    for split in Split:
        stale = root.shard(split, shard_name)
        if recorded_path(stale) in current or not root.exists(stale):
            continue
        logger.warning("removing %s: item %s now has its tiles in %s", storage.redact(stale), item_id,
                       sorted(current))
        root.delete(stale)


def write_run_files(
    root: OutputRoot,
    *,
    manifest: dict[str, Any],
    failed: list[dict[str, Any]],
    dataset: dict[str, Any],
    item_noun: str,
) -> None:
    """Write ``manifest.json``, ``errors.json`` (or delete a stale one) and ``dataset.json``.

    Args:
        root: Output root.
        manifest: Manifest payload. Its ``images`` list contains the written and skipped items.
        failed: Summaries of the failed items.
        dataset: Payload of ``dataset.json``.
        item_noun: Name of one item in the error message (``image``, ``item``).

    Raises:
        InputDataError: If no item was written or skipped; ``dataset.json`` is then not written.
    """
    root.write_json(MANIFEST_FILE, manifest)
    errors_path = root.join(ERRORS_FILE)
    if failed:
        root.write_json(ERRORS_FILE, {"failed": failed})
    else:
        root.delete(errors_path)
    if not manifest["images"]:
        raise InputDataError(
            f"no {item_noun} could be tiled; see {storage.redact(errors_path)} for the reason of each"
        )
    root.write_json(DATASET_FILE, dataset)
