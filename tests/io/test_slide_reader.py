"""Tests of the slide and image readers on real SVS files, MoNuSeg TIFF and synthetic pyramids."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile
from io_samples import (
    CMU_SVS,
    MONUSEG_TIF,
    PYRAMID_COLOURS,
    PYRAMID_MPP,
    TCGA_SVS,
)
from PIL import Image

from cancerseg_ray.errors import InputDataError
from cancerseg_ray.io import slides
from cancerseg_ray.io.slides import (
    ImageReader,
    MissingResolutionError,
    SlideReader,
    SlideReadError,
    composite_over_white,
    open_slide,
    select_level,
)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# Level selection on plain lists of downsamples.


@pytest.mark.parametrize(
    ("downsamples", "target", "expected"),
    [
        ((1.0, 4.0, 16.0, 32.0), 1.0, 0),
        ((1.0, 4.0, 16.0, 32.0), 3.9, 0),
        ((1.0, 4.0, 16.0, 32.0), 4.0, 1),
        ((1.0, 4.0, 16.0, 32.0), 8.0, 1),
        ((1.0, 4.0, 16.0, 32.0), 20.0, 2),
        ((1.0, 4.0, 16.0, 32.0), 500.0, 3),
        ((1.0, 2.0002, 4.0009, 8.0031), 2.0, 1),
        ((1.0, 2.0002, 4.0009, 8.0031), 4.0, 2),
        ((1.0, 2.0002, 4.0009, 8.0031), 7.0, 2),
        ((1.0, 2.0005055500659967), 2.0, 1),
        ((1.0, 4.0, 16.0), 0.5, 0),
        ((16.0, 1.0, 4.0), 5.0, 2),
    ],
)
def test_select_level_table(downsamples: tuple[float, ...], target: float, expected: int) -> None:
    assert select_level(downsamples, target) == expected


def test_select_level_rejects_coarser_beyond_tolerance() -> None:
    # 2.05 is 2.5 % coarser than 2.0, beyond the 1 % tolerance.
    assert select_level((1.0, 2.05), 2.0) == 0


def test_select_level_invalid_target() -> None:
    with pytest.raises(ValueError, match="target_downsample"):
        select_level((1.0, 4.0), 0.0)


# CMU-1-Small-Region.svs: one level, 0.499 µm/px.


def test_cmu_metadata() -> None:
    with SlideReader(CMU_SVS) as reader:
        assert reader.level_count == 1
        assert reader.dimensions == (2220, 2967)
        assert reader.level_dimensions == ((2220, 2967),)
        assert reader.level_downsamples == (1.0,)
        assert reader.mpp == pytest.approx(0.499)
        assert reader.mpp_xy == pytest.approx((0.499, 0.499))
        assert reader.bounds == (0, 0, 2220, 2967)
        assert reader.vendor == "aperio"


@pytest.mark.parametrize("target_mpp", [0.5, 1.0])
def test_cmu_read_tile_shape(target_mpp: float) -> None:
    with open_slide(CMU_SVS) as reader:
        tile = reader.read_tile(800, 1200, 256, target_mpp)
        source = reader.locate_tile(800, 1200, 256, target_mpp)
    assert tile.shape == (256, 256, 3)
    assert tile.dtype == np.uint8
    assert source.level == 0
    assert source.region_width == round(256 * target_mpp / 0.499)


def test_cmu_coarse_tile_matches_downsampled_fine_tile() -> None:
    with open_slide(CMU_SVS) as reader:
        fine = reader.read_tile(800, 1200, 512, 0.5)
        coarse = reader.read_tile(800, 1200, 256, 1.0)
        shifted = reader.read_tile(864, 1264, 256, 1.0)
    downsampled = cv2.resize(fine, (256, 256), interpolation=cv2.INTER_AREA)

    assert mean_abs_diff(coarse, downsampled) < 2.0
    # The same comparison against a tile 64 pixels away fails, so the check can tell tiles apart.
    assert mean_abs_diff(shifted, downsampled) > 10.0


def test_cmu_tile_beyond_edge_is_white() -> None:
    with open_slide(CMU_SVS) as reader:
        tile = reader.read_tile(2220 - 100, 2967 - 100, 256, 0.499)
    assert tile[:90, :90].std() > 0
    assert (tile[110:, :] == 255).all()
    assert (tile[:, 110:] == 255).all()


def test_cmu_thumbnail_matches_openslide() -> None:
    with SlideReader(CMU_SVS) as reader:
        thumbnail, scale = reader.thumbnail(512)
    expected = np.asarray(openslide.OpenSlide(CMU_SVS).get_thumbnail((512, 512)).convert("RGB"))

    assert thumbnail.shape == (512, 383, 3)
    assert scale == pytest.approx(512 / 2967)
    assert expected.shape == thumbnail.shape
    assert mean_abs_diff(thumbnail, expected) < 3.0


def test_thumbnail_in_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    with SlideReader(CMU_SVS) as reader:
        whole, _ = reader.thumbnail(300)
        monkeypatch.setattr(slides, "MAX_STRIP_PIXELS", 2220 * 97)
        striped, _ = reader.thumbnail(300)
        monkeypatch.setattr(slides, "MAX_STRIP_PIXELS", 2220 * 41)
        narrower, _ = reader.thumbnail(300)
    assert striped.shape == whole.shape
    # Strip borders leave no trace: two strip heights give identical thumbnails.
    assert np.array_equal(striped, narrower)
    # The two-pass shrink differs from the one-pass one only by a little extra blur.
    assert mean_abs_diff(striped, whole) < 6.0


def test_reader_pickles_by_path() -> None:
    with open_slide(CMU_SVS) as reader:
        copy = pickle.loads(pickle.dumps(reader))
        expected = reader.read_tile(100, 100, 64, 0.5)
    with copy:
        assert isinstance(copy, SlideReader)
        assert np.array_equal(copy.read_tile(100, 100, 64, 0.5), expected)


def test_closed_reader_raises() -> None:
    reader = open_slide(CMU_SVS)
    reader.close()
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read_tile(0, 0, 64, 0.5)


@pytest.mark.parametrize("bad_mpp", [0.0, -0.25, float("nan")])
def test_invalid_mpp_override(bad_mpp: float) -> None:
    with pytest.raises(InputDataError, match="mpp_override must be a positive number") as caught:
        open_slide(CMU_SVS, mpp_override=bad_mpp)
    assert CMU_SVS.name in str(caught.value)


def test_invalid_read_arguments() -> None:
    with open_slide(CMU_SVS) as reader:
        with pytest.raises(ValueError, match="size"):
            reader.read_tile(0, 0, 0, 0.5)
        with pytest.raises(ValueError, match="target_mpp"):
            reader.read_tile(0, 0, 64, -1.0)
        with pytest.raises(ValueError, match="level 3 does not exist"):
            reader.read_level(3)


# TCGA-CR-7395: two levels (downsample 2.0005), no resolution metadata.


def test_tcga_missing_mpp_raises() -> None:
    with pytest.raises(MissingResolutionError) as caught:
        SlideReader(TCGA_SVS)
    message = str(caught.value)
    assert isinstance(caught.value, InputDataError)
    assert TCGA_SVS.name in message
    assert "openslide.mpp-x" in message
    assert "mpp_override" in message
    assert "--mpp" in message
    assert "manifest" in message


def test_open_slide_missing_mpp_raises() -> None:
    with pytest.raises(MissingResolutionError, match="mpp_override"):
        open_slide(TCGA_SVS)


def test_tcga_override_picks_level_1() -> None:
    with open_slide(TCGA_SVS, mpp_override=0.25) as reader:
        level, downsample_from_level = reader.best_level_for_mpp(0.5)
        assert reader.level_count == 2
        assert reader.level_downsamples[1] == pytest.approx(2.0005, abs=1e-4)
        assert level == 1
        assert downsample_from_level == pytest.approx(1.0, abs=1e-3)
        assert reader.best_level_for_mpp(0.25)[0] == 0
        assert reader.best_level_for_mpp(0.4)[0] == 0

        source = reader.locate_tile(1500, 1500, 256, 0.5)
        coarse = reader.read_tile(1500, 1500, 256, 0.5)
        fine = reader.read_tile(1500, 1500, 512, 0.25)
        shifted_fine = reader.read_tile(1502, 1500, 512, 0.25)
    assert source.level == 1
    assert (source.region_width, source.region_height) == (256, 256)
    assert coarse.shape == (256, 256, 3)
    assert coarse.dtype == np.uint8
    assert coarse.std() > 10
    # Level 1 is the scanner's own JPEG 2000 downsample of level 0, so the two
    # agree up to compression noise. A 2-pixel shift roughly doubles the difference.
    downsampled = cv2.resize(fine, (256, 256), interpolation=cv2.INTER_AREA)
    assert mean_abs_diff(coarse, downsampled) < 10.0
    shifted = cv2.resize(shifted_fine, (256, 256), interpolation=cv2.INTER_AREA)
    assert mean_abs_diff(coarse, shifted) > 13.0


# Synthetic pyramid with downsamples 1, 4 and 16.


def test_pyramid_opened_by_openslide(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as reader:
        assert isinstance(reader, SlideReader)
        assert reader.vendor == "generic-tiff"
        assert reader.level_downsamples == (1.0, 4.0, 16.0)
        # OpenSlide reads the mpp from the TIFF resolution tags of a generic TIFF.
        assert reader.mpp == pytest.approx(PYRAMID_MPP)


@pytest.mark.parametrize(
    ("target_mpp", "expected_level", "expected_factor"),
    [
        (0.25, 0, 1.0),
        (0.9, 0, 3.6),
        (1.0, 1, 1.0),
        (2.0, 1, 2.0),
        (3.9, 1, 3.9),
        (4.0, 2, 1.0),
        (8.0, 2, 2.0),
    ],
)
def test_pyramid_level_for_mpp(
    pyramid_tiff: Path, target_mpp: float, expected_level: int, expected_factor: float
) -> None:
    with open_slide(pyramid_tiff) as reader:
        level, factor = reader.best_level_for_mpp(target_mpp)
        tile = reader.read_tile(0, 0, 32, target_mpp)
    assert level == expected_level
    assert factor == pytest.approx(expected_factor)
    # Each level has its own colour, so the tile shows which level was read.
    assert tuple(tile[16, 16]) == PYRAMID_COLOURS[expected_level]


# Missing, corrupt and unsupported files.


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.svs"
    for opener in (open_slide, SlideReader, ImageReader):
        with pytest.raises(SlideReadError, match="file not found") as caught:
            opener(missing)
        assert "absent.svs" in str(caught.value)


def test_truncated_svs(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(CMU_SVS.read_bytes()[:100_000])
    for opener in (open_slide, SlideReader):
        with pytest.raises(SlideReadError, match="truncated or corrupt") as caught:
            opener(truncated)
        assert "truncated.svs" in str(caught.value)


def test_text_file_named_svs(tmp_path: Path) -> None:
    fake = tmp_path / "notes.svs"
    fake.write_text("this is a text file, not a slide\n", encoding="utf-8")
    for opener in (open_slide, SlideReader):
        with pytest.raises(SlideReadError, match="does not recognise") as caught:
            opener(fake)
        assert "notes.svs" in str(caught.value)


def test_text_file_named_png(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file, not an image\n", encoding="utf-8")
    with pytest.raises(SlideReadError, match="notes.png: not an image"):
        open_slide(fake, mpp_override=0.5)


def test_corrupt_tile_data(tmp_path: Path) -> None:
    # The header and directories survive, but JPEG tile data in the middle is zeroed.
    corrupt = tmp_path / "corrupt.svs"
    shutil.copyfile(CMU_SVS, corrupt)
    with corrupt.open("r+b") as file:
        file.seek(200_000)
        file.write(bytes(600_000))
    with open_slide(corrupt) as reader:
        with pytest.raises(SlideReadError, match="slide data is probably corrupt") as caught:
            reader.read_level(0)
    assert "corrupt.svs" in str(caught.value)


# Plain images through ImageReader.


def test_monuseg_tiff_without_resolution() -> None:
    with pytest.raises(MissingResolutionError) as caught:
        open_slide(MONUSEG_TIF)
    message = str(caught.value)
    assert MONUSEG_TIF.name in message
    assert "writer default" in message
    assert "mpp_override" in message


def test_monuseg_tiff_with_override() -> None:
    with open_slide(MONUSEG_TIF, mpp_override=0.2525) as reader:
        assert isinstance(reader, ImageReader)
        assert reader.level_count == 1
        assert reader.dimensions == (1000, 1000)
        full = reader.read_level(0)
        tile = reader.read_tile(100, 200, 256, 0.2525)
        half = reader.read_tile(100, 200, 128, 0.505)
        edge = reader.read_tile(900, 900, 256, 0.2525)
    expected = tifffile.imread(MONUSEG_TIF)
    assert np.array_equal(full, expected)
    assert np.array_equal(tile, expected[200:456, 100:356])
    downsampled = cv2.resize(expected[200:456, 100:356], (128, 128), interpolation=cv2.INTER_AREA)
    assert mean_abs_diff(half, downsampled) < 1.0
    assert np.array_equal(edge[:100, :100], expected[900:, 900:])
    assert (edge[100:] == 255).all()


def test_tiff_resolution_tags_give_mpp(tmp_path: Path) -> None:
    path = tmp_path / "roi.tif"
    image = np.full((64, 48, 3), 120, dtype=np.uint8)
    tifffile.imwrite(path, image, resolution=(1e4 / 0.23, 1e4 / 0.23), resolutionunit="CENTIMETER")
    with open_slide(path) as reader:
        assert isinstance(reader, ImageReader)
        assert reader.mpp == pytest.approx(0.23)
        assert reader.dimensions == (48, 64)


def test_png_rgba_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "roi.png"
    rgba = np.zeros((40, 50, 4), dtype=np.uint8)
    rgba[:, :25] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(path)
    with open_slide(path, mpp_override=0.5) as reader:
        pixels = reader.read_level(0)
    assert tuple(pixels[10, 5]) == (255, 0, 0)
    assert tuple(pixels[10, 45]) == (255, 255, 255)


def test_png_without_override_raises(tmp_path: Path) -> None:
    path = tmp_path / "roi.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    with pytest.raises(MissingResolutionError, match="roi.png"):
        open_slide(path)


def test_composite_over_white_half_alpha() -> None:
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [100, 200, 50, 128]]], dtype=np.uint8)
    rgb = composite_over_white(rgba)
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[0, 1]) == (0, 0, 0)
    assert tuple(rgb[0, 2]) == (177, 227, 152)


def test_planar_tiff_read_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "planar.tif"
    planes = np.zeros((3, 20, 30), dtype=np.uint8)
    planes[0] = 200
    planes[2] = 50
    tifffile.imwrite(path, planes, photometric="rgb", planarconfig="separate")
    with open_slide(path, mpp_override=0.5) as reader:
        pixels = reader.read_level(0)
    assert pixels.shape == (20, 30, 3)
    assert tuple(pixels[5, 5]) == (200, 0, 50)


def test_16_bit_png_rejected(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((10, 10), 4000, dtype=np.uint16)).save(path)
    with open_slide(path, mpp_override=0.5) as reader:
        with pytest.raises(SlideReadError, match="deep.png: expected 8-bit pixels, got uint16"):
            reader.read_level(0)


def test_enlarging_tile_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    with (
        open_slide(CMU_SVS) as reader,
        caplog.at_level(logging.WARNING, logger="cancerseg_ray.io.slides"),
    ):
        tile = reader.read_tile(0, 0, 64, 0.25)
        reader.read_tile(64, 0, 64, 0.25)
    assert tile.shape == (64, 64, 3)
    assert caplog.text.count("finer than the scan") == 1


def test_imagej_micron_unit_gives_mpp(tmp_path: Path) -> None:
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(
        path,
        np.zeros((32, 32), dtype=np.uint8),
        imagej=True,
        resolution=(1 / 0.3, 1 / 0.3),
        metadata={"unit": "micron"},
    )
    with open_slide(path) as reader:
        assert reader.mpp == pytest.approx(0.3)
        assert reader.read_level(0).shape == (32, 32, 3)
