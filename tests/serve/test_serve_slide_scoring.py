"""Whole-slide scoring of CMU-1-Small-Region.svs and the files it writes."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import shapely
import zarr
from PIL import Image
from shapely.geometry import shape

from cancerseg_ray.errors import ConfigError
from cancerseg_ray.io.annotations import read_annotations
from cancerseg_ray.io.rasterize import rasterize_annotations
from cancerseg_ray.io.slides import MissingResolutionError, SlideReadError
from cancerseg_ray.serve.config import CoordinateOrigin, ScoringConfig
from cancerseg_ray.serve.geojson import class_polygons, mask_to_features
from cancerseg_ray.serve.inference import score_slide
from cancerseg_ray.serve.outputs import (
    GEOJSON_FILE,
    MASK_TIFF,
    OVERLAY_PNG,
    PREDICTION_STORE,
    RESULT_FILE,
    SlideScore,
    overlay_colour,
)
from cancerseg_ray.serve.tiling import SlideGrid
from tests.serve.conftest import CLASS_NAMES, CMU_SLIDE, MODEL_MPP, TCGA_SLIDE, TILE_SIZE

GEOJSON_TOLERANCE = 0.001
"""Largest fraction of mask pixels whose class may change on the GeoJSON round trip (unsimplified polygons)."""


def stored_mask(folder) -> np.ndarray:
    return zarr.open_group(str(folder / PREDICTION_STORE), mode="r")["mask"][:]


def test_segment_real_tile(predictor, cmu_tile):
    probabilities = predictor.predict(cmu_tile[None])
    assert probabilities.shape == (1, 2, 256, 256)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert probabilities.min() >= 0.0


def test_predict_pads_odd_sizes(predictor, cmu_tile):
    probabilities = predictor.predict(cmu_tile[None, :100, :90])
    assert probabilities.shape == (1, 2, 100, 90)


def test_score_cmu_result(scored_cmu):
    folder, score = scored_cmu
    assert (folder / RESULT_FILE).is_file()
    assert SlideScore.model_validate_json((folder / RESULT_FILE).read_text()) == score
    # 2220 x 2967 pixels at 0.499 µm/px on a 4 µm/px grid.
    assert (score.grid_width, score.grid_height) == (277, 371)
    assert score.downsample == pytest.approx(MODEL_MPP / 0.499)
    assert score.tiles_total == 12
    assert 0 < score.tiles_scored <= score.tiles_total
    assert [area.class_name for area in score.areas] == CLASS_NAMES


def test_score_cmu_areas_match_mask(scored_cmu):
    folder, score = scored_cmu
    mask = stored_mask(folder)
    pixel_area = MODEL_MPP**2 * (score.slide_mpp / 0.499) ** 2
    for area in score.areas:
        pixels = int((mask == area.class_index).sum())
        assert area.pixels == pixels
        assert area.area_um2 == pytest.approx(pixels * pixel_area, rel=1e-6)
    # Every tissue pixel lies in a scored tile (min_tissue_fraction 0), so the fractions add up to 1.
    assert sum(area.fraction_of_tissue for area in score.areas) == pytest.approx(1.0)
    assert score.scored_area_um2 == pytest.approx(score.tissue_area_um2)
    # The CMU region is skin on glass: tissue covers part of it, not all of it.
    grid_area = score.grid_width * score.grid_height * pixel_area
    assert 0.1 * grid_area < score.tissue_area_um2 < 0.9 * grid_area


def test_score_cmu_mask_is_argmax_of_probabilities(scored_cmu, model_info):
    folder, _ = scored_cmu
    store = zarr.open_group(str(folder / PREDICTION_STORE), mode="r")
    mask = store["mask"][:]
    probabilities = store["probabilities"][:].astype(np.float32)
    scored = mask != model_info.ignore_index
    assert scored.any()
    agreement = (probabilities.argmax(axis=0)[scored] == mask[scored]).mean()
    assert agreement > 0.999  # float16 storage may flip near-ties


def test_geojson_is_qupath_feature_collection(scored_cmu):
    folder, score = scored_cmu
    collection = json.loads((folder / GEOJSON_FILE).read_text())
    assert collection["type"] == "FeatureCollection"
    tumour_pixels = next(area.pixels for area in score.areas if area.class_name == "tumour")
    assert len(collection["features"]) > 0 or tumour_pixels == 0
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"] == {"name": "tumour", "color": [200, 30, 30]}
        geometry = shape(feature["geometry"])
        assert geometry.is_valid
        minx, miny, maxx, maxy = geometry.bounds
        assert minx >= 0
        assert miny >= 0
        assert maxx <= 2220 + score.downsample
        assert maxy <= 2967 + score.downsample


def test_geojson_round_trip_reproduces_mask(scored_cmu):
    """Reading the GeoJSON back and rasterising it on the grid gives the tumour mask again."""
    folder, score = scored_cmu
    mask = stored_mask(folder)
    annotations = read_annotations(folder / GEOJSON_FILE)
    assert set(annotations["object_type"]) == {"annotation"}
    burned = rasterize_annotations(
        annotations, class_to_id={"tumour": 1}, origin_xy=(0.0, 0.0), downsample=score.downsample,
        out_shape=mask.shape, fill=0,
    )
    differing = ((burned == 1) != (mask == 1)).mean()
    assert differing <= GEOJSON_TOLERANCE


def test_class_polygons_keep_holes():
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[5:35, 5:35] = 1
    mask[15:25, 15:25] = 0
    polygons = class_polygons(mask, 1, block_size=16, simplify_tolerance=0.0, min_area=0.0)
    assert len(polygons) == 1
    assert len(polygons[0].interiors) == 1
    assert polygons[0].area == pytest.approx(30 * 30 - 10 * 10)


def test_class_polygons_merge_across_blocks():
    """Regions cut by block borders merge into the same polygons as with one block."""
    rng = np.random.default_rng(0)
    mask = (rng.random((24, 24)) > 0.5).astype(np.uint8)
    mask = np.kron(mask, np.ones((5, 5), dtype=np.uint8))[:113, :101]
    whole = class_polygons(mask, 1, block_size=1024, simplify_tolerance=0.0, min_area=0.0)
    blocked = class_polygons(mask, 1, block_size=16, simplify_tolerance=0.0, min_area=0.0)
    assert sum(polygon.area for polygon in blocked) == pytest.approx(float(mask.sum()))
    assert len(blocked) == len(whole)
    assert shapely.union_all(blocked).symmetric_difference(shapely.union_all(whole)).area == pytest.approx(0.0)


def test_class_polygons_drop_small_parts():
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[0:20, 0:20] = 1
    mask[30:32, 30:32] = 1
    polygons = class_polygons(mask, 1, block_size=16, simplify_tolerance=0.0, min_area=10.0)
    assert [polygon.area for polygon in polygons] == [400.0]


def test_geojson_coordinates_include_bounds_offset():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:4, 3:6] = 1
    grid = SlideGrid(origin_x=1000, origin_y=500, downsample=2.0, width=10, height=10)
    common = {"class_names": ["background", "tumour"], "colours": [(0, 0, 0), (255, 0, 0)], "classes": [1],
              "block_size": 8, "simplify_tolerance_px": 0.0, "min_area_px": 0.0}
    level0 = mask_to_features(mask, grid, origin=CoordinateOrigin.LEVEL0, **common)
    relative = mask_to_features(mask, grid, origin=CoordinateOrigin.BOUNDS, **common)
    assert shape(level0[0]["geometry"]).bounds == (1006.0, 504.0, 1012.0, 508.0)
    assert shape(relative[0]["geometry"]).bounds == (6.0, 4.0, 12.0, 8.0)


def test_simplified_geojson_stays_close(scored_cmu):
    folder, score = scored_cmu
    mask = stored_mask(folder)
    grid = SlideGrid(origin_x=0, origin_y=0, downsample=score.downsample, width=mask.shape[1], height=mask.shape[0])
    exact = mask_to_features(mask, grid, class_names=CLASS_NAMES, colours=[(0, 0, 0), (200, 30, 30)], classes=[1],
                             block_size=128, simplify_tolerance_px=0.0, min_area_px=0.0,
                             origin=CoordinateOrigin.LEVEL0)
    simple = mask_to_features(mask, grid, class_names=CLASS_NAMES, colours=[(0, 0, 0), (200, 30, 30)], classes=[1],
                              block_size=128, simplify_tolerance_px=0.5, min_area_px=0.0,
                              origin=CoordinateOrigin.LEVEL0)
    exact_union = shapely.union_all([shape(feature["geometry"]) for feature in exact])
    simple_union = shapely.union_all([shape(feature["geometry"]) for feature in simple])
    if exact_union.is_empty:
        pytest.skip("the random model predicted no tumour on this slide")
    overlap = exact_union.intersection(simple_union).area / exact_union.union(simple_union).area
    assert overlap > 0.95
    vertex_count = sum(len(shapely.get_coordinates(shape(feature["geometry"]))) for feature in simple)
    assert vertex_count < sum(len(shapely.get_coordinates(shape(feature["geometry"]))) for feature in exact)


def test_pyramidal_tiff_opens_in_openslide(scored_cmu, model_info):
    folder, score = scored_cmu
    mask = stored_mask(folder)
    assert openslide.OpenSlide.detect_format(folder / MASK_TIFF) == "generic-tiff"
    with openslide.OpenSlide(folder / MASK_TIFF) as slide:
        assert slide.dimensions == (score.grid_width, score.grid_height)
        assert slide.level_count >= 2
        assert slide.level_dimensions[1] == ((score.grid_width + 1) // 2, (score.grid_height + 1) // 2)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MODEL_MPP)
        pixels = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))[:, :, :3]
    colours = {index: colour for index, colour in enumerate(model_info.colours)}
    colours[model_info.ignore_index] = (0, 0, 0)
    expected = np.zeros_like(pixels)
    for value, colour in colours.items():
        expected[mask == value] = colour
    np.testing.assert_array_equal(pixels, expected)


def test_overlay_png_tints_tissue(scored_cmu):
    folder, score = scored_cmu
    overlay = np.asarray(Image.open(folder / OVERLAY_PNG))
    assert overlay.ndim == 3
    assert overlay.shape[2] == 3
    assert max(overlay.shape[:2]) == 2048
    assert overlay.shape[0] / overlay.shape[1] == pytest.approx(2967 / 2220, rel=0.01)
    if next(area.pixels for area in score.areas if area.class_name == "tumour"):
        # Tumour is the only drawn class, so it takes the first overlay colour, drawn unblended on its outline.
        assert (overlay == overlay_colour(0)).all(axis=2).any()


def test_centre_crop_blending_scores_slide(tmp_path, predictor, model_info):
    config = ScoringConfig(blend="centre_crop", detect_tissue=False, chunk_size=128)
    score = score_slide(CMU_SLIDE, predict=predictor.predict, model=model_info, config=config,
                        output_dir=tmp_path / "cmu")
    assert score.tiles_scored == score.tiles_total == 12
    assert score.tissue_area_um2 == pytest.approx(277 * 371 * score.downsample**2 * 0.499**2)


def test_score_slide_without_resolution(tmp_path, predictor, model_info):
    with pytest.raises(MissingResolutionError, match="mpp_override"):
        score_slide(TCGA_SLIDE, predict=predictor.predict, model=model_info, config=ScoringConfig(),
                    output_dir=tmp_path / "tcga")


def test_score_corrupt_slide(tmp_path, predictor, model_info):
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(CMU_SLIDE.read_bytes()[:4096])
    with pytest.raises(SlideReadError, match="corrupt.svs"):
        score_slide(corrupt, predict=predictor.predict, model=model_info, config=ScoringConfig(),
                    output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / RESULT_FILE).exists()


def test_score_slide_needs_model_resolution(tmp_path, predictor, model_info):
    unknown = model_info.model_copy(update={"mpp": None})
    with pytest.raises(ConfigError, match="model_mpp"):
        score_slide(CMU_SLIDE, predict=predictor.predict, model=unknown, config=ScoringConfig(),
                    output_dir=tmp_path / "out")


def test_tile_size_comes_from_best_file(model_info):
    assert model_info.tile_size == TILE_SIZE
    assert model_info.mpp == MODEL_MPP
