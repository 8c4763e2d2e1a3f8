"""Label maps: how raw mask values and annotation class names become class ids."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cancerseg_ray.errors import ConfigError, LabelMapError

DEFAULT_IGNORE_INDEX = 255
"""Class id for unlabelled pixels; it fits the 8-bit mask PNGs and is ignored by the loss."""


class ClassSpec(BaseModel):
    """One target class and the source values that map to it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    colour: str = Field(default="#808080", pattern=r"^#[0-9a-fA-F]{6}$", description="Display colour, #RRGGBB.")
    mask_values: list[int] = Field(default_factory=list, description="Raw mask values of this class.")
    annotation_names: list[str] = Field(
        default_factory=list, description="Annotation class names (QuPath classification) of this class."
    )


class LabelMap(BaseModel):
    """Mapping from raw mask values or annotation names to contiguous class ids.

    The class id of a class is its position in ``classes``. Raw mask values
    listed in ``ignore_mask_values`` become ``ignore_index``; any other raw
    value that no class lists is an error, so a wrong label map never passes
    silently.
    """

    model_config = ConfigDict(extra="forbid")

    classes: list[ClassSpec] = Field(min_length=2)
    ignore_index: int = Field(default=DEFAULT_IGNORE_INDEX, ge=0, le=255)
    ignore_mask_values: list[int] = Field(default_factory=list)
    ignore_annotation_names: list[str] = Field(default_factory=list)
    precedence: list[str] | None = Field(
        default=None,
        description="Class names from lowest to highest priority where annotation polygons of "
        "different classes overlap; the last one wins. Default: class-id order, the highest id wins.",
    )

    @field_validator("classes")
    @classmethod
    def _unique_names(cls, classes: list[ClassSpec]) -> list[ClassSpec]:
        names = [spec.name for spec in classes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique, repeated: {duplicates}")
        return classes

    @model_validator(mode="after")
    def _check_values(self) -> LabelMap:
        if self.ignore_index < len(self.classes):
            raise ValueError(
                f"ignore_index {self.ignore_index} collides with class ids 0..{len(self.classes) - 1}; "
                "use a value such as 255"
            )
        seen: dict[int, str] = {}
        for spec in self.classes:
            for value in spec.mask_values:
                if value in seen:
                    raise ValueError(f"mask value {value} is listed for both {seen[value]!r} and {spec.name!r}")
                seen[value] = spec.name
        clash = sorted(set(seen) & set(self.ignore_mask_values))
        if clash:
            raise ValueError(f"mask values {clash} are listed both as a class and as ignored")
        self._check_annotation_names()
        self._check_precedence()
        return self

    def _check_annotation_names(self) -> None:
        owners: dict[str, str] = {}
        for spec in self.classes:
            for name in spec.annotation_names:
                if name in owners and owners[name] != spec.name:
                    raise ValueError(
                        f"annotation name {name!r} is listed for both {owners[name]!r} and {spec.name!r}"
                    )
                owners[name] = spec.name
        clash = sorted(set(owners) & set(self.ignore_annotation_names))
        if clash:
            raise ValueError(f"annotation names {clash} are listed both for a class and as ignored")

    def _check_precedence(self) -> None:
        if self.precedence is None:
            return
        names = self.class_names
        unknown = sorted(set(self.precedence) - set(names))
        missing = [name for name in names if name not in self.precedence]
        if unknown or missing or len(set(self.precedence)) != len(self.precedence):
            raise ValueError(
                f"precedence must list every class exactly once; unknown: {unknown}, missing: {missing}, "
                f"given: {self.precedence}"
            )

    @property
    def class_names(self) -> list[str]:
        return [spec.name for spec in self.classes]

    @property
    def colours(self) -> list[str]:
        return [spec.colour for spec in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def lookup_table(self, max_value: int) -> np.ndarray:
        """Build a lookup table from raw values 0..max_value to class ids; -1 marks unmapped values."""
        table = np.full(max(max_value, 255) + 1, -1, dtype=np.int32)
        for class_id, spec in enumerate(self.classes):
            for value in spec.mask_values:
                if value < table.size:
                    table[value] = class_id
        for value in self.ignore_mask_values:
            if value < table.size:
                table[value] = self.ignore_index
        return table

    def map_mask(self, raw: np.ndarray, *, source: str) -> np.ndarray:
        """Turn a raw label mask into a uint8 class-id mask.

        Args:
            raw: 2-D integer mask as stored in the dataset.
            source: File name used in error messages.

        Raises:
            LabelMapError: If the mask has values that the label map does not cover.
        """
        if raw.ndim != 2:
            raise LabelMapError(f"{source}: expected a single-channel mask, got shape {raw.shape}")
        if not np.issubdtype(raw.dtype, np.integer):
            raise LabelMapError(f"{source}: mask must hold integer values, got dtype {raw.dtype}")
        if raw.size and raw.min() < 0:
            raise LabelMapError(f"{source}: mask has negative value {int(raw.min())}")
        table = self.lookup_table(int(raw.max()) if raw.size else 0)
        mapped = table[raw]
        unmapped = np.unique(raw[mapped < 0])
        if unmapped.size:
            known = sorted({v for spec in self.classes for v in spec.mask_values} | set(self.ignore_mask_values))
            raise LabelMapError(
                f"{source}: mask values {unmapped.tolist()} are not in the label map "
                f"(it maps {known}); add them to a class's mask_values or to ignore_mask_values"
            )
        return mapped.astype(np.uint8)

    def annotation_lookup(self) -> dict[str, str | None]:
        """Map annotation class names to target class names; ignored names map to None.

        A class matches the names in its ``annotation_names``, or its own name
        when that list is empty.
        """
        lookup: dict[str, str | None] = {name: None for name in self.ignore_annotation_names}
        for spec in self.classes:
            for name in spec.annotation_names or [spec.name]:
                lookup[name] = spec.name
        return lookup

    def resolve_annotation_names(self, names: Iterable[str], *, source: str) -> dict[str, str | None]:
        """Map the annotation class names found in one file to target classes.

        Args:
            names: Class names found in the annotation file.
            source: Annotation file, named in the error message.

        Returns:
            Annotation name -> target class name, or None for ignored names.

        Raises:
            LabelMapError: Listing every name that the label map neither maps nor ignores.
        """
        lookup = self.annotation_lookup()
        found = sorted(set(names))
        unknown = [name for name in found if name not in lookup]
        if unknown:
            raise LabelMapError(
                f"{source}: annotation classes {unknown} are not in the label map (it maps "
                f"{sorted(k for k, v in lookup.items() if v is not None)} and ignores "
                f"{sorted(self.ignore_annotation_names)}); add them to a class's annotation_names "
                "or to ignore_annotation_names"
            )
        return {name: lookup[name] for name in found}

    def class_id(self, name: str) -> int:
        """Return the class id of a target class name.

        Raises:
            ConfigError: If no class has that name.
        """
        names = self.class_names
        if name not in names:
            raise ConfigError(f"class {name!r} is not in the label map; classes: {names}")
        return names.index(name)

    def to_class_map(self) -> dict[str, Any]:
        """Describe the classes as plain data for checkpoints and reports."""
        return {
            "class_names": self.class_names,
            "colours": self.colours,
            "ignore_index": self.ignore_index,
        }


def load_label_map(path: str | Path) -> LabelMap:
    """Read a label map from a YAML or JSON file.

    Raises:
        ConfigError: If the file is missing or invalid, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"label map file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"label map {path} is not valid YAML or JSON: {error}") from error
    try:
        return LabelMap.model_validate(data)
    except ValueError as error:
        raise ConfigError(f"label map {path} is invalid: {error}") from error
