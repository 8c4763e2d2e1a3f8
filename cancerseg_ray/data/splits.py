"""Train, validation and test splits assigned per group (image, slide or patient).

A split is drawn once from a seed, saved to a JSON file and reused by later
runs, so every model of a study sees the same held-out images. Tiles are
never split on their own: overlapping tiles of one image would otherwise land
on both sides.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cancerseg_ray import storage
from cancerseg_ray.data.schema import Split
from cancerseg_ray.data.shards import write_json
from cancerseg_ray.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

SPLITS_FILE_VERSION = 1

TCGA_PATIENT_PATTERN = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", re.IGNORECASE)
"""A TCGA barcode starts with project, tissue source site and participant: ``TCGA-XX-XXXX``."""


class GroupBy(StrEnum):
    """Unit that is kept whole when splits are drawn.

    - ``image``: each source file (image, ROI or slide) is its own group.
    - ``slide``: ROIs or images cut from one slide share a group; the slide
      id comes from the file name (BCSS) or the manifest.
    - ``patient``: all slides of one patient share a group; the patient id is
      the TCGA barcode's first 12 characters or the manifest's patient column.
    - ``fold``: PanNuke's folds are mapped to splits by the config.
    - ``tile``: every tile is assigned at random. Overlapping tiles of one
      slide then land in several splits, so test scores are inflated; this
      exists only to reproduce studies that split this way, and it logs a warning.
    """

    IMAGE = "image"
    SLIDE = "slide"
    PATIENT = "patient"
    FOLD = "fold"
    TILE = "tile"


def tcga_patient_id(name: str) -> str | None:
    """Return the patient part of a TCGA barcode (``TCGA-XX-XXXX``), or None if ``name`` is not one."""
    match = TCGA_PATIENT_PATTERN.match(name)
    return match.group(1).upper() if match else None


def tile_split(key: str, *, fractions: SplitFractions, seed: int) -> Split:
    """Assign one tile to a split by hashing its key with the seed.

    The same key and seed always give the same split, so a re-run puts every
    tile where it was before.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    if draw < fractions.train:
        return Split.TRAIN
    if draw < fractions.train + fractions.val:
        return Split.VAL
    return Split.TEST


class SplitFractions(BaseModel):
    """Share of groups in each split; the three must sum to 1."""

    model_config = ConfigDict(extra="forbid")

    train: float = Field(default=0.6, ge=0.0, le=1.0)
    val: float = Field(default=0.2, ge=0.0, le=1.0)
    test: float = Field(default=0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:.4f}")
        return self


def assign_splits(groups: list[str], *, fractions: SplitFractions, seed: int) -> dict[str, Split]:
    """Assign each group to a split, reproducibly for a given seed.

    Groups are sorted before shuffling, so the result does not depend on the
    order in which files were listed. Every non-zero fraction gets at least one
    group when there are enough groups.

    Args:
        groups: Group identifiers (image ids, slide ids or patient ids).
        fractions: Target share of groups per split.
        seed: Seed of the shuffle.

    Returns:
        Mapping from group to split.
    """
    unique = sorted(set(groups))
    if not unique:
        raise InputDataError("no groups to split: the input has no images")
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]

    wanted = [(Split.TRAIN, fractions.train), (Split.VAL, fractions.val), (Split.TEST, fractions.test)]
    counts = {split: int(round(share * len(unique))) for split, share in wanted}
    # Give every requested split at least one group, taking from the largest split.
    for split, share in wanted:
        if share > 0 and counts[split] == 0 and len(unique) >= sum(1 for _, s in wanted if s > 0):
            largest = max(counts, key=counts.get)
            counts[largest] -= 1
            counts[split] = 1
    counts[Split.TRAIN] += len(unique) - sum(counts.values())

    assignment: dict[str, Split] = {}
    start = 0
    for split, _ in wanted:
        for group in shuffled[start : start + counts[split]]:
            assignment[group] = split
        start += counts[split]
    return assignment


def check_no_overlap(image_to_group: Mapping[str, str], assignment: Mapping[str, Split]) -> None:
    """Raise InputDataError if one group's images fall into more than one split."""
    seen: dict[str, set[Split]] = {}
    for image_id, group in image_to_group.items():
        seen.setdefault(group, set()).add(assignment[image_id] if image_id in assignment else assignment[group])
    leaking = {group: sorted(splits) for group, splits in seen.items() if len(splits) > 1}
    if leaking:
        raise InputDataError(f"split leakage: these groups have images in several splits: {leaking}")


def save_splits(path: Path | str, *, assignment: Mapping[str, Split], image_to_group: Mapping[str, str],
                seed: int, fractions: SplitFractions, group_by: str) -> None:
    """Write the split file atomically, to a local path or an object-store URI."""
    payload: dict[str, Any] = {
        "version": SPLITS_FILE_VERSION,
        "seed": seed,
        "group_by": group_by,
        "fractions": fractions.model_dump(),
        "groups": {group: str(split) for group, split in sorted(assignment.items())},
        "images": {image: group for image, group in sorted(image_to_group.items())},
    }
    write_json(path, payload)


def read_splits_payload(path: Path | str) -> dict[str, Any]:
    """Read a split file from a local path or an object-store URI.

    Raises:
        ConfigError: If the file does not exist or is not valid JSON.
    """
    try:
        return json.loads(storage.read_bytes(path))
    except storage.StorageNotFoundError as error:
        raise ConfigError(f"split file not found: {storage.redact(path)}") from error
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"split file {storage.redact(path)} is invalid ({error}); delete it to draw a new split"
        ) from error


def load_splits(path: Path | str) -> dict[str, Split]:
    """Read a split file written by save_splits and return group -> split."""
    payload = read_splits_payload(path)
    try:
        return {group: Split(split) for group, split in payload["groups"].items()}
    except (KeyError, ValueError, AttributeError, TypeError) as error:
        raise ConfigError(
            f"split file {storage.redact(path)} is invalid ({error}); delete it to draw a new split"
        ) from error


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = storage.make_temporary_file(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2, sort_keys=False, allow_nan=False)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
