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

from cancerseg_ray.data.transforms import to_model_input
from cancerseg_ray.errors import CheckpointError
from cancerseg_ray.serve.config import ModelSource
from cancerseg_ray.train.checkpoint import file_digest, load_checkpoint, load_model

logger = logging.getLogger(__name__)

DEFAULT_TILE_SIZE = 256
"""Tile side used when neither best.json nor the config gives one (the project's training default)."""


class ModelInfo(BaseModel):
    """Metadata of the served model: everything a client needs to send tiles and read masks.

    Attributes:
        checkpoint: Absolute path of the checkpoint file.
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


def _read_best_file(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"best-checkpoint file not found: {path}; run the evaluation job or give a checkpoint path")
    try:
        best = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(best, dict) or "checkpoint" not in best:
        raise CheckpointError(f"{path} has no 'checkpoint' field; it is not a best.json of the evaluation job")
    return best


def _locate_checkpoint(best_path: Path, named: str) -> Path:
    """Find the checkpoint best.json names: absolute, relative to the working folder, or to best.json's folder."""
    candidate = Path(named)
    if candidate.is_absolute():
        return candidate
    for base in (Path.cwd(), best_path.parent):
        if (base / candidate).exists():
            return base / candidate
    return candidate


def resolve_model(source: ModelSource) -> ModelInfo:
    """Read the checkpoint's metadata and check it against best.json.

    The checkpoint is loaded with ``torch.load(weights_only=True)``, so no
    pickled code runs. When best.json gives ``checkpoint_sha256``, the file's
    hash must match it.

    Raises:
        CheckpointError: If a file is missing or unreadable, or the hash differs.
    """
    best: dict = {}
    if source.best_file is not None:
        best = _read_best_file(Path(source.best_file))
        checkpoint_path = _locate_checkpoint(Path(source.best_file), str(best["checkpoint"]))
    else:
        checkpoint_path = Path(source.checkpoint)
    if checkpoint_path.is_dir():
        checkpoint_path = checkpoint_path / "checkpoint.pt"
    checkpoint_path = checkpoint_path.resolve()

    payload = load_checkpoint(checkpoint_path)
    digest = file_digest(checkpoint_path)
    expected = best.get("checkpoint_sha256")
    if expected is not None and expected != digest:
        raise CheckpointError(
            f"{checkpoint_path} has SHA-256 {digest}, but {source.best_file} expects {expected}; "
            "the checkpoint changed after evaluation. Evaluate again or serve the checkpoint by path."
        )

    class_map = payload["class_map"]
    try:
        class_names = [str(name) for name in class_map["class_names"]]
        colours = [parse_colour(colour, source=str(checkpoint_path)) for colour in class_map["colours"]]
        ignore_index = int(class_map.get("ignore_index", 255))
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{checkpoint_path}: class_map lacks class_names or colours ({error})") from error
    if len(colours) != len(class_names):
        raise CheckpointError(
            f"{checkpoint_path}: class_map has {len(class_names)} class names but {len(colours)} colours"
        )

    tile_size = source.tile_size or best.get("tile_size")
    if tile_size is None:
        logger.warning("%s: no tile size in the config or best.json; using %d", checkpoint_path, DEFAULT_TILE_SIZE)
        tile_size = DEFAULT_TILE_SIZE
    mpp = source.model_mpp if source.model_mpp is not None else best.get("mpp")
    return ModelInfo(
        checkpoint=str(checkpoint_path),
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
    """

    def __init__(self, info: ModelInfo, *, device: str = "auto") -> None:
        self.info = info
        self.device = pick_device(device)
        self.model, _ = load_model(info.checkpoint, map_location=self.device)
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
