"""Loading the served checkpoint and predicting class probabilities for batches of tiles.

The same ``TilePredictor`` runs inside the Ray Serve model replicas, inside
the batch job's Ray Data actors and in the benchmark's bare forward pass.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from cancerseg_ray import storage
from cancerseg_ray.data.transforms import to_model_input
from cancerseg_ray.errors import CheckpointError
from cancerseg_ray.serve.checkpoint_cache import cached_checkpoint
from cancerseg_ray.serve.config import ModelSource
from cancerseg_ray.train.checkpoint import file_digest, load_checkpoint, load_model

logger = logging.getLogger(__name__)

DEFAULT_TILE_SIZE = 256
"""Tile side used when neither best.json nor the config gives one (the project's training default)."""


class ModelInfo(BaseModel):
    """Metadata of the served model: everything a client needs to send tiles and read masks.

    Attributes:
        checkpoint: Absolute path of the checkpoint file, or its ``s3://`` or ``gs://`` URI.
        checkpoint_sha256: SHA-256 of that file.
        variant: Registered model variant.
        epoch: Training epoch the checkpoint was saved at.
        class_names: Class names; the index is the value in the masks.
        colours: Class colours as ``[r, g, b]``, 0-255.
        ignore_index: Mask value of pixels that were not scored (outside tissue).
        mpp: Resolution the model expects, in micrometres per pixel, or None when unknown.
        tile_size: Tile side in pixels that the model is fed.
        dataset_name: Training data set, when best.json names it.
    """

    model_config = ConfigDict(frozen=True)

    checkpoint: str
    checkpoint_sha256: str
    variant: str
    epoch: int
    class_names: list[str]
    colours: list[tuple[int, int, int]]
    ignore_index: int
    mpp: float | None
    tile_size: int
    dataset_name: str | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes the model predicts."""
        return len(self.class_names)


def parse_colour(colour: str | list[int] | tuple[int, ...], *, source: str) -> tuple[int, int, int]:
    """Convert ``#rrggbb`` or ``[r, g, b]`` into an RGB tuple of 0-255 integers."""
    if isinstance(colour, str):
        text = colour.lstrip("#")
        if len(text) == 6:
            try:
                return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
            except ValueError:
                pass
    elif len(colour) == 3 and all(isinstance(value, int) and 0 <= value <= 255 for value in colour):
        return (int(colour[0]), int(colour[1]), int(colour[2]))
    raise CheckpointError(f"{source}: class colour {colour!r} is neither '#rrggbb' nor [r, g, b] with 0-255 values")


def _read_best_file(location: str) -> dict:
    checkpoint_label = storage.redact(location)
    if storage.is_remote(location):
        try:
            text = storage.read_bytes(location)
        except storage.StorageNotFoundError as error:
            raise CheckpointError(
                f"best-checkpoint file not found: {checkpoint_label}; run the evaluation job or give a checkpoint path"
            ) from error
        except storage.StorageError as error:
            raise CheckpointError(f"failed to read the best-checkpoint file {checkpoint_label}: {error}") from error
    else:
        path = Path(location)
        if not path.is_file():
            raise CheckpointError(f"best-checkpoint file not found: {path}; run the evaluation job or give a checkpoint path")
        text = path.read_bytes()
    try:
        best = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{checkpoint_label} is not valid JSON: {error}") from error
    if not isinstance(best, dict) or "checkpoint" not in best:
        raise CheckpointError(f"{checkpoint_label} has no 'checkpoint' field; it is not a best.json of the evaluation job")
    return best


def _locate_checkpoint(best_location: str, named: str) -> str:
    """Find the checkpoint best.json names.

    A URI is taken as it is. A relative path is looked up in the working folder
    and then in best.json's folder. When best.json is in an object store, a
    relative path names an object beside it.
    """
    if storage.is_remote(named):
        return named
    candidate = Path(named)
    if candidate.is_absolute():
        return named
    if storage.is_remote(best_location):
        return storage.join(storage.parent_location(best_location), *candidate.parts)
    for base in (Path.cwd(), Path(best_location).parent):
        if (base / candidate).exists():
            return str(base / candidate)
    return named


def checkpoint_file(info: ModelInfo, *, cache_dir: str | Path | None = None) -> Path:
    """Return the local checkpoint file of a model, downloading one at an object-store URI into the cache.

    Raises:
        CheckpointError: If the download fails or the file differs from the one ``resolve_model`` read.
    """
    if storage.is_remote(info.checkpoint):
        return cached_checkpoint(info.checkpoint, cache_dir=cache_dir, expected_sha256=info.checkpoint_sha256)
    return Path(info.checkpoint)


def resolve_model(source: ModelSource) -> ModelInfo:
    """Read the checkpoint's metadata and check it against best.json.

    The checkpoint is loaded with ``torch.load(weights_only=True)``, so no
    pickled code runs. When best.json gives ``checkpoint_sha256``, the file's
    hash must match it. A checkpoint at an object-store URI is downloaded into
    ``source.cache_dir`` first, and ``ModelInfo.checkpoint`` keeps its URI, so
    that processes on other nodes download it too.

    Raises:
        CheckpointError: If a file is missing or unreadable, or the hash differs.
    """
    best: dict = {}
    if source.best_file is not None:
        best = _read_best_file(source.best_file)
        location = _locate_checkpoint(source.best_file, str(best["checkpoint"]))
    else:
        location = str(source.checkpoint)
    expected = best.get("checkpoint_sha256")

    if storage.is_remote(location):
        checkpoint = location
        checkpoint_path = cached_checkpoint(location, cache_dir=source.cache_dir, expected_sha256=expected)
    else:
        checkpoint_path = Path(location)
        if checkpoint_path.is_dir():
            checkpoint_path = checkpoint_path / "checkpoint.pt"
        checkpoint_path = checkpoint_path.resolve()
        checkpoint = str(checkpoint_path)
    checkpoint_label = storage.redact(checkpoint)

    payload = load_checkpoint(checkpoint_path)
    digest = file_digest(checkpoint_path)
    if expected is not None and expected != digest:
        raise CheckpointError(
            f"{checkpoint_label} has SHA-256 {digest}, but {storage.redact(source.best_file)} expects {expected}; "
            "the checkpoint changed after evaluation. Evaluate again or serve the checkpoint by path."
        )

    class_map = payload["class_map"]
    try:
        class_names = [str(name) for name in class_map["class_names"]]
        colours = [parse_colour(colour, source=checkpoint_label) for colour in class_map["colours"]]
        ignore_index = int(class_map.get("ignore_index", 255))
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{checkpoint_label}: class_map lacks class_names or colours ({error})") from error
    if len(colours) != len(class_names):
        raise CheckpointError(
            f"{checkpoint_label}: class_map has {len(class_names)} class names but {len(colours)} colours"
        )

    tile_size = source.tile_size or best.get("tile_size")
    if tile_size is None:
        logger.warning("%s: no tile size in the config or best.json; using %d", checkpoint_label, DEFAULT_TILE_SIZE)
        tile_size = DEFAULT_TILE_SIZE
    mpp = source.model_mpp if source.model_mpp is not None else best.get("mpp")
    return ModelInfo(
        checkpoint=checkpoint,
        checkpoint_sha256=digest,
        variant=str(payload["model_config"]["variant"]),
        epoch=int(payload["epoch"]),
        class_names=class_names,
        colours=colours,
        ignore_index=ignore_index,
        mpp=None if mpp is None else float(mpp),
        tile_size=int(tile_size),
        dataset_name=best.get("dataset_name"),
    )


def pick_device(requested: str) -> torch.device:
    """Map ``auto``, ``cpu`` or ``cuda`` to a torch device; ``cuda`` without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("device 'cuda' was requested but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class TilePredictor:
    """The served model in eval mode, predicting softmax probabilities for uint8 RGB tiles.

    Args:
        info: Metadata from ``resolve_model``; its checkpoint is loaded here.
        device: ``auto``, ``cpu`` or ``cuda``.
        cache_dir: Local folder for a checkpoint downloaded from an object store;
            default ``cancerseg-checkpoints`` in the temporary folder.
    """

    def __init__(self, info: ModelInfo, *, device: str = "auto", cache_dir: str | Path | None = None) -> None:
        self.info = info
        self.device = pick_device(device)
        self.model, _ = load_model(checkpoint_file(info, cache_dir=cache_dir), map_location=self.device)
        self.model.to(self.device)
        logger.info(
            "loaded %s (epoch %d, sha256 %s) on %s", info.variant, info.epoch, info.checkpoint_sha256[:12], self.device
        )

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predict class probabilities.

        Args:
            images: (N, H, W, 3) uint8 RGB tiles of one size. Sides that are
                not multiples of 16 (the encoder's output stride) are padded
                with white and cropped again.

        Returns:
            (N, C, H, W) float32 softmax probabilities.
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
        height, width = images.shape[1:3]
        pad_bottom, pad_right = -height % 16, -width % 16
        if pad_bottom or pad_right:
            images = np.pad(images, ((0, 0), (0, pad_bottom), (0, pad_right), (0, 0)), constant_values=255)
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        inputs = to_model_input(batch, mean=self.model.input_mean, std=self.model.input_std)
        probabilities = torch.softmax(self.model(inputs).float(), dim=1)
        return probabilities[:, :, :height, :width].cpu().numpy()
