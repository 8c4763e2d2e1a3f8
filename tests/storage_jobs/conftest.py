"""Fixtures of the storage tests of the jobs: an S3-compatible moto server on 127.0.0.1 and tiny GlaS shards.

The jobs reach the server through URIs of the form
``s3://bucket/key?endpoint_override=127.0.0.1:PORT&scheme=http&region=us-east-1``,
so every process that resolves them, Ray workers included, finds the endpoint
in the URI itself. Credentials cannot ride in the query (pyarrow rejects
``access_key`` there), so they come from ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``. These are set when pytest imports this file, which
happens during collection and so before the session's local Ray starts. Ray's
worker processes inherit the environment of the process that starts Ray.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pyarrow.fs as pafs
import pytest

from tests.conftest import ingest_tiny_glas

ACCESS_KEY = "test"
SECRET_KEY = "test"
REGION = "us-east-1"

# moto accepts any key; fixed values keep real credentials of the environment away from the test server.
os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
os.environ.pop("AWS_SESSION_TOKEN", None)
# Without this, a failed credential lookup would query the EC2 metadata address, which is not on this machine.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3-compatible moto server on 127.0.0.1 at a free port; yields ``host:port``."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3_uri(s3_endpoint) -> Callable[[str], str]:
    """Create a fresh bucket; return a function that turns a key into an ``s3://`` URI of it on the moto server."""
    filesystem = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", access_key=ACCESS_KEY,
                                   secret_key=SECRET_KEY, region=REGION, allow_bucket_creation=True)
    bucket = f"bucket-{uuid.uuid4().hex[:12]}"
    filesystem.create_dir(bucket)

    def uri(key: str) -> str:
        return f"s3://{bucket}/{key}?endpoint_override={s3_endpoint}&scheme=http&region={REGION}"

    return uri


@pytest.fixture(scope="module")
def tiny_shards(ray_start_4_cpus, module_tmp_path):
    """Six GlaS images at 2.48 um/px cut into 128-pixel tiles: 24 tiles in three splits, written locally."""
    return ingest_tiny_glas(module_tmp_path / "storage_shards")
