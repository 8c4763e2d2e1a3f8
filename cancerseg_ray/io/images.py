"""Reading plain images (PNG, JPEG, TIFF) and label masks held wholly in memory."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from cancerseg_ray.errors import InputDataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TIFF_EXTENSIONS = (".tif", ".tiff")

# Pillow refuses images above about 179 megapixels by default as a decompression-bomb guard.
# Plain-image datasets here are ROIs; whole slides go through OpenSlide instead.
Image.MAX_IMAGE_PIXELS = 1_000_000_000


def _read_array(path: Path, *, palette_as_indices: bool = False) -> np.ndarray:
    """Read an image file; palette (indexed) images become RGB unless ``palette_as_indices`` is set."""
    if not path.is_file():
        raise InputDataError(f"{path}: file not found")
    try:
        if path.suffix.lower() in _TIFF_EXTENSIONS:
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "PA") and palette_as_indices:
                # An indexed label mask stores class values as palette indices.
                indices = np.asarray(image)
                return indices[..., 0] if image.mode == "PA" else indices
            if image.mode in ("P", "PA"):
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError, tifffile.TiffFileError) as error:
        raise InputDataError(f"{path}: cannot read image ({error}); check that the file is a complete PNG, JPEG or TIFF") from error


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array.

    Greyscale images are repeated over three channels and an alpha channel is
    composited over white.

    Raises:
        InputDataError: If the file is missing, unreadable or not an 8-bit image.
    """
    path = Path(path)
    array = _read_array(path)
    if array.dtype != np.uint8:
        raise InputDataError(f"{path}: expected an 8-bit image, got dtype {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        blended = array[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.round(blended).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    raise InputDataError(f"{path}: expected an RGB or greyscale image, got shape {array.shape}")


def read_label_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel integer label mask as stored on disk.

    An RGB mask whose three channels are equal is accepted as greyscale.

    Raises:
        InputDataError: If the file is missing, unreadable or not a single-channel integer mask.
    """
    path = Path(path)
    array = _read_array(path, palette_as_indices=True)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = array[:, :, :3]
        if not (np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2])):
            raise InputDataError(
                f"{path}: mask is a colour image; save it as a single-channel image of class values"
            )
        array = rgb[:, :, 0]
    if array.ndim != 2:
        raise InputDataError(f"{path}: expected a single-channel mask, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise InputDataError(f"{path}: mask must hold integer class values, got dtype {array.dtype}")
    return array


def encode_png(array: np.ndarray) -> bytes:
    """Encode an RGB (H, W, 3) or single-channel (H, W) uint8 array as PNG."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise InputDataError(f"PNG encoding failed for an array of shape {array.shape}")
    return buffer.tobytes()


def decode_png(data: bytes, *, channels: int) -> np.ndarray:
    """Decode PNG bytes written by encode_png into an RGB or single-channel array."""
    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_UNCHANGED
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if array is None:
        raise InputDataError("a tile's PNG bytes could not be decoded; the shard is corrupt, re-create it")
    if channels == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    return array
