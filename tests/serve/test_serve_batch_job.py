"""The batch scoring job: Ray Data model actors, skipping finished slides, reporting failed ones."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from cancerseg_ray.errors import ConfigError
from cancerseg_ray.serve.batch import (
    FAILED,
    SCORED,
    SKIPPED,
    SUMMARY_FILE,
    list_slides,
    score_slides,
)
from cancerseg_ray.serve.config import BatchScoreConfig, ModelSource
from cancerseg_ray.serve.outputs import GEOJSON_FILE, MASK_TIFF, OVERLAY_PNG, RESULT_FILE
from tests.serve.conftest import CMU_SLIDE


def test_list_slides_from_folder(tmp_path, best_file):
    (tmp_path / "a").mkdir()
    shutil.copy(CMU_SLIDE, tmp_path / "a" / "one.svs")
    shutil.copy(CMU_SLIDE, tmp_path / "two.SVS")
    (tmp_path / "notes.txt").write_text("not a slide")
    config = BatchScoreConfig(model=ModelSource(best_file=best_file), slides_dir=tmp_path, output_dir=tmp_path / "o")
    assert [entry.slide_id for entry in list_slides(config)] == ["a__one", "two"]


def test_list_slides_from_manifest(tmp_path, best_file):
    manifest = tmp_path / "slides.csv"
    pd.DataFrame({"path": [str(CMU_SLIDE), "relative.svs"], "slide_id": ["cmu", "rel"],
                  "mpp": [None, 0.25]}).to_csv(manifest, index=False)
    config = BatchScoreConfig(model=ModelSource(best_file=best_file), manifest=manifest, output_dir=tmp_path / "o",
                              mpp_override=0.5)
    entries = list_slides(config)
    assert [(entry.slide_id, entry.mpp) for entry in entries] == [("cmu", 0.5), ("rel", 0.25)]
    assert entries[1].path == str((tmp_path / "relative.svs").resolve())


def test_list_slides_rejects_duplicate_ids(tmp_path, best_file):
    manifest = tmp_path / "slides.csv"
    pd.DataFrame({"path": ["a/x.svs", "b/x.svs"]}).to_csv(manifest, index=False)
    config = BatchScoreConfig(model=ModelSource(best_file=best_file), manifest=manifest, output_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="share the id 'x'"):
        list_slides(config)


def test_manifest_without_path_column(tmp_path, best_file):
    manifest = tmp_path / "slides.csv"
    pd.DataFrame({"file": ["a.svs"]}).to_csv(manifest, index=False)
    config = BatchScoreConfig(model=ModelSource(best_file=best_file), manifest=manifest, output_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="no 'path' column"):
        list_slides(config)


@pytest.mark.ray
@pytest.mark.slow
def test_batch_job_skips_finished_and_reports_failed(ray_start_4_cpus, tmp_path, best_file):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(CMU_SLIDE, slides / "cmu.svs")
    (slides / "corrupt.svs").write_bytes(CMU_SLIDE.read_bytes()[:4096])
    output = tmp_path / "scores"
    config = BatchScoreConfig(model=ModelSource(best_file=best_file, device="cpu"), slides_dir=slides,
                              output_dir=output, num_actors=1)

    first = score_slides(config).set_index("slide_id")
    assert first.loc["cmu", "status"] == SCORED
    assert first.loc["corrupt", "status"] == FAILED
    assert "corrupt.svs" in first.loc["corrupt", "error"]
    assert first.loc["cmu", "tiles_scored"] > 0
    for name in (RESULT_FILE, GEOJSON_FILE, MASK_TIFF, OVERLAY_PNG):
        assert (output / "cmu" / name).is_file()
    assert not (output / "corrupt" / RESULT_FILE).exists()
    stamp = (output / "cmu" / RESULT_FILE).stat().st_mtime_ns

    second = score_slides(config).set_index("slide_id")
    assert second.loc["cmu", "status"] == SKIPPED
    assert second.loc["corrupt", "status"] == FAILED
    assert (output / "cmu" / RESULT_FILE).stat().st_mtime_ns == stamp
    assert second.loc["cmu", "tumour_area_um2"] == pytest.approx(first.loc["cmu", "tumour_area_um2"])
    written = pd.read_csv(output / SUMMARY_FILE)
    assert list(written["slide_id"]) == ["cmu", "corrupt"]
    assert list(written["status"]) == [SKIPPED, FAILED]
