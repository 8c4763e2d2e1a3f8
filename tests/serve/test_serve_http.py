"""The HTTP API on a local Ray Serve bound to 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openslide
import pytest
from PIL import Image
from ray import serve

from cancerseg_ray.serve.app import build_app
from cancerseg_ray.serve.config import ModelSource, ScoringConfig, ServeConfig
from cancerseg_ray.serve.inference import segment_image
from cancerseg_ray.train.checkpoint import file_digest
from tests.serve.conftest import CMU_SLIDE, MODEL_MPP, TILE_SIZE

pytestmark = pytest.mark.ray

MAX_TILE_BYTES = 512 * 1024
MAX_TILE_SIDE = 512
MAX_SLIDE_BYTES = 3 * 1024 * 1024
JOB_DEADLINE_S = 300


@dataclass
class Server:
    client: httpx.Client
    root: Path
    config: ServeConfig


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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

    config = ServeConfig(
        model=ModelSource(best_file=best_file, device="cpu"),
        data_root=root,
        output_root=tmp_path_factory.mktemp("serve_output"),
        max_tile_upload_bytes=MAX_TILE_BYTES,
        max_tile_side=MAX_TILE_SIDE,
        max_slide_upload_bytes=MAX_SLIDE_BYTES,
        ingress_num_cpus=0.5,
        num_cpus_per_replica=1,
        scoring=ScoringConfig(simplify_tolerance_px=0.0),
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="cancerseg-test", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        yield Server(client=client, root=root, config=config)
    serve.shutdown()


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
    for case, response, status, fragment in bad_requests(server):
        assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
        assert fragment in response.json()["detail"], f"{case}: {response.text}"
        assert server.client.get("/v1/health").status_code == 200, f"server down after {case}"
    response = server.client.post("/v1/tiles/segment", content=png(cmu_tile), headers={"Content-Type": "image/png"})
    assert response.status_code == 200


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
