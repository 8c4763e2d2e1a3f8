"""Typed configuration of the ingest job for every source kind.

``IngestConfig.source`` is a discriminated union on ``kind``:

- ``folder``: image and mask folders (the folder ingest of ``ingest.py``);
- ``slides``: whole-slide images (OpenSlide formats, plain images) with
  QuPath GeoJSON or ImageScope XML polygon annotations, listed by a CSV
  manifest or matched by file stem in two folders;
- ``bcss``: BCSS ROI images and masks named ``<slide>_xmin<X>_ymin<Y>_MPP-<mpp>.png``;
- ``pannuke``: PanNuke fold folders with ``images.npy``, ``masks.npy`` and ``types.npy``;
- ``puma``: PUMA 1024 x 1024 ROI TIFFs with tissue GeoJSON;
- ``coco``: an image folder with a COCO instance-segmentation JSON.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cancerseg_ray import storage
from cancerseg_ray.data.config import (
    OUTPUT_DIR_DESCRIPTION,
    FolderIngestConfig,
    SplitConfig,
    TilingConfig,
)
from cancerseg_ray.data.labels import LabelMap, load_label_map
from cancerseg_ray.data.schema import Split
from cancerseg_ray.data.splits import GroupBy
from cancerseg_ray.io.images import IMAGE_EXTENSIONS
from cancerseg_ray.io.slides import WHOLE_SLIDE_SUFFIXES


class AnnotationOrigin(StrEnum):
    """Origin of the annotation coordinates.

    - ``level0``: level-0 pixel coordinates of the whole slide file.
    - ``bounds``: coordinates relative to the scanned area's corner
      (``openslide.bounds-x``, ``openslide.bounds-y``), as written by viewers
      that crop a slide to its bounds. The offset is added before tiling.
    """

    LEVEL0 = "level0"
    BOUNDS = "bounds"


class TissueConfig(BaseModel):
    """Tissue detection on a slide thumbnail (Otsu threshold on HSV saturation)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Skip tiles with too little tissue; slides, PUMA ROIs only.")
    thumbnail_size: int = Field(default=2048, ge=64, le=16384, description="Longer side of the thumbnail in pixels.")
    min_tissue_fraction: float = Field(
        default=0.25, ge=0.0, le=1.0, description="Tiles whose tissue share is below this are skipped."
    )
    min_saturation: int | None = Field(
        default=None, ge=0, le=255, description="Saturation floor of the threshold; default 20."
    )


class FolderSource(BaseModel):
    """Image and mask folders whose files share a stem."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["folder"] = "folder"
    images_dir: Path
    masks_dir: Path
    mask_suffix: str = Field(default="", description="Added to an image's stem to name its mask, e.g. '_anno'.")
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))


class SlidesSource(BaseModel):
    """Whole-slide images with polygon annotations.

    Either ``manifest`` (a CSV file) or ``slides_dir`` with ``annotations_dir``
    lists the slides. The manifest has a header row with the columns
    ``slide`` (required), ``annotations``, ``mpp``, ``patient`` and
    ``tissue_type``; relative paths are resolved against the manifest's folder.
    An ``mpp`` value overrides the slide's resolution for that slide.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["slides"] = "slides"
    manifest: Path | None = None
    slides_dir: Path | None = None
    annotations_dir: Path | None = None
    slide_extensions: list[str] = Field(
        default_factory=lambda: sorted(WHOLE_SLIDE_SUFFIXES | {".tif", ".tiff", ".png", ".jpg", ".jpeg"})
    )
    annotation_extensions: list[str] = Field(default_factory=lambda: [".geojson", ".json", ".xml"])
    annotation_suffix: str = Field(default="", description="Added to a slide's stem to name its annotation file.")
    annotation_origin: AnnotationOrigin = AnnotationOrigin.LEVEL0
    default_class: str | None = Field(
        default=None, description="Class of polygons without a classification (MoNuSeg XML has none)."
    )
    object_types: list[str] | None = Field(
        default=None, description="QuPath object types to keep, e.g. [annotation]; default all."
    )
    unannotated_class: str | None = Field(
        default=None, description="Class of pixels that no polygon covers; default: unlabelled (ignore index)."
    )

    @model_validator(mode="after")
    def _one_listing(self) -> SlidesSource:
        if (self.manifest is None) == (self.slides_dir is None):
            raise ValueError("give either manifest or slides_dir (with annotations_dir), not both or neither")
        if self.slides_dir is not None and self.annotations_dir is None:
            raise ValueError("slides_dir needs annotations_dir, the folder of the annotation files")
        return self


class BcssSource(BaseModel):
    """BCSS ROIs in the layout of the official release."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["bcss"] = "bcss"
    images_dir: Path = Field(description="Folder of RGB ROIs, e.g. rgbs_colorNormalized.")
    masks_dir: Path
    codes_file: Path = Field(description="meta/gtruth_codes.tsv: label<TAB>GT_code.")
    drop_rare_class_tiles: bool = Field(
        default=False,
        description="Drop tiles dominated by mask codes that make up less than rare_class_share "
        "of the labelled pixels of all ROIs (the published preparation).",
    )
    rare_class_share: float = Field(default=0.01, gt=0.0, lt=1.0)
    dominated_fraction: float = Field(
        default=0.5, gt=0.0, le=1.0,
        description="A tile is dominated when more than this share of its labelled pixels has rare codes.",
    )


class PanNukeSource(BaseModel):
    """PanNuke fold folders, each with images.npy, masks.npy and types.npy somewhere inside."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["pannuke"] = "pannuke"
    root: Path = Field(description="Folder that contains the fold folders ('Fold 1', 'fold2', 'fold_3', ...).")
    fold_splits: dict[int, Split] = Field(
        default_factory=lambda: {1: Split.TRAIN, 2: Split.VAL, 3: Split.TEST},
        description="Split of each fold number; folds not listed are not read.",
    )
    patches_per_shard: int = Field(default=512, ge=1, description="Patches tiled by one Ray task into one shard.")
    mpp: float = Field(default=0.25, gt=0, description="Resolution of the patches (PanNuke is at 40x, about 0.25 µm/px).")


class PumaSource(BaseModel):
    """PUMA ROI TIFFs with tissue annotations as QuPath GeoJSON."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["puma"] = "puma"
    rois_dir: Path = Field(description="Folder of ROI TIFFs, e.g. 01_training_dataset_tif_ROIs.")
    annotations_dir: Path = Field(description="Folder of tissue GeoJSON files.")
    annotation_suffix: str = Field(default="_tissue", description="Added to an ROI's stem to name its GeoJSON.")
    mpp: float = Field(default=0.23, gt=0, description="Resolution of the ROIs; the TIFFs store only a writer default.")
    unannotated_class: str | None = None


class CocoSource(BaseModel):
    """An image folder with a COCO instance-segmentation JSON (RLE or polygon segmentations)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["coco"] = "coco"
    images_dir: Path
    annotations_file: Path
    mpp: float | None = Field(default=None, gt=0, description="Resolution of the images in µm/px, if known.")
    unannotated_class: str | None = Field(
        default="background", description="Class of pixels that no instance covers; None leaves them unlabelled."
    )


Source = Annotated[
    FolderSource | SlidesSource | BcssSource | PanNukeSource | PumaSource | CocoSource,
    Field(discriminator="kind"),
]

DEFAULT_GROUP_BY = {
    "folder": GroupBy.IMAGE,
    "slides": GroupBy.SLIDE,
    "bcss": GroupBy.SLIDE,
    "pannuke": GroupBy.FOLD,
    "puma": GroupBy.IMAGE,
    "coco": GroupBy.IMAGE,
}


class IngestConfig(BaseModel):
    """Ingest of any source kind into Parquet tile shards."""

    model_config = ConfigDict(extra="forbid")

    dataset_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    source: Source
    label_map: LabelMap | Path
    mpp: float | None = Field(
        default=None, gt=0,
        description="Level-0 resolution in µm/px for every slide or image of the run (the --mpp option); "
        "a manifest's mpp column wins for its slide.",
    )
    target_mpp: float | None = Field(
        default=None, gt=0, description="Resolution of the tiles in µm/px; default: the source's own."
    )
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    tissue: TissueConfig = Field(default_factory=TissueConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    output_dir: str = Field(default="outputs/shards", description=OUTPUT_DIR_DESCRIPTION)
    overwrite: bool = Field(default=False, description="Re-tile items whose shards already exist.")

    _location_text = field_validator("output_dir", mode="before")(storage.location_text)

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        if isinstance(self.label_map, Path):
            self.label_map = load_label_map(self.label_map)
        group_by = self.group_by
        if group_by is GroupBy.FOLD and self.source.kind != "pannuke":
            raise ValueError("group_by: fold exists only for PanNuke")
        if self.source.kind == "pannuke" and group_by not in (GroupBy.FOLD, GroupBy.TILE):
            raise ValueError("PanNuke splits by fold (group_by: fold) or, with a leakage warning, by tile")
        if self.source.kind == "folder" and group_by not in (GroupBy.IMAGE, GroupBy.SLIDE, GroupBy.PATIENT):
            raise ValueError("folder ingest splits by image, slide or patient")
        unannotated = getattr(self.source, "unannotated_class", None)
        if unannotated is not None and unannotated not in self.labels.class_names:
            raise ValueError(
                f"unannotated_class {unannotated!r} is not a class of the label map: {self.labels.class_names}"
            )
        default = getattr(self.source, "default_class", None)
        if default is not None and default not in self.labels.annotation_lookup():
            raise ValueError(
                f"default_class {default!r} is neither mapped nor ignored by the label map; add it to a "
                "class's annotation_names"
            )
        return self

    @property
    def labels(self) -> LabelMap:
        assert isinstance(self.label_map, LabelMap)  # resolved by the validator
        return self.label_map

    @property
    def group_by(self) -> GroupBy:
        """The split unit: the configured one or the source kind's default."""
        return self.splits.group_by or DEFAULT_GROUP_BY[self.source.kind]

    def to_folder_config(self) -> FolderIngestConfig:
        """Convert a ``kind: folder`` config into the folder ingest's own config."""
        if not isinstance(self.source, FolderSource):
            raise TypeError(f"source kind is {self.source.kind!r}, not 'folder'")
        return FolderIngestConfig(
            dataset_name=self.dataset_name,
            images_dir=self.source.images_dir,
            masks_dir=self.source.masks_dir,
            mask_suffix=self.source.mask_suffix,
            extensions=self.source.extensions,
            label_map=self.labels,
            mpp=self.mpp,
            target_mpp=self.target_mpp,
            tiling=self.tiling,
            splits=self.splits,
            output_dir=self.output_dir,
            overwrite=self.overwrite,
        )
