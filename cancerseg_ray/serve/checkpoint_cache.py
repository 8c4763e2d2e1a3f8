"""Local copies of checkpoints that live in an object store.

Training and evaluation on a cluster write checkpoints and ``best.json`` to
``s3://`` or ``gs://``. Torch loads only local files, so every process that
loads the model (the driver, each Serve replica, each batch actor) downloads
the checkpoint once into a cache folder on its node. A copy already in the
cache is reused when its SHA-256 equals the expected one, so processes on the
same node share one download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from pathlib import Path

from cancerseg_ray import storage
from cancerseg_ray.errors import CheckpointError
from cancerseg_ray.train.checkpoint import file_digest

logger = logging.getLogger(__name__)

CACHE_FOLDER = "cancerseg-checkpoints"
"""Name of the default cache folder inside the system's temporary folder."""


def default_cache_dir() -> Path:
    """Return the cache folder used when the model settings give none."""
    return Path(tempfile.gettempdir()) / CACHE_FOLDER


def cached_checkpoint(location: str, *, cache_dir: str | Path | None = None,
                      expected_sha256: str | None = None) -> Path:
    """Return a local copy of the checkpoint at an object-store URI, downloading it if needed.

    The copy lives at ``<cache_dir>/<hash of the URI>/<file name>``. With
    ``expected_sha256``, a copy already there with that digest is reused and a
    fresh download must match it. Without it, the file is always downloaded,
    because the object may have changed since the copy was made. Downloads go to
    a temporary name and are renamed when complete, so processes that download
    at the same time never read half a file.

    NOTE: the cache is never pruned; remove old copies by hand.

    Args:
        location: ``s3://`` or ``gs://`` URI of a checkpoint file.
        cache_dir: Cache folder; default ``cancerseg-checkpoints`` in the temporary folder.
        expected_sha256: SHA-256 the file must have, from ``best.json`` or from the driver.

    Returns:
        The local checkpoint file.

    Raises:
        CheckpointError: If the download fails or the file has another SHA-256.
    """
    name = storage.location_name(location) or "checkpoint.pt"
    # The query stays in the key, so the same key on two endpoints gets two cache entries.
    key = hashlib.sha256(location.encode("utf-8")).hexdigest()[:24]
    target = Path(cache_dir or default_cache_dir()) / key / name
    if expected_sha256 is not None and target.is_file() and file_digest(target) == expected_sha256:
        logger.info("using the cached copy %s of %s", target, storage.redact(location))
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{name}.partial-{uuid.uuid4().hex}")
    try:
        storage.download(location, partial)
        digest = file_digest(partial)
        if expected_sha256 is not None and digest != expected_sha256:
            raise CheckpointError(
                f"checkpoint {storage.redact(location)} has SHA-256 {digest}, expected {expected_sha256}; "
                "it changed after evaluation or after the job started. Evaluate again or restart the job."
            )
        os.replace(partial, target)
    except storage.StorageError as error:
        raise CheckpointError(f"failed to download the checkpoint {storage.redact(location)}: {error}") from error
    finally:
        if partial.is_file():
            partial.unlink()
    logger.info("downloaded %s to %s", storage.redact(location), target)
    return target
