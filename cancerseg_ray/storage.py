"""Local paths and object-store URIs behind one pyarrow filesystem interface.

A location is a local path, a ``file://`` URI, or an object-store URI:
``s3://bucket/prefix`` (Amazon S3 or an S3-compatible server) or
``gs://bucket/prefix`` (Google Cloud Storage). ``resolve`` turns it into a
``pyarrow.fs.FileSystem`` and the path inside it, and the helpers below copy
files and folders, read and write JSON and Parquet, and build the
``storage_path`` / ``storage_filesystem`` pair of Ray Train's ``RunConfig``.

Credentials come from the environment, as pyarrow's filesystems read them:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``~/.aws/credentials`` or
the instance role on AWS, and application default credentials on GCP. S3
options can ride in the URI's query, for example
``s3://bucket/runs?region=eu-west-1`` or, for an S3-compatible server,
``s3://bucket/runs?endpoint_override=minio.internal:9000&scheme=http``.
pyarrow 26 also reads the endpoint from ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cancerseg_ray.errors import CancerSegError, ConfigError

logger = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3", "gs", "gcs")
"""URI schemes of object stores; ``gcs`` is pyarrow's alias of ``gs``."""

LOCAL_SCHEME = "file"

DOWNLOAD_CHUNK_BYTES = 64 << 20
"""Bytes per read when copying from an object store, as Ray Train 2.60 uses for checkpoints.

pyarrow's default of 1 MiB turns a checkpoint of hundreds of megabytes into
hundreds of GET requests. Each copy thread buffers one chunk.
"""

Location = str | os.PathLike[str]
"""A local path, a ``file://`` URI or an object-store URI."""


class InvalidURIError(ConfigError):
    """A storage location has an unsupported scheme or is malformed."""


class StorageError(CancerSegError, OSError):
    """Reading from or writing to a storage location failed."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A bucket, object or local file does not exist."""


@dataclass(frozen=True)
class RayTrainStorage:
    """Arguments of Ray Train's ``RunConfig`` that place checkpoints and results at a location.

    For a local location ``storage_filesystem`` is ``None`` and Ray writes to
    the local path. For an object store it is the pyarrow filesystem carrying the
    URI's options and credentials, and ``storage_path`` is ``bucket/prefix``
    without the scheme, as Ray expects when a filesystem is given.
    """

    storage_path: str
    storage_filesystem: pafs.FileSystem | None

    def as_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments for ``ray.train.RunConfig``."""
        return {"storage_path": self.storage_path, "storage_filesystem": self.storage_filesystem}


_SECRET_OPTION = re.compile(r"((?:secret_key|session_token|access_key)=)[^&]*", flags=re.IGNORECASE)
_USER_INFO = re.compile(r"^([a-z0-9]+://)[^/@]*@", flags=re.IGNORECASE)


def _display(location: Location) -> str:
    """Return ``location`` as text with credentials replaced by ``***``, for messages and logs.

    Credentials are the user info of a URI (``s3://key:secret@bucket``, which
    pyarrow accepts) and the secret options of its query.
    """
    return _USER_INFO.sub(r"\1***@", _SECRET_OPTION.sub(r"\1***", str(location)))


def redact(location: Location) -> str:
    """Return ``location`` as text with its credentials replaced by ``***``, for messages, logs and reports."""
    return _display(location)


def location_text(value: Any) -> Any:
    """Turn a ``PathLike`` into its text and a ``file://`` URI into its absolute path; pass other values through.

    Configs use it as a pydantic ``before`` validator on location fields typed
    ``str``. Such fields keep URIs intact, where ``Path("s3://b/x")`` would
    collapse the double slash to ``s3:/b/x``. Turning ``file://`` URIs into
    paths lets every job treat them as the local folders they are.

    Raises:
        InvalidURIError: If a ``file://`` URI names another host, a relative path or query options.
    """
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str) and _scheme(value) == LOCAL_SCHEME:
        return str(_local_path(value))
    return value


def _scheme(location: Location) -> str:
    """Return the lower-case URI scheme of ``location``, or ``""`` for a plain path."""
    if isinstance(location, os.PathLike):
        return ""
    text = str(location)
    if "://" not in text:
        return ""
    return text.split("://", 1)[0].lower()


def is_remote(location: Location) -> bool:
    """Tell whether ``location`` is an object-store URI (``s3://``, ``gs://``).

    Raises:
        InvalidURIError: If the location has a scheme this module does not support.
    """
    scheme = _scheme(location)
    _check_scheme(location, scheme)
    return scheme in REMOTE_SCHEMES


def _check_scheme(location: Location, scheme: str) -> None:
    if scheme and scheme != LOCAL_SCHEME and scheme not in REMOTE_SCHEMES:
        raise InvalidURIError(
            f"unsupported storage location {_display(location)!r}: scheme {scheme!r} is not one of s3://, gs://, "
            "file:// or a local path; copy the data to one of these"
        )


def _local_path(location: Location) -> Path:
    if _scheme(location) != LOCAL_SCHEME:
        return Path(location).expanduser().resolve()
    parts = urlsplit(str(location))
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InvalidURIError(
            f"invalid file URI {_display(location)!r}: a file URI names an absolute path on this machine, "
            "as in file:///data/shards"
        )
    if parts.query:
        raise InvalidURIError(f"invalid file URI {_display(location)!r}: file URIs take no query options")
    return Path(unquote(parts.path)).resolve()


def resolve(location: Location, *, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """Return the pyarrow filesystem of ``location`` and the path inside it.

    Args:
        location: A local path, a ``file://`` URI, or an ``s3://`` / ``gs://`` URI.
            An object-store URI may carry pyarrow's options in its query
            (``region``, ``endpoint_override``, ``scheme``, ...).
        filesystem: A filesystem to use for an object-store URI instead of one
            built from the URI, for example an ``S3FileSystem`` with explicit
            credentials. Its URI must then have no query.

    Returns:
        The filesystem and the path in it: an absolute path for a local
        location, ``bucket/key`` for an object store.

    Raises:
        InvalidURIError: If the scheme is unsupported, the URI has no bucket, or its options are invalid.
        StorageError: If pyarrow cannot build the filesystem (for example, no
            region could be found for the bucket).
    """
    scheme = _scheme(location)
    _check_scheme(location, scheme)
    if scheme not in REMOTE_SCHEMES:
        return pafs.LocalFileSystem(), str(_local_path(location))

    text = str(location)
    parts = urlsplit(text)
    if not parts.netloc:
        raise InvalidURIError(f"invalid storage URI {_display(text)!r}: it names no bucket, as in {scheme}://my-bucket/shards")
    if filesystem is not None:
        if parts.query:
            raise InvalidURIError(
                f"storage URI {_display(text)!r} has query options and an explicit filesystem was given; use one or the other"
            )
        return filesystem, f"{parts.netloc}{unquote(parts.path)}".rstrip("/")
    try:
        built, path = pafs.FileSystem.from_uri(text)
    except pa.ArrowInvalid as error:
        raise InvalidURIError(f"invalid storage URI {_display(text)!r}: {error}") from error
    except OSError as error:
        raise StorageError(
            f"failed to open the object store of {_display(text)!r}: {error}; check the credentials and add ?region=... "
            "to the URI if the bucket's region cannot be looked up"
        ) from error
    return built, path.rstrip("/")


def join(location: Location, *parts: str) -> str:
    """Append path segments to a location, keeping a URI's scheme and query options.

    Raises:
        InvalidURIError: If a segment is empty, absolute or ``..``.
    """
    for part in parts:
        if not part or part.startswith("/") or ".." in part.split("/"):
            raise InvalidURIError(f"invalid path segment {part!r} for {_display(location)!r}: use a relative name")
    if not _scheme(location):
        return str(Path(location).joinpath(*parts))
    text = str(location)
    base, separator, query = text.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + (f"?{query}" if separator else "")


def ray_train_storage(location: Location, *, filesystem: pafs.FileSystem | None = None) -> RayTrainStorage:
    """Build the ``storage_path`` and ``storage_filesystem`` of Ray Train's ``RunConfig`` for a location.

    Every node of a multi-node cluster must reach the location: an object
    store, or a shared file system mounted at the same path on every node.
    """
    scheme = _scheme(location)
    _check_scheme(location, scheme)
    if scheme not in REMOTE_SCHEMES:
        return RayTrainStorage(str(_local_path(location)), None)
    resolved, path = resolve(location, filesystem=filesystem)
    return RayTrainStorage(path, resolved)


def _bucket_missing(filesystem: pafs.FileSystem, path: str) -> str | None:
    """Return the bucket of ``path`` if it does not exist on an object store, else ``None``."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        return None
    bucket = path.split("/", 1)[0]
    try:
        missing = filesystem.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError:
        return None
    return bucket if missing else None


@contextmanager
def _storage_errors(location: Location, action: str, filesystem: pafs.FileSystem, path: str) -> Iterator[None]:
    """Turn pyarrow's ``OSError`` into errors that name the location and what to do."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as error:
        raise StorageNotFoundError(f"failed to {action} {_display(location)!r}: not found ({error})") from error
    except OSError as error:
        bucket = _bucket_missing(filesystem, path)
        if bucket is not None:
            raise StorageNotFoundError(
                f"failed to {action} {_display(location)!r}: bucket {bucket!r} does not exist; create it or correct the URI"
            ) from error
        raise StorageError(
            f"failed to {action} {_display(location)!r}: {error}; check the URI, the network and the credentials"
        ) from error


def check_bucket(location: Location, *, filesystem: pafs.FileSystem | None = None) -> None:
    """Raise early if the bucket of an object-store location does not exist; do nothing for local paths.

    Raises:
        StorageNotFoundError: If the bucket does not exist.
        StorageError: If the object store cannot be reached.
    """
    if not is_remote(location):
        return
    resolved, path = resolve(location, filesystem=filesystem)
    bucket = path.split("/", 1)[0]
    with _storage_errors(location, "reach the bucket of", resolved, path):
        info = resolved.get_file_info(bucket)
    if info.type == pafs.FileType.NotFound:
        raise StorageNotFoundError(
            f"bucket {bucket!r} of {_display(location)!r} does not exist; create it or correct the URI"
        )


def exists(location: Location, *, filesystem: pafs.FileSystem | None = None) -> bool:
    """Tell whether a file or folder (an object or a prefix with objects) exists at ``location``."""
    resolved, path = resolve(location, filesystem=filesystem)
    with _storage_errors(location, "look up", resolved, path):
        return resolved.get_file_info(path).type != pafs.FileType.NotFound


def without_query(location: Location) -> str:
    """Return ``location`` as text without its URI query (``?endpoint_override=...``).

    Records such as an ingest manifest keep object-store paths in this form, so
    that they name the object but no endpoint or other option of one machine.
    A local path is returned as text unchanged.
    """
    text = os.fspath(location) if isinstance(location, os.PathLike) else str(location)
    if not _scheme(location):
        return text
    return text.split("?", 1)[0]


def sha256(location: Location, *, filesystem: pafs.FileSystem | None = None) -> str:
    """Compute the SHA-256 of a file or object as a hex digest, streaming it in chunks.

    Raises:
        StorageNotFoundError: If nothing exists at ``location``.
    """
    resolved, path = resolve(location, filesystem=filesystem)
    digest = hashlib.sha256()
    with _storage_errors(location, "read", resolved, path), resolved.open_input_stream(path) as stream:
        for chunk in iter(lambda: stream.read(DOWNLOAD_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(location: Location, *, suffix: str = "", filesystem: pafs.FileSystem | None = None) -> list[str]:
    """List the files below a folder or prefix, recursively, as paths relative to it, sorted.

    Raises:
        StorageNotFoundError: If the folder or its bucket does not exist.
    """
    resolved, path = resolve(location, filesystem=filesystem)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=False)
    with _storage_errors(location, "list", resolved, path):
        infos = resolved.get_file_info(selector)
    prefix = path.rstrip("/") + "/"
    return sorted(
        info.path[len(prefix):] for info in infos
        if info.type == pafs.FileType.File and info.path.endswith(suffix)
    )


def _make_parent(filesystem: pafs.FileSystem, path: str) -> None:
    # Object stores have no folders; a local file needs its parent folder first.
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.create_dir(str(Path(path).parent), recursive=True)


def write_bytes(location: Location, data: bytes, *, filesystem: pafs.FileSystem | None = None) -> None:
    """Write ``data`` to a file or object, replacing it.

    A local file is written to a temporary name and then renamed, so readers
    never see half a file. An object-store upload becomes visible only once complete.
    """
    resolved, path = resolve(location, filesystem=filesystem)
    with _storage_errors(location, "write", resolved, path):
        _make_parent(resolved, path)
        target = f"{path}.tmp-{uuid.uuid4().hex}" if isinstance(resolved, pafs.LocalFileSystem) else path
        with resolved.open_output_stream(target) as stream:
            stream.write(data)
        if target != path:
            resolved.move(target, path)


def delete_file(location: Location, *, filesystem: pafs.FileSystem | None = None) -> None:
    """Delete one file or object.

    Raises:
        StorageNotFoundError: If nothing exists at ``location``.
    """
    resolved, path = resolve(location, filesystem=filesystem)
    with _storage_errors(location, "delete", resolved, path):
        resolved.delete_file(path)


def make_temporary_file(folder: str | Path | None, *, prefix: str, suffix: str = "") -> tuple[int, str]:
    """Create a temporary file as ``tempfile.mkstemp`` does, with the mode of an ordinary new file.

    ``mkstemp`` creates files readable by their owner only (0600); a file
    renamed into an output folder would keep that mode. This one gets 0666
    less the process's umask, as ``open`` would give it.
    """
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.fchmod(handle, 0o666 & ~_process_umask())
    return handle, name


@functools.cache
def _process_umask() -> int:
    """Return the process's umask, read once.

    Reading it means setting it and setting it back. Doing that once, at the
    first write, keeps threads that create files later from seeing umask 0.
    """
    umask = os.umask(0)
    os.umask(umask)
    return umask


def delete_folder(location: Location, *, filesystem: pafs.FileSystem | None = None) -> None:
    """Delete a folder and everything below it; a missing folder is not an error."""
    resolved, path = resolve(location, filesystem=filesystem)
    with _storage_errors(location, "delete", resolved, path):
        if resolved.get_file_info(path).type != pafs.FileType.NotFound:
            resolved.delete_dir(path)


def read_bytes(location: Location, *, filesystem: pafs.FileSystem | None = None) -> bytes:
    """Read a whole file or object."""
    resolved, path = resolve(location, filesystem=filesystem)
    with _storage_errors(location, "read", resolved, path), resolved.open_input_stream(path) as stream:
        return stream.read()


def write_json(location: Location, data: Any, *, filesystem: pafs.FileSystem | None = None) -> None:
    """Write ``data`` as indented UTF-8 JSON."""
    write_bytes(location, json.dumps(data, indent=2).encode("utf-8"), filesystem=filesystem)


def read_json(location: Location, *, filesystem: pafs.FileSystem | None = None) -> Any:
    """Read a JSON file or object.

    Raises:
        StorageError: If the content is not valid JSON.
    """
    data = read_bytes(location, filesystem=filesystem)
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise StorageError(f"{_display(location)!r} is not valid JSON: {error}") from error


def write_parquet(table: pa.Table, location: Location, *, filesystem: pafs.FileSystem | None = None) -> None:
    """Write an Arrow table as one Parquet file."""
    resolved, path = resolve(location, filesystem=filesystem)
    with _storage_errors(location, "write", resolved, path):
        _make_parent(resolved, path)
        pq.write_table(table, path, filesystem=resolved)


def read_parquet(
    location: Location, *, columns: list[str] | None = None, filesystem: pafs.FileSystem | None = None
) -> pa.Table:
    """Read a Parquet file, or every Parquet file below a folder or prefix, into one Arrow table."""
    resolved, path = resolve(location, filesystem=filesystem)
    with _storage_errors(location, "read", resolved, path):
        return pq.read_table(path, columns=columns, filesystem=resolved)


def upload(source: str | Path, location: Location, *, filesystem: pafs.FileSystem | None = None) -> None:
    """Copy a local file, or a local folder with everything below it, to ``location``.

    Raises:
        StorageNotFoundError: If ``source`` or the target bucket does not exist.
    """
    source = Path(source).resolve()
    if not source.exists():
        raise StorageNotFoundError(f"failed to upload {source}: no such file or folder")
    resolved, path = resolve(location, filesystem=filesystem)
    with _storage_errors(location, "write", resolved, path):
        if source.is_file():
            _make_parent(resolved, path)
        elif isinstance(resolved, pafs.LocalFileSystem):
            resolved.create_dir(path, recursive=True)
        pafs.copy_files(str(source), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=resolved)
    logger.info("copied %s to %s", source, _display(location))


def download(location: Location, target: str | Path, *, filesystem: pafs.FileSystem | None = None) -> Path:
    """Copy a file, or a folder or prefix with everything below it, from ``location`` to a local path.

    Returns:
        The local path written.

    Raises:
        StorageNotFoundError: If nothing exists at ``location``.
    """
    resolved, path = resolve(location, filesystem=filesystem)
    target = Path(target).resolve()
    with _storage_errors(location, "read", resolved, path):
        kind = resolved.get_file_info(path).type
        if kind == pafs.FileType.NotFound:
            raise StorageNotFoundError(f"failed to read {_display(location)!r}: no file or folder there")
        (target if kind == pafs.FileType.Directory else target.parent).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(target), source_filesystem=resolved, destination_filesystem=pafs.LocalFileSystem(),
                        chunk_size=DOWNLOAD_CHUNK_BYTES)
    logger.info("copied %s to %s", _display(location), target)
    return target


def location_name(location: Location) -> str:
    """Return the last path segment of a location, without a URI's query options.

    ``location_name("s3://bucket/runs/best.pt?region=eu-west-1")`` is ``"best.pt"``.
    """
    if not _scheme(location):
        return Path(location).name
    base = str(location).partition("?")[0].rstrip("/")
    return base.rsplit("/", 1)[-1] if "/" in base.split("://", 1)[1] else ""


def parent_location(location: Location) -> str:
    """Return the folder or prefix that contains a location, keeping a URI's scheme and query options.

    Raises:
        InvalidURIError: If the URI names only a bucket, which has no parent.
    """
    if not _scheme(location):
        return str(Path(location).parent)
    base, separator, query = str(location).partition("?")
    scheme, _, rest = base.rstrip("/").partition("://")
    if "/" not in rest:
        raise InvalidURIError(f"storage URI {_display(location)!r} names a bucket, which has no parent folder")
    return f"{scheme}://{rest.rsplit('/', 1)[0]}" + (f"?{query}" if separator else "")
