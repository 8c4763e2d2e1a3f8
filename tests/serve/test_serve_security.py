"""Request checks: paths under the data root, upload limits, content types and job ids."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from cancerseg_ray.serve.jobs import (
    INTERRUPTED_ERROR,
    STALE_JOB_S,
    STATUS_FILE,
    UPLOAD_FOLDER,
    JobState,
    JobStore,
)
from cancerseg_ray.serve.security import (
    NotFoundError,
    PathOutsideRootError,
    PayloadTooLargeError,
    RequestError,
    UnprocessableError,
    UnsupportedMediaTypeError,
    check_content_length,
    decode_tile,
    media_type,
    read_limited,
    resolve_under_root,
    safe_upload_name,
)


def encode(image: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "TIFF":
        tifffile.imwrite(buffer, image)
    else:
        Image.fromarray(image).save(buffer, format=kind)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_without_pixels(width: int, height: int) -> bytes:
    """Return a PNG that declares an 8-bit RGB image of the given size and has an empty IDAT chunk."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b"")


def test_path_inside_root_resolves(data_root):
    assert resolve_under_root(data_root, "cmu.svs") == (data_root / "cmu.svs").resolve()
    assert resolve_under_root(data_root, str(data_root / "cmu.svs")) == (data_root / "cmu.svs").resolve()
    assert resolve_under_root(data_root, "sub/../cmu.svs") == (data_root / "cmu.svs").resolve()


@pytest.mark.parametrize("requested", ["../outside.svs", "../../etc/passwd", "/etc/passwd"])
def test_path_outside_root_rejected(data_root, requested):
    (data_root.parent / "outside.svs").write_bytes(b"II*\x00")
    with pytest.raises(PathOutsideRootError, match="outside the data root"):
        resolve_under_root(data_root, requested)


def test_symlink_out_of_root_rejected(data_root, tmp_path):
    secret = tmp_path / "elsewhere" / "secret.svs"
    secret.parent.mkdir()
    secret.write_bytes(b"II*\x00")
    (data_root / "link.svs").symlink_to(secret)
    (data_root / "linked_folder").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(PathOutsideRootError):
        resolve_under_root(data_root, "link.svs")
    with pytest.raises(PathOutsideRootError):
        resolve_under_root(data_root, "linked_folder/secret.svs")


def test_symlink_inside_root_allowed(data_root):
    (data_root / "alias.svs").symlink_to(data_root / "cmu.svs")
    assert resolve_under_root(data_root, "alias.svs") == (data_root / "cmu.svs").resolve()


def test_missing_data_root_named_in_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="data root is missing"):
        resolve_under_root(tmp_path / "nowhere", "cmu.svs")


def test_missing_slide_not_found(data_root):
    with pytest.raises(NotFoundError, match="nope.svs"):
        resolve_under_root(data_root, "nope.svs")
    with pytest.raises(RequestError, match="invalid slide path"):
        resolve_under_root(data_root, "")


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "TIFF"])
def test_decode_tile_formats(cmu_tile, kind):
    declared = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff"}[kind]
    decoded = decode_tile(encode(cmu_tile, kind), declared, max_side=512)
    assert decoded.shape == (256, 256, 3)
    assert decoded.dtype == np.uint8
    if kind != "JPEG":
        np.testing.assert_array_equal(decoded, cmu_tile)


def test_decode_greyscale_tile_becomes_rgb(cmu_tile):
    decoded = decode_tile(encode(cmu_tile[:, :, 0], "PNG"), "image/png", max_side=512)
    assert decoded.shape == (256, 256, 3)


def test_decode_rejects_mismatched_type(cmu_tile):
    with pytest.raises(UnsupportedMediaTypeError, match="not image/png"):
        decode_tile(encode(cmu_tile, "JPEG"), "image/png", max_side=512)


def test_decode_rejects_truncated_image(cmu_tile):
    with pytest.raises(RequestError, match="cannot be decoded"):
        decode_tile(encode(cmu_tile, "PNG")[:200], "image/png", max_side=512)
    with pytest.raises(RequestError, match="cannot be decoded"):
        decode_tile(b"II*\x00" + b"\x00" * 20, "image/tiff", max_side=512)


def test_decode_rejects_large_dimensions_before_decoding(cmu_tile):
    large = np.zeros((600, 20, 3), dtype=np.uint8)
    for kind, declared in (("PNG", "image/png"), ("TIFF", "image/tiff")):
        with pytest.raises(UnprocessableError, match="20x600"):
            decode_tile(encode(large, kind), declared, max_side=512)


def test_decode_rejects_decompression_bomb():
    """A PNG header declaring 30000 x 30000 pixels is rejected as too large, before any pixel is read.

    Pillow's own limit or the side check rejects it, depending on whether
    ``cancerseg_ray.io.images`` (which raises Pillow's limit) was imported first.
    """
    with pytest.raises(UnprocessableError, match=r"limit of 512 pixels per side \(max_tile_side setting\)"):
        decode_tile(png_without_pixels(30000, 30000), "image/png", max_side=512)


def test_decode_rejects_16_bit_tiff():
    with pytest.raises(UnprocessableError, match="8-bit"):
        decode_tile(encode(np.zeros((8, 8, 3), dtype=np.uint16), "TIFF"), "image/tiff", max_side=512)


def test_media_type_checks():
    assert media_type("image/png; charset=binary", ("image/png",)) == "image/png"
    with pytest.raises(UnsupportedMediaTypeError, match="text/plain"):
        media_type("text/plain", ("image/png",))
    with pytest.raises(UnsupportedMediaTypeError, match="missing"):
        media_type(None, ("image/png",))


def test_upload_size_limits():
    check_content_length("100", 100)
    with pytest.raises(PayloadTooLargeError, match="101 bytes"):
        check_content_length("101", 100)
    with pytest.raises(RequestError, match="not an integer"):
        check_content_length("lots", 100)

    async def chunks(sizes):
        for size in sizes:
            yield b"x" * size

    assert len(asyncio.run(read_limited(chunks([40, 60]), 100))) == 100
    with pytest.raises(PayloadTooLargeError):
        asyncio.run(read_limited(chunks([40, 61]), 100))
    with pytest.raises(RequestError, match="empty"):
        asyncio.run(read_limited(chunks([]), 100))


@pytest.mark.parametrize("name", ["../x.svs", "a/b.svs", ".hidden.svs", "slide.exe", "sl ide.svs", ""])
def test_unsafe_upload_names_rejected(name):
    with pytest.raises(RequestError):
        safe_upload_name(name)


def test_safe_upload_name_accepted():
    assert safe_upload_name("case_01.svs") == "case_01.svs"


def test_job_store_lifecycle(tmp_path):
    store = JobStore(tmp_path)
    status = store.new_job("cmu.svs")
    assert store.get(status.job_id).state is JobState.QUEUED
    store.update(status, state=JobState.FAILED, error="boom")
    assert store.get(status.job_id).error == "boom"
    with pytest.raises(NotFoundError, match="unknown job id"):
        store.get("0" * 32)
    with pytest.raises(NotFoundError, match="32 hexadecimal"):
        store.get("../../etc")


def age_status_file(store: JobStore, job_id: str, seconds: float) -> None:
    path = store.folder(job_id) / STATUS_FILE
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_fail_interrupted_spares_live_jobs(tmp_path):
    """Only unfinished jobs of other stores whose status file went stale are failed, and their uploads deleted."""
    previous = JobStore(tmp_path)
    stale = previous.update(previous.new_job("stale.svs"), state=JobState.RUNNING)
    upload = previous.folder(stale.job_id) / UPLOAD_FOLDER / "stale.svs"
    upload.parent.mkdir()
    upload.write_bytes(b"II*\x00")
    fresh = previous.new_job("fresh.svs")
    finished = previous.update(previous.new_job("done.svs"), state=JobState.SUCCEEDED)
    for job_id in (stale.job_id, finished.job_id):
        age_status_file(previous, job_id, 2 * STALE_JOB_S)

    current = JobStore(tmp_path)
    own = current.new_job("own.svs")
    age_status_file(current, own.job_id, 2 * STALE_JOB_S)
    assert current.fail_interrupted(older_than_s=STALE_JOB_S) == [stale.job_id]
    failed = current.get(stale.job_id)
    assert failed.state is JobState.FAILED
    assert failed.error == INTERRUPTED_ERROR
    assert not upload.parent.exists()
    assert current.get(fresh.job_id).state is JobState.QUEUED
    assert current.get(finished.job_id).state is JobState.SUCCEEDED
    assert current.get(own.job_id).state is JobState.QUEUED


def test_fail_interrupted_at_zero_age_fails_all_unfinished(tmp_path):
    previous = JobStore(tmp_path)
    queued = previous.new_job("queued.svs")
    running = previous.update(previous.new_job("running.svs"), state=JobState.RUNNING)
    assert sorted(JobStore(tmp_path).fail_interrupted(older_than_s=0.0)) == sorted([queued.job_id, running.job_id])


def test_heartbeat_keeps_own_jobs_fresh(tmp_path):
    store = JobStore(tmp_path)
    status = store.new_job("cmu.svs")
    age_status_file(store, status.job_id, 2 * STALE_JOB_S)
    store.heartbeat()
    assert JobStore(tmp_path).fail_interrupted(older_than_s=STALE_JOB_S) == []
    assert store.get(status.job_id).state is JobState.QUEUED


def test_job_store_delete_removes_folder(tmp_path):
    store = JobStore(tmp_path)
    status = store.new_job("cmu.svs")
    store.delete(status.job_id)
    assert not store.folder(status.job_id).exists()
    with pytest.raises(NotFoundError, match="unknown job id"):
        store.get(status.job_id)
