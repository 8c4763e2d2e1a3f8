"""Batch slide scoring with outputs, slides and the model in an s3:// bucket on a moto server.

One remote run scores a manifest of four slides: CMU-1-Small-Region.svs from a
local file and from the bucket, a truncated copy, and a URI with no object.
A local run of the same checkpoint scores CMU-1-Small-Region.svs for
comparison. Both use 128-pixel tiles at 4 µm/px, one actor each.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cancerseg_ray import storage
from cancerseg_ray.errors import CheckpointError
from cancerseg_ray.serve.batch import FAILED, SCORED, SKIPPED, SUMMARY_FILE, score_slides
from cancerseg_ray.serve.checkpoint_cache import cached_checkpoint
from cancerseg_ray.serve.config import BatchScoreConfig, ModelSource
from cancerseg_ray.serve.outputs import GEOJSON_FILE, MASK_TIFF, OVERLAY_PNG, RESULT_FILE
from cancerseg_ray.serve.predictor import TilePredictor, resolve_model
from cancerseg_ray.storage import StorageNotFoundError
from cancerseg_ray.train.checkpoint import file_digest
from jobs.score_slides import main as score_slides_main
from tests.serve.conftest import (
    CLASS_COLOURS,
    CLASS_NAMES,
    CMU_SLIDE,
    MODEL_MPP,
    TILE_SIZE,
    write_checkpoint,
)

SLIDE_FILES = (GEOJSON_FILE, MASK_TIFF, OVERLAY_PNG, RESULT_FILE, "tissue.png")


def best_record(checkpoint: str, sha256: str) -> dict:
    """Return a best.json record as the evaluation job writes it."""
    return {
        "dataset_name": "test", "checkpoint": checkpoint, "checkpoint_sha256": sha256,
        "variant": "deeplabv3plus_resnet50", "seed": 0,
        "class_map": {"class_names": CLASS_NAMES, "colours": CLASS_COLOURS, "ignore_index": 255},
        "mpp": MODEL_MPP, "tile_size": TILE_SIZE,
    }


@pytest.fixture(scope="module")
def local_model(module_tmp_path) -> tuple[Path, Path]:
    """A random two-class checkpoint and a local best.json naming it; returns (best.json, checkpoint)."""
    checkpoint = write_checkpoint(module_tmp_path / "run")
    best = module_tmp_path / "best.json"
    best.write_text(json.dumps(best_record(str(checkpoint), file_digest(checkpoint))))
    return best, checkpoint


@pytest.fixture(scope="module")
def remote_model(local_model, s3_uri) -> tuple[str, str]:
    """The checkpoint and a best.json naming it by URI, in the bucket; returns (best.json URI, checkpoint URI)."""
    _, checkpoint = local_model
    checkpoint_uri = s3_uri("runs/deeplabv3plus_resnet50/seed0/best.pt")
    storage.upload(checkpoint, checkpoint_uri)
    best_uri = s3_uri("report/best.json")
    storage.write_json(best_uri, best_record(checkpoint_uri, file_digest(checkpoint)))
    return best_uri, checkpoint_uri


@pytest.fixture(scope="module")
def manifest(module_tmp_path, s3_uri) -> Path:
    """A manifest of CMU (local and in the bucket), a truncated copy and a URI with no object behind it."""
    folder = module_tmp_path / "slides"
    folder.mkdir()
    shutil.copy(CMU_SLIDE, folder / "cmu.svs")
    (folder / "corrupt.svs").write_bytes(CMU_SLIDE.read_bytes()[:4096])
    storage.upload(CMU_SLIDE, s3_uri("slides/cmu_copy.svs"))
    path = folder / "slides.csv"
    pd.DataFrame({
        "path": ["cmu.svs", "corrupt.svs", s3_uri("slides/cmu_copy.svs"), s3_uri("slides/missing.svs")],
        "slide_id": ["cmu", "corrupt", "cmu_remote", "missing"],
    }).to_csv(path, index=False)
    return path


@dataclass
class Runs:
    """The remote and the local run of the scoring job."""

    remote_config: BatchScoreConfig
    remote_summary: pd.DataFrame
    local_dir: Path


@pytest.fixture(scope="module")
def runs(ray_start_4_cpus, module_tmp_path, local_model, remote_model, manifest, s3_uri) -> Runs:
    """Score the manifest to the bucket with the model from the bucket, and CMU alone to a local folder."""
    remote_config = BatchScoreConfig(
        model=ModelSource(best_file=remote_model[0], device="cpu", cache_dir=module_tmp_path / "cache"),
        manifest=manifest, output_dir=s3_uri("scores"), num_actors=1,
    )
    remote_summary = score_slides(remote_config).set_index("slide_id")

    local_slides = module_tmp_path / "local_slides"
    local_slides.mkdir()
    shutil.copy(CMU_SLIDE, local_slides / "cmu.svs")
    local_dir = module_tmp_path / "local_scores"
    score_slides(BatchScoreConfig(model=ModelSource(best_file=local_model[0], device="cpu"),
                                  slides_dir=local_slides, output_dir=local_dir, num_actors=1))
    return Runs(remote_config, remote_summary, local_dir)


def without_feature_ids(collection: dict) -> list[dict]:
    """Return the features of a GeoJSON collection without their ids, which are random UUIDs."""
    return [{key: value for key, value in feature.items() if key != "id"} for feature in collection["features"]]


def without_run_fields(result: dict) -> dict:
    """Drop the fields of result.json that differ between two runs of the same slide."""
    return {key: value for key, value in result.items() if key not in ("seconds", "slide_path", "slide_id")}


@pytest.mark.ray
@pytest.mark.slow
def test_remote_run_uploads_every_file(runs):
    output = runs.remote_config.output_dir
    assert runs.remote_summary.loc["cmu", "status"] == SCORED
    remote_files = storage.list_files(storage.join(output, "cmu"))
    local_files = sorted(path.name for path in (runs.local_dir / "cmu").iterdir())
    assert remote_files == local_files
    assert set(SLIDE_FILES) <= set(remote_files)
    assert storage.exists(storage.join(output, SUMMARY_FILE))


@pytest.mark.ray
@pytest.mark.slow
def test_remote_outputs_equal_local_run(runs):
    remote = storage.join(runs.remote_config.output_dir, "cmu")
    local = runs.local_dir / "cmu"
    remote_geojson = json.loads(storage.read_bytes(storage.join(remote, GEOJSON_FILE)))
    assert remote_geojson["features"]
    assert without_feature_ids(remote_geojson) == without_feature_ids(json.loads((local / GEOJSON_FILE).read_text()))
    remote_result = storage.read_json(storage.join(remote, RESULT_FILE))
    local_result = json.loads((local / RESULT_FILE).read_text())
    assert without_run_fields(remote_result) == without_run_fields(local_result)
    assert storage.read_bytes(storage.join(remote, MASK_TIFF)) == (local / MASK_TIFF).read_bytes()


@pytest.mark.ray
@pytest.mark.slow
def test_slide_from_bucket_scored_like_local_copy(runs, s3_uri):
    output = runs.remote_config.output_dir
    assert runs.remote_summary.loc["cmu_remote", "status"] == SCORED
    from_bucket = storage.read_json(storage.join(output, "cmu_remote", RESULT_FILE))
    from_file = storage.read_json(storage.join(output, "cmu", RESULT_FILE))
    assert from_bucket["slide_path"] == s3_uri("slides/cmu_copy.svs")
    assert without_run_fields(from_bucket) == without_run_fields(from_file)


@pytest.mark.ray
@pytest.mark.slow
def test_bad_slides_reported_failed(runs):
    summary = runs.remote_summary
    output = runs.remote_config.output_dir
    assert summary.loc["corrupt", "status"] == FAILED
    assert "corrupt.svs" in summary.loc["corrupt", "error"]
    assert summary.loc["missing", "status"] == FAILED
    assert "missing.svs" in summary.loc["missing", "error"]
    assert not storage.exists(storage.join(output, "corrupt", RESULT_FILE))
    assert not storage.exists(storage.join(output, "missing", RESULT_FILE))
    written = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(output, SUMMARY_FILE))))
    assert list(written["slide_id"]) == ["cmu", "cmu_remote", "corrupt", "missing"]
    assert list(written["status"]) == [SCORED, SCORED, FAILED, FAILED]


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_skips_and_uploads_nothing(runs, module_tmp_path):
    # Only the finished slides, so that no actor starts to retry the failed ones; tests/serve covers retries.
    finished = module_tmp_path / "slides" / "finished.csv"
    listed = pd.read_csv(runs.remote_config.manifest)
    listed[listed["slide_id"].isin(["cmu", "cmu_remote"])].to_csv(finished, index=False)
    rerun_config = runs.remote_config.model_copy(update={"manifest": finished})
    slide = storage.join(runs.remote_config.output_dir, "cmu")
    files_before = storage.list_files(slide)
    result_before = storage.read_bytes(storage.join(slide, RESULT_FILE))
    overlay = storage.join(slide, OVERLAY_PNG)
    original_overlay = storage.read_bytes(overlay)
    # A re-upload would overwrite this marker with the real overlay.
    storage.write_bytes(overlay, b"marker")
    try:
        second = score_slides(rerun_config).set_index("slide_id")
        assert second.loc["cmu", "status"] == SKIPPED
        assert second.loc["cmu_remote", "status"] == SKIPPED
        assert storage.read_bytes(overlay) == b"marker"
        assert storage.read_bytes(storage.join(slide, RESULT_FILE)) == result_before
        assert storage.list_files(slide) == files_before
        first_area = runs.remote_summary.loc["cmu", "tumour_area_um2"]
        assert second.loc["cmu", "tumour_area_um2"] == pytest.approx(first_area)
    finally:
        storage.write_bytes(overlay, original_overlay)


def test_missing_bucket_fails_before_scoring(local_model, manifest, s3_endpoint):
    output = f"s3://no-such-bucket-{s3_endpoint.split(':')[1]}/scores?endpoint_override={s3_endpoint}&scheme=http"
    config = BatchScoreConfig(model=ModelSource(best_file="/nonexistent/best.json"), manifest=manifest,
                              output_dir=output)
    # The model path is wrong too: the bucket check must come first.
    with pytest.raises(StorageNotFoundError, match="no-such-bucket-.*does not exist"):
        score_slides(config)


def test_cli_missing_bucket_exits_with_2(tmp_path, monkeypatch, local_model, manifest, s3_endpoint):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "score.yaml"
    config.write_text(yaml.safe_dump({"model": {"best_file": str(local_model[0]), "device": "cpu"}}))
    output = f"s3://no-such-bucket-{s3_endpoint.split(':')[1]}/scores?endpoint_override={s3_endpoint}&scheme=http"
    code = score_slides_main(["--config", str(config), "--manifest", str(manifest), "--output", output])
    assert code == 2
    assert not (tmp_path / "s3:").exists()


def test_model_from_bucket_matches_local(remote_model, local_model, tmp_path):
    best_uri, checkpoint_uri = remote_model
    info = resolve_model(ModelSource(best_file=best_uri, cache_dir=tmp_path / "driver"))
    assert info.checkpoint == checkpoint_uri
    assert info.checkpoint_sha256 == file_digest(local_model[1])
    assert info.mpp == MODEL_MPP

    tiles = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    remote = TilePredictor(info, device="cpu", cache_dir=tmp_path / "replica")
    local = TilePredictor(resolve_model(ModelSource(best_file=local_model[0])), device="cpu")
    assert list((tmp_path / "replica").rglob("best.pt"))
    np.testing.assert_array_equal(remote.predict(tiles), local.predict(tiles))


def test_best_file_names_checkpoint_beside_it(remote_model, local_model, s3_uri, tmp_path):
    best_uri = s3_uri("runs/deeplabv3plus_resnet50/seed0/best.json")
    storage.write_json(best_uri, best_record("best.pt", file_digest(local_model[1])))
    info = resolve_model(ModelSource(best_file=best_uri, cache_dir=tmp_path))
    assert info.checkpoint == remote_model[1]


def test_checkpoint_digest_mismatch_rejected(remote_model, s3_uri, tmp_path):
    best_uri = s3_uri("report/wrong_best.json")
    storage.write_json(best_uri, best_record(remote_model[1], "0" * 64))
    with pytest.raises(CheckpointError, match="SHA-256"):
        resolve_model(ModelSource(best_file=best_uri, cache_dir=tmp_path))


def test_missing_remote_best_file(s3_uri, tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nothing/best.json"):
        resolve_model(ModelSource(best_file=s3_uri("nothing/best.json"), cache_dir=tmp_path))


def test_cached_checkpoint_reused(s3_uri, tmp_path):
    # The cache checks digests only, so a small stand-in file keeps the upload short.
    stand_in = tmp_path / "best.pt"
    stand_in.write_bytes(b"checkpoint bytes")
    checkpoint_uri = s3_uri("cache_probe/best.pt")
    storage.upload(stand_in, checkpoint_uri)
    digest = file_digest(stand_in)
    first = cached_checkpoint(checkpoint_uri, cache_dir=tmp_path / "cache", expected_sha256=digest)
    storage.delete_file(checkpoint_uri)
    # The object is gone, so only the cached copy can satisfy this call.
    second = cached_checkpoint(checkpoint_uri, cache_dir=tmp_path / "cache", expected_sha256=digest)
    assert second == first
    assert file_digest(second) == digest


def test_cached_checkpoint_rejects_changed_object(s3_uri, tmp_path):
    stand_in = tmp_path / "best.pt"
    stand_in.write_bytes(b"retrained checkpoint bytes")
    checkpoint_uri = s3_uri("changed_probe/best.pt")
    storage.upload(stand_in, checkpoint_uri)
    with pytest.raises(CheckpointError, match="SHA-256"):
        cached_checkpoint(checkpoint_uri, cache_dir=tmp_path / "cache", expected_sha256="0" * 64)
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
