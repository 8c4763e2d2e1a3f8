"""Online augmentation of training tiles, applied in Ray Data ``map_batches``.

Only the training split is augmented, and only while it streams into the
training workers, so no augmented copy of a validation or test tile ever
exists. Geometric transforms (flips, 90-degree rotations) move image and mask
together; colour transforms (HED stain jitter, brightness and contrast) touch
the image only.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from skimage.color import hed2rgb, rgb2hed

from cancerseg_ray.data.loading import IMAGE_KEY, MASK_KEY, TILE_KEY


class AugmentationSettings(BaseModel):
    """Augmentations to apply and their strengths."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    flips: bool = True
    rotations: bool = Field(default=True, description="Random multiples of 90 degrees.")
    hed_jitter: float = Field(
        default=0.03, ge=0.0, le=0.5,
        description="Per-stain scale and shift range in HED space (0 turns stain jitter off).",
    )
    brightness: float = Field(default=0.1, ge=0.0, le=1.0, description="Maximum relative brightness change.")
    contrast: float = Field(default=0.1, ge=0.0, le=1.0, description="Maximum relative contrast change.")


def _jitter_hed(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Perturb the haematoxylin, eosin and DAB concentrations (Ruifrok-Johnston deconvolution)."""
    hed = rgb2hed(image)
    scale = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    shift = rng.uniform(-strength, strength, size=3)
    rgb = hed2rgb(hed * scale + shift)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _adjust_brightness_contrast(image: np.ndarray, rng: np.random.Generator, brightness: float,
                                contrast: float) -> np.ndarray:
    x = image.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1.0 - contrast, 1.0 + contrast) + mean
    x = x * rng.uniform(1.0 - brightness, 1.0 + brightness)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def augment_tile(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                 settings: AugmentationSettings) -> tuple[np.ndarray, np.ndarray]:
    """Apply random augmentations to one (H, W, 3) image and its (H, W) mask."""
    if settings.flips and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if settings.flips and rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if settings.rotations:
        turns = int(rng.integers(0, 4))
        image, mask = np.rot90(image, turns), np.rot90(mask, turns)
    image = np.ascontiguousarray(image)
    if settings.hed_jitter > 0:
        image = _jitter_hed(image, rng, settings.hed_jitter)
    if settings.brightness > 0 or settings.contrast > 0:
        image = _adjust_brightness_contrast(image, rng, settings.brightness, settings.contrast)
    return image, np.ascontiguousarray(mask)


def augment_batch(batch: dict[str, np.ndarray], *, settings: AugmentationSettings, seed: int) -> dict[str, np.ndarray]:
    """Augment a batch of decoded training tiles (a Ray Data batch UDF).

    The generator mixes the run seed with fresh operating-system entropy, so
    every epoch draws new augmentations.

    NOTE: Ray Data re-runs this function on every epoch in whichever worker
    process is free, so the draws cannot be tied to the epoch and are not
    reproducible. Disable augmentation for bit-identical CPU runs.
    """
    rng = np.random.default_rng([seed, int(np.random.SeedSequence().entropy % 2**63)])
    images, masks = [], []
    for image, mask in zip(batch[IMAGE_KEY], batch[MASK_KEY], strict=True):
        augmented_image, augmented_mask = augment_tile(image, mask, rng, settings)
        images.append(augmented_image)
        masks.append(augmented_mask)
    return {IMAGE_KEY: np.stack(images), MASK_KEY: np.stack(masks), TILE_KEY: batch[TILE_KEY]}
