"""Segmentation of single images and whole slides with overlapping, blended tiles.

``segment_image`` stitches in memory and serves tile uploads.
``score_slide`` detects tissue on a thumbnail, reads overlapping tiles at the
model's resolution on a reader thread, sends them in batches to a predict
function (the Serve model replicas or a local ``TilePredictor``), blends the
predictions band by band into a zarr store and writes the slide's outputs.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from cancerseg_ray.errors import ConfigError, InputDataError
from cancerseg_ray.io.slides import BaseReader, open_slide
from cancerseg_ray.io.tissue import detect_tissue, save_tissue_mask_png, tissue_fraction
from cancerseg_ray.serve.config import ScoringConfig
from cancerseg_ray.serve.outputs import (
    PREDICTION_STORE,
    RESULT_FILE,
    SlideScore,
    write_slide_outputs,
    write_slide_score,
)
from cancerseg_ray.serve.predictor import ModelInfo
from cancerseg_ray.serve.stitch import ArraySink, BandStitcher, ZarrMaskSink
from cancerseg_ray.serve.tiling import SlideGrid, TilePosition, TileWeights, plan_tiles, stride_for

logger = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
"""``(N, T, T, 3) uint8 tiles -> (N, C, T, T) float32 probabilities``."""
ProgressFn = Callable[[int, int], None]
"""``(tiles predicted, tiles to predict)``, called once the tiles are planned and after each batch."""

TISSUE_FILE = "tissue.png"
_READER_POLL_S = 0.5


class PredictionShapeError(InputDataError):
    """The predict function returned an array of the wrong shape."""


def segment_image(image: np.ndarray, *, predict: PredictFn, num_classes: int, tile_size: int,
                  config: ScoringConfig) -> np.ndarray:
    """Predict per-class probabilities for an RGB image of any size.

    Images larger than one tile are cut into overlapping tiles that are
    blended as configured; sides shorter than a tile are padded with white.

    Args:
        image: (H, W, 3) uint8 RGB image.
        predict: Batch predict function.
        num_classes: Channels the predict function returns.
        tile_size: Tile side fed to the model.
        config: Overlap, blending and batch size.

    Returns:
        (C, H, W) float32 probabilities.
    """
    height, width = image.shape[:2]
    padded = np.pad(
        image, ((0, max(0, tile_size - height)), (0, max(0, tile_size - width)), (0, 0)), constant_values=255
    )
    stride = stride_for(tile_size, config.overlap_fraction)
    positions = plan_tiles(height, width, tile_size=tile_size, stride=stride)
    weights = TileWeights(height=height, width=width, tile_size=tile_size, stride=stride, mode=config.blend,
                          sigma_fraction=config.gaussian_sigma_fraction)
    sink = ArraySink(num_classes=num_classes, height=height, width=width)
    stitcher = BandStitcher(num_classes=num_classes, height=height, width=width, tile_size=tile_size, sink=sink)
    for start in range(0, len(positions), config.batch_size):
        batch = positions[start : start + config.batch_size]
        tiles = np.stack([
            padded[p.row : p.row + tile_size, p.column : p.column + tile_size] for p in batch
        ])
        probabilities = _checked_predict(predict, tiles, num_classes)
        for position, tile_probabilities in zip(batch, probabilities, strict=True):
            stitcher.add(position, tile_probabilities, weights.weight(position))
    stitcher.close()
    return sink.probabilities


def _checked_predict(predict: PredictFn, tiles: np.ndarray, num_classes: int) -> np.ndarray:
    probabilities = np.asarray(predict(tiles), dtype=np.float32)
    expected = (tiles.shape[0], num_classes, tiles.shape[1], tiles.shape[2])
    if probabilities.shape != expected:
        raise PredictionShapeError(
            f"the predict function returned shape {probabilities.shape} for {tiles.shape[0]} tiles; "
            f"expected {expected}. Check that the served checkpoint matches the model metadata."
        )
    return probabilities


class TissueMap:
    """Tissue mask of a thumbnail, looked up at the pixel centres of the output grid."""

    def __init__(self, mask: np.ndarray, scale: float, grid: SlideGrid) -> None:
        self.mask = mask
        self.scale = scale
        self.grid = grid
        centres_x = grid.origin_x + (np.arange(grid.width) + 0.5) * grid.downsample
        self._columns = np.clip(np.floor(centres_x * scale).astype(np.int64), 0, mask.shape[1] - 1)

    def rows(self, row0: int, count: int) -> np.ndarray:
        """Return the (count, width) bool tissue mask of grid rows ``row0 ..``."""
        centres_y = self.grid.origin_y + (np.arange(row0, row0 + count) + 0.5) * self.grid.downsample
        thumbnail_rows = np.clip(np.floor(centres_y * self.scale).astype(np.int64), 0, self.mask.shape[0] - 1)
        return self.mask[thumbnail_rows[:, None], self._columns[None, :]]


def _tiles_with_tissue(positions: Sequence[TilePosition], grid: SlideGrid, tile_size: int, tissue: TissueMap | None,
                       min_fraction: float) -> list[TilePosition]:
    if tissue is None:
        return list(positions)
    kept = []
    for position in positions:
        x0, y0 = grid.to_level0(position.column, position.row)
        fraction = tissue_fraction(tissue.mask, x0, y0, tile_size * grid.downsample, tissue.scale)
        if fraction > min_fraction:
            kept.append(position)
    return kept


def _read_tiles(reader: BaseReader, grid: SlideGrid, positions: Sequence[TilePosition], *, tile_size: int,
                model_mpp: float, prefetch: int) -> Iterator[tuple[TilePosition, np.ndarray]]:
    """Yield tiles in order while a thread reads ahead; reading errors are raised here."""
    items: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def offer(item: object) -> bool:
        """Put an item on the queue unless the consumer stopped; return whether it was put."""
        while not stop.is_set():
            try:
                items.put(item, timeout=_READER_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for position in positions:
                x0, y0 = grid.to_level0(position.column, position.row)
                if not offer((position, reader.read_tile(x0, y0, tile_size, model_mpp))):
                    return
            offer(done)
        except BaseException as error:  # noqa: BLE001 - re-raised in the consuming thread below
            offer(error)

    thread = threading.Thread(target=produce, name=f"tile-reader-{reader.path.name}", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def score_slide(slide_path: str | Path, *, predict: PredictFn, model: ModelInfo, config: ScoringConfig,
                output_dir: str | Path, mpp_override: float | None = None, slide_id: str | None = None,
                slide_location: str | None = None, progress: ProgressFn | None = None) -> SlideScore:
    """Segment a whole slide and write its outputs into ``output_dir``.

    Outputs: ``mask.tiff`` (pyramidal class mask), ``annotations.geojson``
    (QuPath polygons), ``overlay.png``, ``tissue.png`` and, written last,
    ``result.json`` with the per-class areas. A folder that contains
    ``result.json`` contains a finished slide.

    Args:
        slide_path: Slide or image file.
        predict: Batch predict function of the served model.
        model: Metadata of that model; ``model.mpp`` must be known.
        config: Tiling, blending and output settings.
        output_dir: Folder for the outputs; created if missing.
        mpp_override: Level-0 resolution of the slide in µm/px, replacing its metadata.
        slide_id: Name recorded in the result; default the file stem.
        slide_location: Where the slide came from, recorded in the result instead
            of ``slide_path`` (for a local copy of a slide in an object store).
        progress: Called with the tiles predicted and the tiles to predict.

    Returns:
        The result that was written to ``result.json``.

    Raises:
        ConfigError: If the model's resolution is unknown.
        SlideReadError: If the slide cannot be read.
        MissingResolutionError: If the slide has no resolution and no override is given.
    """
    started = time.perf_counter()
    slide_path = Path(slide_path)
    output_dir = Path(output_dir)
    if model.mpp is None:
        raise ConfigError(
            f"the resolution of model {model.checkpoint} is unknown; set model_mpp in the model settings "
            "(or serve a best.json that records mpp) to score whole slides"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESULT_FILE).unlink(missing_ok=True)
    tile_size = model.tile_size

    with open_slide(slide_path, mpp_override=mpp_override) as reader:
        grid = SlideGrid.from_bounds(reader.bounds, slide_mpp=reader.mpp, model_mpp=model.mpp)
        tissue = None
        if config.detect_tissue:
            thumbnail, scale = reader.thumbnail(config.thumbnail_size)
            tissue_mask = detect_tissue(thumbnail, min_saturation=config.tissue_min_saturation)
            save_tissue_mask_png(tissue_mask, output_dir / TISSUE_FILE)
            tissue = TissueMap(tissue_mask, scale, grid)

        stride = stride_for(tile_size, config.overlap_fraction)
        positions = plan_tiles(grid.height, grid.width, tile_size=tile_size, stride=stride)
        scored = _tiles_with_tissue(positions, grid, tile_size, tissue, config.min_tissue_fraction)
        logger.info(
            "%s: %dx%d grid at %.3f µm/px, %d of %d tiles contain tissue",
            slide_path.name, grid.width, grid.height, model.mpp, len(scored), len(positions),
        )

        sink = ZarrMaskSink(
            output_dir / PREDICTION_STORE, num_classes=model.num_classes, height=grid.height, width=grid.width,
            chunk_size=config.chunk_size, ignore_index=model.ignore_index,
            tissue_rows=None if tissue is None else tissue.rows, keep_probabilities=config.keep_probabilities,
        )
        if progress is not None:
            progress(0, len(scored))
        _stitch_slide(reader, grid, scored, predict=predict, model=model, config=config, sink=sink, stride=stride,
                      progress=progress)

        score = write_slide_outputs(
            reader, sink, grid, output_dir=output_dir, model=model, config=config,
            slide_id=slide_id or slide_path.stem, tiles_total=len(positions), tiles_scored=len(scored),
        )
    if not config.keep_probabilities:
        shutil.rmtree(output_dir / PREDICTION_STORE, ignore_errors=True)
    update: dict[str, object] = {"seconds": round(time.perf_counter() - started, 2)}
    if slide_location is not None:
        update["slide_path"] = slide_location
    score = score.model_copy(update=update)
    write_slide_score(score, output_dir)
    logger.info("%s scored in %.1f s; outputs in %s", slide_path.name, score.seconds, output_dir)
    return score


def _stitch_slide(reader: BaseReader, grid: SlideGrid, positions: list[TilePosition], *, predict: PredictFn,
                  model: ModelInfo, config: ScoringConfig, sink: ZarrMaskSink, stride: int,
                  progress: ProgressFn | None) -> None:
    tile_size = model.tile_size
    weights = TileWeights(height=grid.height, width=grid.width, tile_size=tile_size, stride=stride,
                          mode=config.blend, sigma_fraction=config.gaussian_sigma_fraction)
    stitcher = BandStitcher(num_classes=model.num_classes, height=grid.height, width=grid.width,
                            tile_size=tile_size, sink=sink)
    batch_positions: list[TilePosition] = []
    batch_tiles: list[np.ndarray] = []
    tiles_done = 0

    def run_batch() -> None:
        nonlocal tiles_done
        probabilities = _checked_predict(predict, np.stack(batch_tiles), model.num_classes)
        for position, tile_probabilities in zip(batch_positions, probabilities, strict=True):
            stitcher.add(position, tile_probabilities, weights.weight(position))
        tiles_done += len(batch_tiles)
        batch_positions.clear()
        batch_tiles.clear()
        if progress is not None:
            progress(tiles_done, len(positions))

    tiles = _read_tiles(reader, grid, positions, tile_size=tile_size, model_mpp=model.mpp,
                        prefetch=config.prefetch_tiles)
    for position, tile in tiles:
        batch_positions.append(position)
        batch_tiles.append(tile)
        if len(batch_tiles) == config.batch_size:
            run_batch()
    if batch_tiles:
        run_batch()
    stitcher.close()

