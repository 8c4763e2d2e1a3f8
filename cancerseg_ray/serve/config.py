"""Typed settings of whole-slide scoring, the Ray Serve application and the batch scoring job."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from cancerseg_ray import storage

MIB = 1 << 20

# Advice for each config field that takes local paths only, shown when it is given a URI.
_LOCAL_ONLY_REASONS = {
    "slides_dir": "OpenSlide reads local files, so download the slides first or list their URIs in a manifest",
    "manifest": "download the manifest first; its path entries may be s3:// or gs:// URIs",
    "data_root": "OpenSlide reads local files, so mount or download the slides",
    "output_root": "slide jobs of the HTTP API keep their status and outputs on a local or shared file system; "
    "score slides to an object store with jobs/score_slides.py",
}


def _local_only(value: object, info: ValidationInfo) -> object:
    """Reject an object-store URI for a field that must name a local file or folder.

    ``Path("s3://bucket/x")`` would collapse to ``s3:/bucket/x`` and name a
    local folder called ``s3:``, so the text is checked before pydantic turns it into a path.
    """
    text = storage.location_text(value)
    if isinstance(text, str) and "://" in text and storage.is_remote(text):
        raise ValueError(
            f"{info.field_name} must be a local path, got the URI {storage.redact(text)!r}; "
            f"{_LOCAL_ONLY_REASONS.get(info.field_name, 'copy the files to a local folder first')}"
        )
    return value


class BlendMode(StrEnum):
    """Rule that combines overlapping tile predictions into one map."""

    GAUSSIAN = "gaussian"
    """Weighted mean with a 2-D Gaussian weight that peaks at the tile centre."""
    CENTRE_CROP = "centre_crop"
    """Each pixel comes from the tile whose centre is nearest (ties go to the earlier tile)."""


class CoordinateOrigin(StrEnum):
    """Frame of the GeoJSON coordinates."""

    LEVEL0 = "level0"
    """Level-0 pixels of the whole slide file, as OpenSlide's ``read_region`` takes them."""
    BOUNDS = "bounds"
    """Level-0 pixels relative to the top-left corner of the slide's scanned bounds."""


class ModelSource(BaseModel):
    """Checkpoint to load and the resolution it expects.

    Give either ``best_file`` (the ``best.json`` written by the evaluation job)
    or ``checkpoint``. ``model_mpp`` and ``tile_size`` override the values
    stored in ``best.json``; with a bare checkpoint, ``model_mpp`` is needed to
    score whole slides. Both may be ``s3://`` or ``gs://`` URIs, and so may the
    checkpoint that ``best.json`` names. Each process that loads the model
    downloads such a checkpoint once into ``cache_dir``.
    """

    model_config = ConfigDict(extra="forbid")

    best_file: str | None = Field(
        default=None, description="best.json written by the evaluation job: a local path or an s3:// or gs:// URI."
    )
    checkpoint: str | None = Field(
        default=None, description="checkpoint.pt file or its folder, or a checkpoint file at an s3:// or gs:// URI."
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Local folder for checkpoints downloaded from an object store; default "
        "cancerseg-checkpoints in the system's temporary folder.",
    )
    model_mpp: float | None = Field(
        default=None, gt=0, description="Resolution the model was trained at, in micrometres per pixel."
    )
    tile_size: int | None = Field(
        default=None, ge=32, le=4096, description="Tile side in pixels fed to the model; default the training tile size."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Torch device; auto picks CUDA when a GPU is visible."
    )

    _location_text = field_validator("best_file", "checkpoint", mode="before")(storage.location_text)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.best_file is None) == (self.checkpoint is None):
            raise ValueError(
                "give exactly one of best_file (best.json of the evaluation job) and checkpoint "
                f"(a checkpoint.pt file), got best_file={self.best_file} and checkpoint={self.checkpoint}"
            )
        return self


class ScoringConfig(BaseModel):
    """Settings of whole-slide inference and of the files it writes."""

    model_config = ConfigDict(extra="forbid")

    overlap_fraction: float = Field(
        default=0.25, ge=0.0, le=0.5, description="Overlap of neighbouring tiles as a fraction of the tile side."
    )
    blend: BlendMode = Field(default=BlendMode.GAUSSIAN, description="How overlapping predictions are combined.")
    gaussian_sigma_fraction: float = Field(
        default=0.125, gt=0.0, le=1.0, description="Sigma of the Gaussian weight as a fraction of the tile side."
    )
    batch_size: int = Field(default=8, ge=1, description="Tiles per model call.")
    prefetch_tiles: int = Field(default=32, ge=1, description="Tiles read ahead of the model by a reader thread.")
    detect_tissue: bool = Field(default=True, description="Score only tiles that contain tissue.")
    thumbnail_size: int = Field(
        default=2048, ge=64, description="Longer side of the thumbnail used for tissue detection, in pixels."
    )
    min_tissue_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="A tile is scored when its tissue fraction exceeds this value."
    )
    tissue_min_saturation: int | None = Field(
        default=None, ge=0, le=255, description="Saturation floor of tissue detection; default the detector's own."
    )
    chunk_size: int = Field(
        default=1024, ge=64, description="Side of the zarr chunks and of the blocks processed at once, in pixels."
    )
    overlay_max_size: int = Field(default=2048, ge=64, description="Longer side of the overlay PNG, in pixels.")
    overlay_alpha: float = Field(default=0.45, ge=0.0, le=1.0, description="Opacity of class colours on the overlay.")
    geojson_classes: list[str] | None = Field(
        default=None,
        description="Classes written as polygons and drawn on the overlay; default every class except one "
        "named 'background'.",
    )
    simplify_tolerance_px: float = Field(
        default=0.5, ge=0.0, description="Douglas-Peucker tolerance of the polygons, in mask pixels; 0 keeps every vertex."
    )
    min_polygon_area_um2: float = Field(
        default=0.0, ge=0.0, description="Polygons smaller than this area, in square micrometres, are dropped."
    )
    coordinate_origin: CoordinateOrigin = Field(
        default=CoordinateOrigin.LEVEL0, description="Frame of the GeoJSON coordinates."
    )
    pyramid_tile_size: int = Field(default=256, ge=16, description="Tile side of the pyramidal TIFF mask, in pixels.")
    keep_probabilities: bool = Field(
        default=False, description="Keep prediction.zarr with the per-class probabilities next to the outputs."
    )

    @model_validator(mode="after")
    def _tile_multiple_of_16(self) -> Self:
        if self.pyramid_tile_size % 16:
            raise ValueError(f"pyramid_tile_size must be a multiple of 16 (TIFF rule), got {self.pyramid_tile_size}")
        return self


class ServeConfig(BaseModel):
    """Settings of the Ray Serve application."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    data_root: Path = Field(description="Folder that every slide path of a request must resolve inside.")
    output_root: Path = Field(
        description="Local or shared folder for slide jobs: uploads, status files and outputs (no object-store URI)."
    )
    max_tile_upload_bytes: int = Field(default=32 * MIB, ge=1, description="Largest tile upload, in bytes.")
    max_slide_upload_bytes: int = Field(default=4096 * MIB, ge=1, description="Largest slide upload, in bytes.")
    max_tile_side: int = Field(default=2048, ge=16, description="Largest width or height of an uploaded tile, in pixels.")
    max_concurrent_slide_jobs: int = Field(default=1, ge=1, description="Slides scored at the same time per ingress replica.")
    max_slide_upsampling: float = Field(
        default=4.0, ge=1.0, description="Largest factor by which a slide job may enlarge a slide, that is the "
        "slide's µm/px divided by the model's; a larger factor usually means a wrong resolution tag."
    )
    max_slide_grid_pixels: int = Field(
        default=20_000_000_000, ge=1, description="Largest scoring grid of a slide job at the model's resolution, "
        "in pixels (width x height); the default fits a 200,000 x 100,000 pixel scan scored at its own resolution."
    )
    slide_tiles_in_flight: int = Field(
        default=16, ge=1, description="Tiles of one slide job sent to the model replicas before waiting for results; "
        "it replaces scoring.batch_size in slide jobs."
    )
    max_batch_size: int = Field(default=8, ge=1, description="Largest batch that @serve.batch forms.")
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0, description="Maximum wait for a batch to fill, in seconds.")
    model_replicas: int = Field(default=1, ge=1, description="Replicas of the model deployment.")
    num_gpus_per_replica: float = Field(default=0.0, ge=0.0, description="GPUs reserved by each model replica.")
    num_cpus_per_replica: float = Field(default=1.0, ge=0.0, description="CPUs reserved by each model replica.")
    ingress_replicas: int = Field(
        default=1, ge=1, description="Replicas of the HTTP ingress; they share slide jobs through output_root."
    )
    ingress_num_cpus: float = Field(
        default=0.5, ge=0.0, description="CPUs reserved by the HTTP ingress, which also reads slide tiles."
    )
    max_ongoing_requests: int = Field(
        default=64, ge=1, description="Requests a model replica, or an ingress replica, accepts at once."
    )

    _local_paths = field_validator("data_root", "output_root", mode="before")(_local_only)

    @model_validator(mode="after")
    def _batch_fits_requests(self) -> Self:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least max_batch_size "
                f"({self.max_batch_size}), or batches never fill"
            )
        return self


class BatchScoreConfig(BaseModel):
    """Settings of the offline batch scoring job."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    slides_dir: Path | None = Field(default=None, description="Folder searched recursively for slides.")
    manifest: Path | None = Field(
        default=None, description="CSV with a 'path' column and optional 'slide_id' and 'mpp' columns."
    )
    slide_suffixes: list[str] = Field(
        default_factory=lambda: [".svs", ".ndpi", ".tif", ".tiff", ".scn", ".mrxs", ".bif", ".svslide"],
        description="File suffixes taken as slides when slides_dir is searched.",
    )
    output_dir: str = Field(
        description="Folder with one subfolder per slide and the summary table: a local path or an s3:// or gs:// URI."
    )
    mpp_override: float | None = Field(
        default=None, gt=0, description="Level-0 resolution of every slide, in micrometres per pixel."
    )
    num_actors: int = Field(default=1, ge=1, description="Model actors scoring slides in parallel.")
    use_gpu: bool = Field(default=False, description="One GPU per model actor.")
    cpus_per_actor: float = Field(default=1.0, gt=0.0, description="CPUs reserved by each model actor.")

    _output_text = field_validator("output_dir", mode="before")(storage.location_text)
    _local_inputs = field_validator("slides_dir", "manifest", mode="before")(_local_only)

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.slides_dir is None) == (self.manifest is None):
            raise ValueError(
                f"give exactly one of slides_dir and manifest, got slides_dir={self.slides_dir} "
                f"and manifest={self.manifest}"
            )
        return self
