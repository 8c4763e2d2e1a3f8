"""Tests of tissue detection on the CMU slide thumbnail and on synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from io_samples import CMU_SVS
from PIL import Image

from cancerseg_ray.io.slides import open_slide
from cancerseg_ray.io.tissue import detect_tissue, save_tissue_mask_png, tissue_fraction


@pytest.fixture(scope="module")
def cmu_thumbnail() -> tuple[np.ndarray, float]:
    with open_slide(CMU_SVS) as reader:
        return reader.thumbnail(512)


def test_cmu_tissue_fraction(cmu_thumbnail: tuple[np.ndarray, float]) -> None:
    thumbnail, _ = cmu_thumbnail
    mask = detect_tissue(thumbnail)
    assert mask.shape == thumbnail.shape[:2]
    assert mask.dtype == bool
    # The skin section fills about a third of the slide region (0.34 measured).
    assert 0.2 < mask.mean() < 0.9


def test_cmu_background_corners(cmu_thumbnail: tuple[np.ndarray, float]) -> None:
    mask = detect_tissue(cmu_thumbnail[0])
    # Three corners are bare glass; the top-left one holds a small tissue
    # fragment about 12 pixels down, so only its first 10 rows are checked.
    assert not mask[:10, :10].any()
    assert not mask[:20, -20:].any()
    assert not mask[-20:, :20].any()
    assert not mask[-20:, -20:].any()


def test_cmu_tile_fractions(cmu_thumbnail: tuple[np.ndarray, float]) -> None:
    thumbnail, scale = cmu_thumbnail
    mask = detect_tissue(thumbnail)
    # Level-0 tiles of 256 pixels: one on the glass at the top right, one in
    # the middle of the section.
    assert tissue_fraction(mask, 1900, 100, 256, scale) == 0.0
    assert tissue_fraction(mask, 1000, 1500, 256, scale) > 0.8


def test_tissue_fraction_outside_mask_counts_as_background() -> None:
    mask = np.ones((10, 10), dtype=bool)
    assert tissue_fraction(mask, 0, 0, 10, 1.0) == 1.0
    assert tissue_fraction(mask, 5, 0, 10, 1.0) == 0.5
    assert tissue_fraction(mask, 50, 50, 10, 1.0) == 0.0
    # A tile smaller than one mask pixel reads the pixel it falls in.
    assert tissue_fraction(mask, 3, 3, 2, 0.1) == 1.0


def test_blank_glass_has_no_tissue() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(240, 3, size=(128, 128, 3)), 0, 255).astype(np.uint8)
    assert not detect_tissue(glass).any()
    # Without the saturation floor, Otsu splits the noise and marks glass as tissue.
    assert detect_tissue(glass, min_saturation=0).mean() > 0.5


def test_min_saturation_floor() -> None:
    image = np.full((64, 64, 3), 250, dtype=np.uint8)
    image[16:48, 16:48] = (230, 200, 220)  # pale pink, saturation about 33 of 255
    assert detect_tissue(image, min_saturation=20)[32, 32]
    assert not detect_tissue(image, min_saturation=60).any()


def test_invalid_arguments() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown tissue detection method 'kmeans'"):
        detect_tissue(image, method="kmeans")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        detect_tissue(image[:, :, 0])


def test_save_tissue_mask_png(tmp_path: Path, cmu_thumbnail: tuple[np.ndarray, float]) -> None:
    mask = detect_tissue(cmu_thumbnail[0])
    path = save_tissue_mask_png(mask, tmp_path / "masks" / "cmu.png")
    with Image.open(path) as image:
        assert image.mode == "L"
        stored = np.asarray(image)
    assert set(np.unique(stored)) == {0, 255}
    assert np.array_equal(stored == 255, mask)
