"""Typed configuration of the ingest jobs."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cancerseg_ray import storage
from cancerseg_ray.data.labels import LabelMap, load_label_map
from cancerseg_ray.data.splits import GroupBy, SplitFractions
from cancerseg_ray.data.tiling import EdgeMode
from cancerseg_ray.io.images import IMAGE_EXTENSIONS

OUTPUT_DIR_DESCRIPTION = (
    "Shard folder: a local path, or an s3:// or gs:// URI (S3 options such as endpoint_override in its query)."
)


class SplitConfig(BaseModel):
    """Assignment of images to the train, validation and test splits."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    fractions: SplitFractions = Field(default_factory=SplitFractions)
    split_file: Path | None = Field(
        default=None, description="Existing splits.json to reuse instead of drawing a new split."
    )
    group_by: GroupBy | None = Field(
        default=None,
        description="Unit kept whole in one split: image, slide, patient, fold (PanNuke) or tile "
        "(random per tile, leaks overlapping tiles into the test set; logs a warning). "
        "Default: image for folders and COCO, slide for slides and BCSS, image for PUMA, fold for PanNuke.",
    )


class TilingConfig(BaseModel):
    """Tile size, overlap and border handling."""

    model_config = ConfigDict(extra="forbid")

    tile_size: int = Field(default=256, ge=16, le=4096, description="Tile height and width in pixels.")
    stride: int | None = Field(default=None, ge=1, description="Step between tiles in pixels; default tile_size / 2 (50 % overlap).")
    edge_mode: EdgeMode = EdgeMode.SHIFT
    min_labelled_fraction: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Tiles whose labelled share is at or below this are dropped; tiles with no labelled pixel are always dropped.",
    )

    @property
    def effective_stride(self) -> int:
        return self.stride or self.tile_size // 2


class FolderIngestConfig(BaseModel):
    """Ingest of a folder of images with a folder of label masks of the same names."""

    model_config = ConfigDict(extra="forbid")

    dataset_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    images_dir: Path
    masks_dir: Path
    mask_suffix: str = Field(default="", description="Added to an image's stem to name its mask, e.g. '_anno'.")
    label_map: LabelMap | Path
    mpp: float | None = Field(default=None, gt=0, description="Micrometres per pixel of the images, recorded in every row.")
    target_mpp: float | None = Field(
        default=None, gt=0,
        description="Resample images to this many micrometres per pixel before tiling (needs mpp); default: native.",
    )
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    output_dir: str = Field(default="outputs/shards", description=OUTPUT_DIR_DESCRIPTION)
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    overwrite: bool = Field(default=False, description="Re-tile images whose shards already exist.")

    _location_text = field_validator("output_dir", mode="before")(storage.location_text)

    @model_validator(mode="after")
    def _load_label_map(self) -> FolderIngestConfig:
        if self.target_mpp is not None and self.mpp is None:
            raise ValueError("target_mpp needs mpp, the resolution of the input images")
        if isinstance(self.label_map, Path):
            self.label_map = load_label_map(self.label_map)
        return self

    @property
    def downsample(self) -> float:
        """Source pixels per tile pixel."""
        if self.target_mpp is None or self.mpp is None:
            return 1.0
        return self.target_mpp / self.mpp

    @property
    def tile_mpp(self) -> float | None:
        return self.target_mpp or self.mpp

    @property
    def labels(self) -> LabelMap:
        assert isinstance(self.label_map, LabelMap)  # resolved by the validator
        return self.label_map
