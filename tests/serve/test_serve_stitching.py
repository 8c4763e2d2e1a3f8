"""Tile grids, blending and the band stitcher, checked against whole-image predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from cancerseg_ray.serve.config import BlendMode, ScoringConfig
from cancerseg_ray.serve.inference import segment_image
from cancerseg_ray.serve.stitch import ArraySink, BandStitcher, ZarrMaskSink
from cancerseg_ray.serve.tiling import (
    TilePosition,
    axis_origins,
    gaussian_weight,
    plan_tiles,
    stride_for,
)

TILE = 64
BORDER = 8
"""Pixels left out at the image border: there the reference is padded with zeros and the tiles with white."""


def local_network(seed: int = 0) -> torch.nn.Module:
    """A fully convolutional network of three 3x3 convolutions (receptive field 7 x 7) with random weights."""
    torch.manual_seed(seed)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 3, 3, padding=1),
    )
    torch.nn.init.zeros_(network[-1].bias)
    return network.eval()


def make_predict(network: torch.nn.Module):
    @torch.inference_mode()
    def predict(images: np.ndarray) -> np.ndarray:
        inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 180.0) / 40.0
        return torch.softmax(network(inputs) * 10.0, dim=1).numpy()
    return predict


def test_axis_origins_cover_the_axis():
    for length in (1, 63, 64, 65, 200, 257):
        origins = axis_origins(length, TILE, 48)
        assert origins[0] == 0
        assert origins[-1] + TILE >= length
        assert all(b - a <= 48 for a, b in zip(origins, origins[1:], strict=False))
        assert origins == sorted(set(origins))
        if length >= TILE:
            assert origins[-1] + TILE == length


def test_plan_tiles_row_major():
    positions = plan_tiles(150, 100, tile_size=TILE, stride=48)
    rows = [position.row for position in positions]
    assert rows == sorted(rows)
    assert len(positions) == len(axis_origins(150, TILE, 48)) * len(axis_origins(100, TILE, 48))


def test_gaussian_weight_peaks_at_centre():
    weight = gaussian_weight(TILE, sigma_fraction=0.125)
    assert weight.shape == (TILE, TILE)
    assert weight.max() == pytest.approx(1.0, abs=1e-3)
    assert weight.min() > 0
    assert weight[TILE // 2, TILE // 2] > weight[0, TILE // 2] > weight[0, 0] - 1e-9


def test_centre_crop_equals_whole_image_prediction(cmu_tile):
    """Centre-crop stitching owns each pixel from the tile whose centre is nearest.

    With an overlap of 16 pixels every owned pixel lies at least 8 pixels inside
    its tile, farther than the 3-pixel reach of the network's receptive field,
    so away from the image border the stitched map equals the whole-image
    forward pass up to float rounding.
    """
    predict = make_predict(local_network())
    whole = predict(cmu_tile[None])[0]
    config = ScoringConfig(blend=BlendMode.CENTRE_CROP, overlap_fraction=0.25, batch_size=4)
    stitched = segment_image(cmu_tile, predict=predict, num_classes=3, tile_size=TILE, config=config)
    inner = (slice(None), slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    assert whole.std(axis=(1, 2)).max() > 0.1, "the reference map must vary, or the comparison proves nothing"
    np.testing.assert_allclose(stitched[inner], whole[inner], atol=1e-5)


def test_gaussian_blend_has_no_seams(cmu_tile):
    """Gaussian blending stays within 0.02 of the whole-image map; hard tile cuts do not."""
    predict = make_predict(local_network())
    whole = predict(cmu_tile[None])[0]
    inner = (slice(None), slice(BORDER, -BORDER), slice(BORDER, -BORDER))

    blended = segment_image(cmu_tile, predict=predict, num_classes=3, tile_size=TILE,
                            config=ScoringConfig(blend=BlendMode.GAUSSIAN, overlap_fraction=0.25))
    blended_error = np.abs(blended - whole)[inner]
    assert blended_error.max() < 0.02
    assert (blended.argmax(0) == whole.argmax(0))[inner[1:]].mean() > 0.999

    # Tiles without overlap see zero padding right at every cut, which shows as seams.
    butted = segment_image(cmu_tile, predict=predict, num_classes=3, tile_size=TILE,
                           config=ScoringConfig(blend=BlendMode.CENTRE_CROP, overlap_fraction=0.0))
    butted_error = np.abs(butted - whole)[inner]
    assert butted_error.max() > 5 * blended_error.max()


def test_segment_image_smaller_than_tile(cmu_tile):
    predict = make_predict(local_network())
    small = cmu_tile[:40, :50]
    stitched = segment_image(small, predict=predict, num_classes=3, tile_size=TILE, config=ScoringConfig())
    assert stitched.shape == (3, 40, 50)
    np.testing.assert_allclose(stitched.sum(axis=0), 1.0, atol=1e-5)


def test_band_stitcher_rows_without_tiles_stay_uncovered():
    sink = ArraySink(num_classes=2, height=300, width=64)
    stitcher = BandStitcher(num_classes=2, height=300, width=64, tile_size=TILE, sink=sink)
    ones = np.ones((2, TILE, TILE), dtype=np.float32) * np.array([0.25, 0.75], dtype=np.float32)[:, None, None]
    weight = np.ones((TILE, TILE), dtype=np.float32)
    stitcher.add(TilePosition(row=0, column=0), ones, weight)
    stitcher.add(TilePosition(row=200, column=0), ones, weight)
    stitcher.close()
    assert sink.covered[:64].all()
    assert not sink.covered[64:200].any()
    assert sink.covered[200:264].all()
    assert not sink.covered[264:].any()
    np.testing.assert_allclose(sink.probabilities[:, 220, 10], [0.25, 0.75])


def test_band_stitcher_rejects_tiles_out_of_order():
    sink = ArraySink(num_classes=1, height=200, width=64)
    stitcher = BandStitcher(num_classes=1, height=200, width=64, tile_size=TILE, sink=sink)
    tile = np.ones((1, TILE, TILE), dtype=np.float32)
    stitcher.add(TilePosition(row=100, column=0), tile, tile[0])
    with pytest.raises(ValueError, match="row-major"):
        stitcher.add(TilePosition(row=0, column=0), tile, tile[0])


def test_zarr_sink_matches_array_sink(tmp_path):
    """The zarr sink writes the same argmax mask as an in-memory stitch, in chunks, and counts pixels."""
    rng = np.random.default_rng(0)
    height, width, chunk = 300, 170, 64
    stride = stride_for(TILE, 0.25)
    positions = plan_tiles(height, width, tile_size=TILE, stride=stride)
    tiles = {position: rng.random((3, TILE, TILE), dtype=np.float32) for position in positions}
    weight = gaussian_weight(TILE, sigma_fraction=0.125)

    memory = ArraySink(num_classes=3, height=height, width=width)
    tissue = np.zeros((height, width), dtype=bool)
    tissue[:, 20:] = True
    store = ZarrMaskSink(tmp_path / "p.zarr", num_classes=3, height=height, width=width, chunk_size=chunk,
                         ignore_index=255, tissue_rows=lambda row0, count: tissue[row0 : row0 + count],
                         keep_probabilities=True)
    for sink in (memory, store):
        stitcher = BandStitcher(num_classes=3, height=height, width=width, tile_size=TILE, sink=sink)
        for position in positions:
            stitcher.add(position, tiles[position], weight)
        stitcher.close()

    expected = np.where(tissue, memory.probabilities.argmax(0), 255).astype(np.uint8)
    written = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    np.testing.assert_array_equal(written["mask"][:], expected)
    np.testing.assert_allclose(written["probabilities"][:], memory.probabilities, atol=1e-3)
    assert store.tissue_pixels == tissue.sum()
    np.testing.assert_array_equal(store.class_pixels[:3], np.bincount(expected[tissue], minlength=3))
