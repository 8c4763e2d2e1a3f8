"""The HTTP API on a local Ray Serve bound to 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image
from ray import serve

from cancerseg_ray.errors import ConfigError
from cancerseg_ray.serve.app import build_app
from cancerseg_ray.serve.config import ModelSource, ScoringConfig, ServeConfig
from cancerseg_ray.serve.inference import segment_image
from cancerseg_ray.serve.jobs import UPLOAD_FOLDER, JobState, JobStore
from cancerseg_ray.train.checkpoint import file_digest
from tests.serve.conftest import CMU_SLIDE, MODEL_MPP, TCGA_SLIDE, TILE_SIZE
from tests.serve.test_serve_security import png_without_pixels

pytestmark = pytest.mark.ray

MAX_TILE_BYTES = 512 * 1024
MAX_TILE_SIDE = 512
MAX_SLIDE_BYTES = 3 * 1024 * 1024
# Above the CMU slide's 277 x 371 grid, below the 1024 x 1024 grid of coarse.tif.
MAX_GRID_PIXELS = 1_000_000
JOB_DEADLINE_S = 300
# A 512-pixel image tagged with 84.67 µm/px, as a TIFF writer with a wrong resolution unit may store it:
# at the model's 4 µm/px it would be enlarged about 21 times onto a 10838 x 10838 grid.
BOGUS_MPP = 84.67
BOGUS_GRID_SIDE = 10838
# Enlarged 2 times, within max_slide_upsampling, onto a 1024 x 1024 grid over MAX_GRID_PIXELS.
COARSE_MPP = 8.0


@dataclass
class Server:
    client: httpx.Client
    root: Path
    config: ServeConfig
    interrupted_jobs: dict[str, str]
    finished_job: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_tagged_tiff(path: Path, mpp: float, side: int = 512) -> None:
    """Write a plain RGB TIFF of a pink square on white whose resolution tags claim ``mpp`` µm/px."""
    image = np.full((side, side, 3), 240, dtype=np.uint8)
    image[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = (200, 90, 160)
    tifffile.imwrite(path, image, photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")


def seed_interrupted_jobs(output_root: Path) -> tuple[dict[str, str], str]:
    """Leave jobs on disk as a server that stopped mid-job does; returns ({job id: state}, finished job id)."""
    store = JobStore(output_root)
    interrupted = {}
    for state in (JobState.QUEUED, JobState.RUNNING):
        status = store.new_job("left.svs")
        upload = store.folder(status.job_id) / UPLOAD_FOLDER / "left.svs"
        upload.parent.mkdir()
        upload.write_bytes(b"II*\x00" + b"0" * 64)
        store.update(status, state=state)
        interrupted[status.job_id] = state.value
    finished = store.new_job("done.svs")
    store.update(finished, state=JobState.FAILED, error="an earlier failure")
    return interrupted, finished.job_id


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(ray_start_4_cpus, tmp_path_factory, best_file):
    root = tmp_path_factory.mktemp("data_root")
    shutil.copy(CMU_SLIDE, root / "cmu.svs")
    (root / "corrupt.svs").write_bytes(CMU_SLIDE.read_bytes()[:4096])
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(CMU_SLIDE, outside / "secret.svs")
    (root / "link.svs").symlink_to(outside / "secret.svs")
    write_tagged_tiff(root / "bogus.tif", BOGUS_MPP)
    write_tagged_tiff(root / "coarse.tif", COARSE_MPP)
    shutil.copy(TCGA_SLIDE, root / "no_resolution.svs")

    output_root = tmp_path_factory.mktemp("serve_output")
    interrupted, finished = seed_interrupted_jobs(output_root)
    config = ServeConfig(
        model=ModelSource(best_file=best_file, device="cpu"),
        data_root=root,
        output_root=output_root,
        max_tile_upload_bytes=MAX_TILE_BYTES,
        max_tile_side=MAX_TILE_SIDE,
        max_slide_upload_bytes=MAX_SLIDE_BYTES,
        max_slide_grid_pixels=MAX_GRID_PIXELS,
        ingress_num_cpus=0.5,
        num_cpus_per_replica=1,
        scoring=ScoringConfig(simplify_tolerance_px=0.0),
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="cancerseg-test", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        yield Server(client=client, root=root, config=config, interrupted_jobs=interrupted, finished_job=finished)
    serve.shutdown()


def job_folders(server: Server) -> set[str]:
    return {path.name for path in (server.config.output_root / "jobs").iterdir()}


def wait_for_job(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_DEADLINE_S
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["state"] in ("succeeded", "failed"):
            return status
        time.sleep(1.0)
    pytest.fail(f"job {job_id} did not finish within {JOB_DEADLINE_S} s: {status}")


def test_health_and_metadata(server, best_file, model_info):
    assert server.client.get("/v1/health").json() == {"status": "ok"}
    metadata = server.client.get("/v1/model").json()
    assert metadata["variant"] == "deeplabv3plus_resnet50"
    assert metadata["class_names"] == ["background", "tumour"]
    assert metadata["colours"] == [[240, 240, 240], [200, 30, 30]]
    assert metadata["checkpoint_sha256"] == file_digest(model_info.checkpoint)
    assert metadata["mpp"] == MODEL_MPP
    assert metadata["tile_size"] == TILE_SIZE
    assert "/" not in metadata["checkpoint_file"]


def test_segment_real_tile(server, cmu_tile, predictor):
    response = server.client.post("/v1/tiles/segment", content=png(cmu_tile), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(response.content)))
    assert mask.shape == (256, 256)
    assert set(np.unique(mask)) <= {0, 1}
    local = segment_image(cmu_tile, predict=predictor.predict, num_classes=2, tile_size=TILE_SIZE,
                          config=server.config.scoring).argmax(axis=0)
    assert (mask == local).mean() > 0.999


def test_segment_tile_with_probabilities(server, cmu_tile):
    response = server.client.post("/v1/tiles/segment", params={"probabilities": "true"}, content=png(cmu_tile),
                                  headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    probabilities = np.load(io.BytesIO(base64.b64decode(body["probabilities"]["npy_base64"])), allow_pickle=False)
    assert probabilities.shape == (2, 256, 256)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
    assert (mask == probabilities.argmax(axis=0)).mean() > 0.999


def test_segment_tile_resampled_to_model_resolution(server, cmu_tile):
    """A 1 µm/px upload is shrunk to the model's 4 µm/px, predicted, and the mask returned at upload size."""
    response = server.client.post("/v1/tiles/segment", params={"mpp": 1.0}, content=png(cmu_tile),
                                  headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert np.asarray(Image.open(io.BytesIO(response.content))).shape == (256, 256)


def bad_requests(server: Server) -> list[tuple[str, httpx.Response, int, str]]:
    client = server.client
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    return [
        ("dot-dot path", client.post("/v1/slides/score", json={"path": "../outside/secret.svs"}), 403,
         "outside the data root"),
        ("symlink path", client.post("/v1/slides/score", json={"path": "link.svs"}), 403, "outside the data root"),
        ("absolute path", client.post("/v1/slides/score", json={"path": "/etc/passwd"}), 403, "outside the data root"),
        ("missing slide", client.post("/v1/slides/score", json={"path": "nope.svs"}), 404, "not found"),
        ("corrupt slide", client.post("/v1/slides/score", json={"path": "corrupt.svs"}), 422, "corrupt.svs"),
        ("oversized tile", client.post("/v1/tiles/segment", content=b"\x89PNG\r\n\x1a\n" + b"0" * MAX_TILE_BYTES,
                                       headers={"Content-Type": "image/png"}), 413, "limit"),
        ("wrong content type", client.post("/v1/tiles/segment", content=b"hello",
                                           headers={"Content-Type": "text/plain"}), 415, "text/plain"),
        ("type mismatch", client.post("/v1/tiles/segment", content=jpeg.getvalue(),
                                      headers={"Content-Type": "image/png"}), 415, "not image/png"),
        ("undecodable image", client.post("/v1/tiles/segment", content=b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
                                          headers={"Content-Type": "image/png"}), 400, "cannot be decoded"),
        ("decompression bomb", client.post("/v1/tiles/segment", content=png_without_pixels(30000, 30000),
                                           headers={"Content-Type": "image/png"}), 422,
         f"limit of {MAX_TILE_SIDE} pixels per side (max_tile_side"),
        ("too large dimensions", client.post("/v1/tiles/segment", content=png(np.zeros((600, 16, 3), np.uint8)),
                                             headers={"Content-Type": "image/png"}), 422, "16x600"),
        ("empty body", client.post("/v1/tiles/segment", content=b"", headers={"Content-Type": "image/png"}), 400,
         "empty"),
        ("unknown job", client.get(f"/v1/jobs/{'0' * 32}"), 404, "unknown job id"),
        ("malformed job id", client.get("/v1/jobs/not-a-job"), 404, "32 hexadecimal"),
        ("unsafe upload name", client.post("/v1/slides/upload", params={"filename": "..x/../a.svs"}, content=b"II*\x00",
                                           headers={"Content-Type": "application/octet-stream"}), 400, "file name"),
        ("non-TIFF upload", client.post("/v1/slides/upload", params={"filename": "a.svs"}, content=b"PK\x03\x04" * 8,
                                        headers={"Content-Type": "application/octet-stream"}), 415, "TIFF"),
        ("oversized slide", client.post("/v1/slides/upload", params={"filename": "a.svs"},
                                        content=b"II*\x00" + b"0" * MAX_SLIDE_BYTES,
                                        headers={"Content-Type": "application/octet-stream"}), 413, "limit"),
        ("slide content type", client.post("/v1/slides/upload", params={"filename": "a.svs"}, content=b"II*\x00",
                                           headers={"Content-Type": "text/html"}), 415, "text/html"),
    ]


def test_bad_requests_get_4xx_and_server_keeps_serving(server, cmu_tile):
    folders_before = job_folders(server)
    for case, response, status, fragment in bad_requests(server):
        assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
        assert fragment in response.json()["detail"], f"{case}: {response.text}"
        assert server.client.get("/v1/health").status_code == 200, f"server down after {case}"
    response = server.client.post("/v1/tiles/segment", content=png(cmu_tile), headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    assert job_folders(server) == folders_before, "a rejected request left a job folder"


def validation_requests(client: httpx.Client) -> list[tuple[str, httpx.Response, list[str]]]:
    tile = {"content": png(np.zeros((32, 32, 3), np.uint8)), "headers": {"Content-Type": "image/png"}}
    return [
        ("malformed JSON", client.post("/v1/slides/score", content=b'{"path": ',
                                       headers={"Content-Type": "application/json"}), ["not valid JSON"]),
        ("missing body", client.post("/v1/slides/score", headers={"Content-Type": "application/json"}),
         ["body is missing"]),
        ("missing path", client.post("/v1/slides/score", json={"mpp_override": 0.5}), ["body.path", "Field required"]),
        ("wrong path type", client.post("/v1/slides/score", json={"path": 3}), ["body.path", "valid string", "got 3"]),
        ("wrong override type", client.post("/v1/slides/score", json={"path": "cmu.svs", "mpp_override": "fine"}),
         ["body.mpp_override", "'fine'"]),
        ("zero override", client.post("/v1/slides/score", json={"path": "cmu.svs", "mpp_override": 0}),
         ["body.mpp_override", "greater than 0"]),
        ("unknown field", client.post("/v1/slides/score", json={"path": "cmu.svs", "mpp": 0.5}),
         ["body.mpp: unknown field", "path, mpp_override"]),
        ("zero tile mpp", client.post("/v1/tiles/segment", params={"mpp": 0}, **tile),
         ["query.mpp", "greater than 0", "got '0'"]),
        ("non-boolean probabilities", client.post("/v1/tiles/segment", params={"probabilities": "maybe"}, **tile),
         ["query.probabilities", "valid boolean", "'maybe'"]),
        ("upload without file name", client.post("/v1/slides/upload", content=b"II*\x00",
                                                 headers={"Content-Type": "image/tiff"}),
         ["query.filename", "Field required"]),
    ]


def test_validation_errors_are_readable_strings(server):
    folders_before = job_folders(server)
    for case, response, fragments in validation_requests(server.client):
        assert response.status_code == 422, f"{case}: {response.status_code} {response.text}"
        detail = response.json()["detail"]
        assert isinstance(detail, str), f"{case}: {response.text}"
        for fragment in fragments:
            assert fragment in detail, f"{case}: {fragment!r} not in {detail!r}"
        assert detail.endswith("described at /docs."), f"{case}: {detail}"
    assert job_folders(server) == folders_before, "a rejected request left a job folder"


def test_implausible_resolution_rejected_before_job(server):
    folders_before = job_folders(server)
    response = server.client.post("/v1/slides/score", json={"path": "bogus.tif"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "slide bogus.tif at 84.67 µm/px (from its metadata)" in detail
    assert f"model's {MODEL_MPP:g} µm/px" in detail
    assert f"{BOGUS_GRID_SIDE} x {BOGUS_GRID_SIDE} pixel grid" in detail
    assert "21.2 times" in detail
    assert "max_slide_upsampling" in detail
    assert "mpp_override field of the request body" in detail

    upload = server.client.post("/v1/slides/upload", params={"filename": "bogus.tif"},
                                content=(server.root / "bogus.tif").read_bytes(),
                                headers={"Content-Type": "image/tiff"})
    assert upload.status_code == 422, upload.text
    assert "max_slide_upsampling" in upload.json()["detail"]
    assert "mpp_override query parameter" in upload.json()["detail"]
    assert job_folders(server) == folders_before


def test_grid_pixel_limit_rejects_slide(server):
    response = server.client.post("/v1/slides/score", json={"path": "coarse.tif"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "1024 x 1024 pixel grid of 1,048,576 pixels" in detail
    assert f"limit is {MAX_GRID_PIXELS:,} pixels (max_slide_grid_pixels setting)" in detail
    assert "mpp_override" in detail


def test_mpp_override_fixes_bogus_resolution(server):
    """At 0.5 µm/px the 512-pixel image shrinks onto a 64 x 64 grid: one tile, reported as progress."""
    response = server.client.post("/v1/slides/score", json={"path": "bogus.tif", "mpp_override": 0.5})
    assert response.status_code == 202, response.text
    status = wait_for_job(server.client, response.json()["job_id"])
    assert status["state"] == "succeeded", status
    assert (status["result"]["grid_width"], status["result"]["grid_height"]) == (64, 64)
    assert status["result"]["tiles_scored"] == 1
    assert status["tiles_total"] == 1
    assert status["tiles_done"] == status["tiles_total"]


def test_missing_resolution_points_at_request_field(server):
    response = server.client.post("/v1/slides/score", json={"path": "no_resolution.svs"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "no_resolution.svs" in detail
    assert "as the mpp_override field of the request body" in detail
    assert "open_slide" not in detail
    assert "--mpp" not in detail


def test_interrupted_jobs_failed_at_startup(server):
    for job_id, state in server.interrupted_jobs.items():
        status = server.client.get(f"/v1/jobs/{job_id}").json()
        assert status["state"] == "failed", f"{state} job: {status}"
        assert "server stopped before the job finished" in status["error"]
        assert "submit the slide again" in status["error"]
        assert not (server.config.output_root / "jobs" / job_id / UPLOAD_FOLDER).exists(), f"{state} job upload"
    finished = server.client.get(f"/v1/jobs/{server.finished_job}").json()
    assert finished["error"] == "an earlier failure"


def test_missing_data_root_fails_build(tmp_path, best_file):
    missing = tmp_path / "nowhere" / "data"
    config = ServeConfig(model=ModelSource(best_file=best_file, device="cpu"), data_root=missing,
                         output_root=tmp_path / "output")
    with pytest.raises(ConfigError, match=re.escape(f"data_root {missing} is not an existing folder")):
        build_app(config)


def check_finished_job(server: Server, status: dict) -> None:
    assert status["state"] == "succeeded", status
    result = status["result"]
    assert (result["grid_width"], result["grid_height"]) == (277, 371)
    assert sum(area["fraction_of_tissue"] for area in result["areas"]) == pytest.approx(1.0)
    job_id = status["job_id"]
    geojson = server.client.get(f"/v1/jobs/{job_id}/files/annotations.geojson")
    assert geojson.status_code == 200
    assert json.loads(geojson.content)["type"] == "FeatureCollection"
    tiff = server.client.get(f"/v1/jobs/{job_id}/files/mask.tiff")
    assert tiff.status_code == 200
    path = server.config.output_root / "downloaded.tiff"
    path.write_bytes(tiff.content)
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == (277, 371)
    assert server.client.get(f"/v1/jobs/{job_id}/files/status.json").status_code == 404
    assert server.client.get(f"/v1/jobs/{job_id}/files/..%2Fstatus.json").status_code == 404


def test_score_slide_by_path(server):
    response = server.client.post("/v1/slides/score", json={"path": "cmu.svs"})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['job_id']}"
    check_finished_job(server, wait_for_job(server.client, response.json()["job_id"]))


def test_score_slide_upload(server):
    response = server.client.post("/v1/slides/upload", params={"filename": "uploaded.svs"},
                                  content=CMU_SLIDE.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 202, response.text
    status = wait_for_job(server.client, response.json()["job_id"])
    check_finished_job(server, status)
    assert status["slide"] == "uploaded.svs"
    upload_folder = server.config.output_root / "jobs" / status["job_id"] / "upload"
    assert not any(upload_folder.iterdir()), "the uploaded slide is deleted after scoring"
