"""The batch scoring job: Ray Data model actors, skipping finished slides, reporting failed ones."""

from __future__ import annotations

import csv
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image
from scipy import ndimage

from cancerseg_ray.errors import ConfigError
from cancerseg_ray.io.slides import open_slide
from cancerseg_ray.serve.batch import (
    FAILED,
    SCORED,
    SKIPPED,
    SUMMARY_FILE,
    SlideEntry,
    list_slides,
    score_slides,
    summary_frame,
    summary_row,
)
from cancerseg_ray.serve.config import BatchScoreConfig, ModelSource
from cancerseg_ray.serve.outputs import (
    GEOJSON_FILE,
    MASK_TIFF,
    OVERLAY_COLOURS,
    OVERLAY_PNG,
    RESULT_FILE,
    write_overlay_png,
)
from cancerseg_ray.serve.tiling import SlideGrid
from tests.serve.conftest import CMU_SLIDE, MODEL_MPP


def test_list_slides_from_folder(tmp_path, best_file):
    (tmp_path / "a").mkdir()
    shutil.copy(CMU_SLIDE, tmp_path / "a" / "one.svs")
    shutil.copy(CMU_SLIDE, tmp_path / "two.SVS")
    (tmp_path / "notes.txt").write_text("not a slide")
    config = BatchScoreConfig(model=ModelSource(best_file=best_file), slides_dir=tmp_path, output_dir=tmp_path / "o")
    assert [entry.slide_id for entry in list_slides(config)] == ["a__one", "two"]


def test_list_slides_rejects_empty_folder(tmp_path, best_file):
    (tmp_path / "notes.txt").write_text("not a slide")
    config = BatchScoreConfig(model=ModelSource(best_file=best_file), slides_dir=tmp_path, output_dir=tmp_path / "o")
    with pytest.raises(ConfigError) as error:
        list_slides(config)
    assert f"no slides found in {tmp_path.resolve()}" in str(error.value)
    assert "(looked for .bif, .mrxs, .ndpi, .scn, .svs, .svslide, .tif, .tiff)" in str(error.value)


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


def test_manifest_lists_every_invalid_row(tmp_path, best_file):
    manifest = tmp_path / "slides.csv"
    manifest.write_text(
        "path,slide_id,mpp\n"
        f"{CMU_SLIDE},cmu,0.5\n"
        "../slides/good.svs,g1,abc\n"
        "b.svs,b,-1\n"
        ",empty,\n"
        "c.svs,c,nan\n"
    )
    config = BatchScoreConfig(model=ModelSource(best_file=best_file), manifest=manifest, output_dir=tmp_path / "o")
    with pytest.raises(ConfigError) as error:
        list_slides(config)
    message = str(error.value)
    assert f"manifest {manifest.resolve()} has 4 invalid row(s)" in message
    assert "line 2:" not in message
    assert re.search(r"line 3: slide \.\./slides/good\.svs: mpp 'abc' is not a positive number", message)
    assert re.search(r"line 4: slide b\.svs: mpp '-1' is not a positive number", message)
    assert "line 5: path is empty" in message
    assert re.search(r"line 6: slide c\.svs: mpp 'nan' is not a positive number", message)


def test_manifest_keeps_slide_id_text(tmp_path, best_file):
    manifest = tmp_path / "slides.csv"
    # A spreadsheet's byte order mark before the header, and an id that is not a number despite its digits.
    manifest.write_text(f"\ufeffpath,slide_id,mpp\n{CMU_SLIDE},007,\n", encoding="utf-8")
    config = BatchScoreConfig(model=ModelSource(best_file=best_file), manifest=manifest, output_dir=tmp_path / "o")
    entries = list_slides(config)
    assert [(entry.slide_id, entry.mpp) for entry in entries] == [("007", None)]


def test_manifest_without_rows(tmp_path, best_file):
    manifest = tmp_path / "slides.csv"
    manifest.write_text("path,slide_id\n")
    config = BatchScoreConfig(model=ModelSource(best_file=best_file), manifest=manifest, output_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="lists no slides"):
        list_slides(config)


def test_summary_writes_integer_counts():
    failed = summary_row(SlideEntry(slide_id="broken", path="/slides/broken.svs"), FAILED, error="unreadable")
    scored = summary_row(SlideEntry(slide_id="cmu", path="/slides/cmu.svs"), SCORED, seconds=1.234)
    scored.update(tiles_scored=29, tissue_area_um2=1250.5)
    rows = list(csv.DictReader(summary_frame([scored, failed]).to_csv(index=False).splitlines()))
    assert [row["slide_id"] for row in rows] == ["broken", "cmu"]
    assert rows[0]["tiles_scored"] == ""
    assert rows[1]["tiles_scored"] == "29"
    assert rows[1]["tissue_area_um2"] == "1250.5"
    assert rows[1]["seconds"] == "1.23"


def test_overlay_outlines_classes(tmp_path):
    """Synthetic classes on the real CMU slide: outlines in full colour, tinted fill, untouched surroundings."""
    with open_slide(CMU_SLIDE) as reader:
        grid = SlideGrid.from_bounds(reader.bounds, slide_mpp=reader.mpp, model_mpp=MODEL_MPP)
        mask = np.zeros((grid.height, grid.width), dtype=np.uint8)
        mask[150:250, 80:180] = 1
        mask[280:340, 60:200] = 2
        path = write_overlay_png(reader, zarr.array(mask), grid, tmp_path / OVERLAY_PNG,
                                 class_names=["background", "gland", "tumour"], classes=[1, 2], max_size=742,
                                 alpha=0.45)
        thumbnail, scale = reader.thumbnail(742)
    overlay = np.asarray(Image.open(path)).astype(int)
    assert overlay.shape == thumbnail.shape
    thumbnail = thumbnail.astype(int)

    # The mask value under each thumbnail pixel's centre, computed as the overlay documents it.
    columns = np.floor((np.arange(overlay.shape[1]) + 0.5) / scale / grid.downsample).astype(int)
    rows = np.floor((np.arange(overlay.shape[0]) + 0.5) / scale / grid.downsample).astype(int)
    values = mask[np.clip(rows, 0, grid.height - 1)][:, np.clip(columns, 0, grid.width - 1)]

    for position, index in enumerate((1, 2)):
        colour = np.array(OVERLAY_COLOURS[position])
        region = values == index
        inner = ndimage.binary_erosion(region, structure=np.ones((3, 3)), iterations=2)
        outline = region & ~inner
        assert outline.sum() > 0
        assert (overlay[outline] == colour).all()
        expected_fill = np.rint(thumbnail[inner] * 0.55 + colour * 0.45)
        assert np.abs(overlay[inner] - expected_fill).max() <= 1
        # Visibly changed: on average each channel moves by more than 30 of 255.
        assert np.abs(overlay[region] - thumbnail[region]).mean() > 30

    # Away from the classes and the legend (top-right corner, free of classes) the thumbnail is unchanged.
    height, width = values.shape
    untouched = ~ndimage.binary_dilation(values > 0, iterations=3)
    untouched[: height // 3, width * 2 // 3:] = False
    assert (overlay[untouched] == thumbnail[untouched]).all()
    legend = overlay[: height // 3, width * 2 // 3:]
    for colour in OVERLAY_COLOURS[:2]:
        assert (legend == colour).all(axis=2).any()
    assert (legend == 0).all(axis=2).any()


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
    with (output / SUMMARY_FILE).open(newline="") as file:
        written_counts = {row["slide_id"]: row["tiles_scored"] for row in csv.DictReader(file)}
    assert written_counts == {"cmu": str(first.loc["cmu", "tiles_scored"]), "corrupt": ""}
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
