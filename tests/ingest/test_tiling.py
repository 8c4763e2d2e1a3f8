"""Tile grids and edge handling."""

from __future__ import annotations

import numpy as np
import pytest

from cancerseg_ray.data.tiling import PAD_IMAGE_VALUE, EdgeMode, cut_tiles, tile_grid, tile_origins


@pytest.mark.parametrize(
    ("length", "edge_mode", "expected"),
    [
        (775, EdgeMode.SHIFT, [0, 128, 256, 384, 512, 519]),
        (775, EdgeMode.PAD, [0, 128, 256, 384, 512, 640]),
        (775, EdgeMode.DROP, [0, 128, 256, 384, 512]),
        (256, EdgeMode.SHIFT, [0]),
        (200, EdgeMode.SHIFT, [0]),
        (200, EdgeMode.PAD, [0]),
        (200, EdgeMode.DROP, []),
        (384, EdgeMode.SHIFT, [0, 128]),
    ],
)
def test_tile_origins_per_edge_mode(length, edge_mode, expected):
    assert tile_origins(length, tile_size=256, stride=128, edge_mode=edge_mode) == expected


@pytest.mark.parametrize("edge_mode", [EdgeMode.SHIFT, EdgeMode.PAD])
@pytest.mark.parametrize(("width", "height"), [(775, 522), (300, 257), (256, 256), (1000, 600)])
def test_grid_covers_every_pixel(edge_mode, width, height):
    covered = np.zeros((height, width), dtype=bool)
    for window in tile_grid(width, height, tile_size=256, stride=128, edge_mode=edge_mode):
        covered[window.y : window.y + window.valid_height, window.x : window.x + window.valid_width] = True
    assert covered.all()


def test_shift_tiles_stay_inside_image():
    for window in tile_grid(775, 522, tile_size=256, stride=128, edge_mode=EdgeMode.SHIFT):
        assert window.valid_width == 256
        assert window.valid_height == 256


def test_padded_tiles_use_white_and_ignore():
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    mask = np.ones((100, 300), dtype=np.uint8)
    tiles = list(cut_tiles(image, mask, tile_size=128, stride=128, edge_mode=EdgeMode.PAD, ignore_index=255))
    assert [w.x for w, _, _ in tiles] == [0, 128, 256]
    last_window, last_image, last_mask = tiles[-1]
    assert last_window.valid_width == 44
    assert last_window.valid_height == 100
    assert (last_image[:100, :44] == 0).all()
    assert (last_image[:, 44:] == PAD_IMAGE_VALUE).all()
    assert (last_image[100:] == PAD_IMAGE_VALUE).all()
    assert (last_mask[:100, :44] == 1).all()
    assert (last_mask[:, 44:] == 255).all()
    assert (last_mask[100:] == 255).all()


def test_invalid_grid_arguments_raise():
    with pytest.raises(ValueError, match="positive"):
        tile_origins(0, tile_size=256, stride=128, edge_mode=EdgeMode.SHIFT)
    with pytest.raises(ValueError, match="positive"):
        tile_origins(500, tile_size=256, stride=0, edge_mode=EdgeMode.SHIFT)
