"""The Ray Serve application: a batched model deployment behind a FastAPI ingress.

``SegmentationModel`` loads the checkpoint and predicts tiles; requests are
grouped into batches by ``@serve.batch``, and replicas and GPUs per replica
come from ``ServeConfig``. ``SegmentationAPI`` is the HTTP ingress: it checks
requests, segments uploaded tiles, and runs slide jobs whose tiles it sends
to the model replicas. ``build_app`` assembles both for ``serve.run``,
``serve run`` and ``serve deploy``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route
# signatures at run time, and Serve's class wrapper hides the module globals
# that string annotations would need. For the same reason the deployment
# methods see only names defined above their class: a helper class defined
# below raises NameError in the replica (seen with Ray 2.60).

import asyncio
import base64
import io
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
import ray
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from cancerseg_ray import storage
from cancerseg_ray.errors import CancerSegError, ConfigError
from cancerseg_ray.io.slides import MPP_HINT, MissingResolutionError, open_slide
from cancerseg_ray.serve.config import ServeConfig
from cancerseg_ray.serve.inference import score_slide, segment_image
from cancerseg_ray.serve.jobs import (
    STALE_JOB_S,
    UPLOAD_FOLDER,
    JobProgress,
    JobState,
    JobStatus,
    JobStore,
)
from cancerseg_ray.serve.outputs import OUTPUT_FILES
from cancerseg_ray.serve.predictor import ModelInfo, TilePredictor, resolve_model
from cancerseg_ray.serve.security import (
    SLIDE_CONTENT_TYPES,
    TILE_CONTENT_TYPES,
    NotFoundError,
    RequestError,
    UnprocessableError,
    UnsupportedMediaTypeError,
    check_content_length,
    decode_tile,
    is_tiff,
    media_type,
    read_limited,
    resolve_under_root,
    safe_upload_name,
    save_limited,
)
from cancerseg_ray.serve.tiling import SlideGrid

logger = logging.getLogger(__name__)

API_VERSION = "1.0.0"
MPP_TOLERANCE = 0.01
"""Relative difference between an upload's and the model's µm/px below which no resampling happens."""
MAX_ECHOED_CHARS = 80
"""Maximum length of an invalid value quoted in a validation error, in characters."""
PROGRESS_WRITE_S = 5.0
"""Minimum interval between two writes of a running job's tile count to its status file, in seconds."""

api = FastAPI(
    title="CancerSeg-XA segmentation API",
    version=API_VERSION,
    description="Segments H&E tiles and whole slides with the served CancerSeg-XA or DeepLabV3+ checkpoint. "
    "Slide jobs write a pyramidal TIFF mask, QuPath GeoJSON, an overlay PNG and per-class areas.",
)


class ModelMetadata(BaseModel):
    """Model description returned by ``GET /v1/model``."""

    variant: str
    epoch: int
    class_names: list[str]
    colours: list[tuple[int, int, int]] = Field(description="RGB colour of each class, 0-255.")
    ignore_index: int = Field(description="Mask value of pixels without a prediction.")
    checkpoint_file: str
    checkpoint_sha256: str
    mpp: float | None = Field(description="Resolution the model expects, in micrometres per pixel.")
    tile_size: int = Field(description="Tile side in pixels fed to the model.")
    dataset_name: str | None = None


class SlidePathRequest(BaseModel):
    """Body of ``POST /v1/slides/score``."""

    # A misspelt field such as "mpp" would otherwise be ignored silently.
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Slide file, relative to the data root (or absolute inside it).")
    mpp_override: float | None = Field(
        default=None, gt=0, description="Level-0 resolution in µm/px, for slides without resolution metadata."
    )


class ProbabilityArray(BaseModel):
    """Per-class probabilities as a base64-encoded NumPy ``.npy`` file (no pickle)."""

    dtype: str
    shape: list[int]
    npy_base64: str


class TileSegmentation(BaseModel):
    """Response of ``POST /v1/tiles/segment`` when probabilities are requested."""

    class_names: list[str]
    width: int
    height: int
    mask_png_base64: str = Field(description="Palette PNG; pixel values are class indices.")
    probabilities: ProbabilityArray


class ErrorMessage(BaseModel):
    """Body of every 4xx response."""

    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorMessage} for code in (400, 403, 404, 413, 415, 422)
}
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in TILE_CONTENT_TYPES},
    }
}
_SLIDE_BODY = {
    "requestBody": {
        "required": True,
        "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in SLIDE_CONTENT_TYPES},
    }
}


@api.exception_handler(RequestError)
async def _request_error(request: Request, error: RequestError) -> JSONResponse:
    logger.info("%s %s rejected with %d: %s", request.method, request.url.path, error.status_code, error)
    return JSONResponse(status_code=error.status_code, content={"detail": str(error)})


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """Return FastAPI's parameter and body errors as one readable ``detail`` string, as the other 4xx are."""
    detail = validation_message(error.errors())
    logger.info("%s %s rejected with 422: %s", request.method, request.url.path, detail)
    return JSONResponse(status_code=422, content={"detail": detail})


def validation_message(errors: Sequence[Any]) -> str:
    """Join pydantic's error records into one sentence per value, such as ``body.path: Field required``."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        kind = error.get("type")
        if kind == "json_invalid":
            reason = error.get("ctx", {}).get("error", error.get("msg"))
            position = f" at character {location[1]}" if len(location) > 1 else ""
            parts.append(f"the body is not valid JSON{position} ({reason}); send a JSON object")
        elif kind == "extra_forbidden":
            parts.append(f"{'.'.join(location)}: unknown field; the accepted fields are "
                         f"{', '.join(SlidePathRequest.model_fields)}")
        elif kind == "missing" and location == ["body"]:
            parts.append("the body is missing; send a JSON object")
        elif kind == "missing":
            parts.append(f"{'.'.join(location)}: {error.get('msg')}")
        else:
            value = repr(error.get("input"))
            if len(value) > MAX_ECHOED_CHARS:
                value = value[:MAX_ECHOED_CHARS] + "..."
            parts.append(f"{'.'.join(location)}: {error.get('msg')}, got {value}")
    return "invalid request: " + "; ".join(parts) + ". The request format is described at /docs."


def mask_png(mask: np.ndarray, colours: list[tuple[int, int, int]]) -> bytes:
    """Encode a class mask as a palette PNG whose palette contains the class colours."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    table = [0] * 768
    for index, colour in enumerate(colours):
        table[3 * index : 3 * index + 3] = list(colour)
    image.putpalette(table)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_base64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@serve.deployment(name="SegmentationModel", health_check_period_s=10, health_check_timeout_s=30)
class SegmentationModel:
    """Model replica: batched probability prediction for (T, T, 3) uint8 tiles.

    Args:
        info: Metadata of the checkpoint to load.
        device: ``auto``, ``cpu`` or ``cuda``.
        max_batch_size: Largest batch formed from waiting requests.
        batch_wait_timeout_s: Maximum wait for a batch to fill, in seconds.
        cache_dir: Local folder for a checkpoint downloaded from an object store.
    """

    def __init__(self, info: ModelInfo, *, device: str, max_batch_size: int, batch_wait_timeout_s: float,
                 cache_dir: Path | None = None) -> None:
        self.predictor = TilePredictor(info, device=device, cache_dir=cache_dir)
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._fatal_error: str | None = None

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        """Predict (C, H, W) float32 probabilities for each tile; tiles of equal shape share a forward pass."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, tile in enumerate(tiles):
            groups.setdefault(tile.shape, []).append(index)
        results: list[np.ndarray | None] = [None] * len(tiles)
        for indices in groups.values():
            stacked = np.stack([tiles[index] for index in indices])
            try:
                probabilities = await asyncio.to_thread(self.predictor.predict, stacked)
            except RuntimeError as error:
                if "CUDA" in str(error):
                    self._fatal_error = str(error)
                raise
            for index, tile_probabilities in zip(indices, probabilities, strict=True):
                results[index] = tile_probabilities
        return results

    def check_health(self) -> None:
        """Fail when a CUDA error has left the replica unusable, so that Serve replaces it."""
        if self._fatal_error is not None:
            raise RuntimeError(f"model replica hit a CUDA error and must be restarted: {self._fatal_error}")


@serve.deployment(name="SegmentationAPI")
@serve.ingress(api)
class SegmentationAPI:
    """HTTP ingress: request checks, tile segmentation and slide jobs.

    Args:
        config: Application settings.
        info: Metadata of the served model.
        model: Handle of the ``SegmentationModel`` deployment.
    """

    def __init__(self, config: ServeConfig, info: ModelInfo, model: DeploymentHandle) -> None:
        self.config = config
        self.info = info
        self.model = model
        self.data_root = Path(config.data_root).resolve()
        self.jobs = JobStore(Path(config.output_root))
        # A single replica can fail every unfinished job at once, because no other replica can be running them.
        # NOTE: during a rolling update the old replica may still finish a job failed here, and it then overwrites
        # the failed state with its result.
        interrupted = self.jobs.fail_interrupted(older_than_s=0.0 if config.ingress_replicas == 1 else STALE_JOB_S)
        if interrupted:
            logger.warning("marked %d jobs failed that were unfinished when the server stopped", len(interrupted))
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrent_slide_jobs, thread_name_prefix="slide-job")
        self._stop_heartbeat = threading.Event()
        threading.Thread(target=self.jobs.run_heartbeat, args=(self._stop_heartbeat,), name="job-heartbeat",
                         daemon=True).start()
        logger.info("serving %s; slides under %s; jobs in %s", info.variant, self.data_root, self.jobs.root)

    def __del__(self) -> None:
        """Stop the job heartbeat thread when Serve shuts the replica down."""
        stop = getattr(self, "_stop_heartbeat", None)
        if stop is not None:
            stop.set()

    def check_health(self) -> None:
        """Fail when the job folder is gone, because no slide job could be stored."""
        if not self.jobs.root.is_dir():
            raise RuntimeError(f"job folder {self.jobs.root} is missing; check the output_root volume")

    # Model calls.

    def predict_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """Send tiles to the model replicas one request each and wait for all; call from a worker thread."""
        responses = [self.model.predict.remote(tile) for tile in tiles]
        return np.stack([response.result() for response in responses])

    # Routes.

    @api.get("/v1/health", summary="Liveness check")
    async def health(self) -> dict[str, str]:
        """Return ``{"status": "ok"}`` while the ingress runs."""
        return {"status": "ok"}

    @api.get("/v1/model", response_model=ModelMetadata, summary="Model metadata")
    async def model_metadata(self) -> ModelMetadata:
        """Describe the served model: variant, classes, colours, checkpoint hash and expected µm/px."""
        return ModelMetadata(
            variant=self.info.variant, epoch=self.info.epoch, class_names=self.info.class_names,
            colours=self.info.colours, ignore_index=self.info.ignore_index,
            checkpoint_file=storage.location_name(self.info.checkpoint), checkpoint_sha256=self.info.checkpoint_sha256,
            mpp=self.info.mpp, tile_size=self.info.tile_size, dataset_name=self.info.dataset_name,
        )

    @api.post(
        "/v1/tiles/segment",
        summary="Segment one tile",
        responses={200: {"model": TileSegmentation, "content": {"image/png": {}},
                         "description": "Class mask as palette PNG, or JSON with probabilities."}, **_ERRORS},
        openapi_extra=_IMAGE_BODY,
        response_class=Response,
    )
    async def segment_tile(
        self,
        request: Request,
        probabilities: Annotated[bool, Query(description="Return JSON with the mask and per-class probabilities.")] = False,
        mpp: Annotated[float | None, Query(gt=0, description="Resolution of the upload in µm/px; the tile is "
                                                               "resampled to the model's resolution when it differs.")] = None,
    ) -> Response:
        """Segment a PNG, JPEG or TIFF tile sent as the request body."""
        declared = media_type(request.headers.get("content-type"), TILE_CONTENT_TYPES)
        check_content_length(request.headers.get("content-length"), self.config.max_tile_upload_bytes)
        data = await read_limited(request.stream(), self.config.max_tile_upload_bytes)
        image = decode_tile(data, declared, max_side=self.config.max_tile_side)
        tile_probabilities = await asyncio.to_thread(self._segment, image, mpp)
        mask = tile_probabilities.argmax(axis=0).astype(np.uint8)
        png = mask_png(mask, self.info.colours)
        headers = {"X-Checkpoint-SHA256": self.info.checkpoint_sha256}
        if not probabilities:
            return Response(content=png, media_type="image/png", headers=headers)
        body = TileSegmentation(
            class_names=self.info.class_names, width=mask.shape[1], height=mask.shape[0],
            mask_png_base64=base64.b64encode(png).decode("ascii"),
            probabilities=ProbabilityArray(dtype="float16", shape=list(tile_probabilities.shape),
                                           npy_base64=_npy_base64(tile_probabilities.astype(np.float16))),
        )
        return JSONResponse(content=body.model_dump(), headers=headers)

    def _segment(self, image: np.ndarray, mpp: float | None) -> np.ndarray:
        height, width = image.shape[:2]
        scale = 1.0
        if mpp is not None and self.info.mpp is not None and abs(mpp / self.info.mpp - 1.0) > MPP_TOLERANCE:
            scale = mpp / self.info.mpp
        if scale != 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            if max(size) > self.config.max_tile_side:
                raise UnprocessableError(
                    f"at the model's {self.info.mpp} µm/px the {width}x{height} tile becomes {size[0]}x{size[1]} "
                    f"pixels, over the limit of {self.config.max_tile_side}; send a smaller tile"
                )
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        result = segment_image(image, predict=self.predict_tiles, num_classes=self.info.num_classes,
                               tile_size=self.info.tile_size, config=self.config.scoring)
        if scale != 1.0:
            result = np.stack([cv2.resize(channel, (width, height), interpolation=cv2.INTER_LINEAR)
                               for channel in result])
        return result

    @api.post("/v1/slides/score", response_model=JobStatus, status_code=202, summary="Score a slide under the data root",
              responses=_ERRORS)
    async def score_slide_path(self, body: Annotated[SlidePathRequest, Body()]) -> JSONResponse:
        """Start a job that scores a slide file under the data root; poll ``GET /v1/jobs/{job_id}``."""
        path = resolve_under_root(self.data_root, body.path)
        await asyncio.to_thread(self._check_slide, path, body.mpp_override, body.path,
                                "the mpp_override field of the request body")
        status = self.jobs.new_job(str(path.relative_to(self.data_root)))
        self._submit(status, path, body.mpp_override, None)
        return self._accepted(status)

    @api.post("/v1/slides/upload", response_model=JobStatus, status_code=202, summary="Upload and score a slide",
              responses=_ERRORS, openapi_extra=_SLIDE_BODY)
    async def score_slide_upload(
        self,
        request: Request,
        filename: Annotated[str, Query(description="File name with the slide's suffix, such as case1.svs.")],
        mpp_override: Annotated[float | None, Query(gt=0, description="Level-0 resolution in µm/px.")] = None,
    ) -> JSONResponse:
        """Start a job that scores a single-file, TIFF-based slide sent as the request body."""
        media_type(request.headers.get("content-type"), SLIDE_CONTENT_TYPES)
        name = safe_upload_name(filename)
        check_content_length(request.headers.get("content-length"), self.config.max_slide_upload_bytes)
        status = self.jobs.new_job(name)
        upload = self.jobs.folder(status.job_id) / UPLOAD_FOLDER / name
        upload.parent.mkdir()
        # A rejected upload never becomes a job that the client knows of, so its folder is removed.
        try:
            await save_limited(request.stream(), upload, self.config.max_slide_upload_bytes)
            with upload.open("rb") as file:
                if not is_tiff(file.read(4)):
                    raise UnsupportedMediaTypeError(f"{name} is not a TIFF-based slide; uploads accept TIFF-based formats")
            await asyncio.to_thread(self._check_slide, upload, mpp_override, name, "the mpp_override query parameter")
        except RequestError:
            self.jobs.delete(status.job_id)
            raise
        except ClientDisconnect:
            logger.warning("job %s: the client disconnected during the upload of %s", status.job_id, name)
            self.jobs.delete(status.job_id)
            raise
        self._submit(status, upload, mpp_override, upload)
        return self._accepted(status)

    @api.get("/v1/jobs/{job_id}", response_model=JobStatus, summary="Status and result of a slide job",
             responses=_ERRORS)
    async def job_status(self, job_id: str) -> JobStatus:
        """Return the job's state and, once it succeeded, its areas and output files."""
        return self.jobs.get(job_id)

    @api.get("/v1/jobs/{job_id}/files/{name}", summary="Download an output of a finished slide job",
             responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS})
    async def job_file(self, job_id: str, name: str) -> FileResponse:
        """Download ``mask.tiff``, ``annotations.geojson``, ``overlay.png``, ``tissue.png`` or ``result.json``."""
        status = self.jobs.get(job_id)
        if name not in OUTPUT_FILES:
            raise NotFoundError(f"unknown output {name!r}; outputs are {', '.join(OUTPUT_FILES)}")
        if status.state is not JobState.SUCCEEDED:
            raise NotFoundError(f"job {job_id} is {status.state.value}; outputs exist once it succeeded")
        path = self.jobs.folder(job_id) / name
        if not path.is_file():
            raise NotFoundError(f"job {job_id} has no {name}")
        return FileResponse(path, filename=name)

    # Slide jobs.

    def _check_slide(self, path: Path, mpp_override: float | None, display_name: str, override_hint: str) -> None:
        """Open the slide and plan its grid, so that an unreadable or implausible slide is a 422 instead of a job.

        ``override_hint`` names where the request gives ``mpp_override``.
        """
        if self.info.mpp is None:
            raise UnprocessableError("the served model has no known resolution (model_mpp); it can segment tiles only")
        try:
            with open_slide(path, mpp_override=mpp_override) as reader:
                slide_mpp = reader.mpp
                grid = SlideGrid.from_bounds(reader.bounds, slide_mpp=slide_mpp, model_mpp=self.info.mpp)
        except MissingResolutionError as error:
            detail = str(error).replace(str(path), display_name)
            detail = detail.replace(MPP_HINT, f"Send its level-0 resolution in µm/px as {override_hint}.")
            raise UnprocessableError(detail) from error
        except CancerSegError as error:
            raise UnprocessableError(str(error).replace(str(path), display_name)) from error
        self._check_grid(grid, slide_mpp, mpp_override, display_name, override_hint)

    def _check_grid(self, grid: SlideGrid, slide_mpp: float, mpp_override: float | None, display_name: str,
                    override_hint: str) -> None:
        """Reject a grid that enlarges the slide too much or has too many pixels, since scoring it would take hours."""
        source = "from mpp_override" if mpp_override is not None else "from its metadata"
        upsampling = slide_mpp / self.info.mpp
        plan = (f"slide {display_name} at {slide_mpp:.4g} µm/px ({source}) scored at the model's {self.info.mpp:.4g} "
                f"µm/px gives a {grid.width} x {grid.height} pixel grid")
        fix = (f"If the slide's resolution is wrong, send its real level-0 resolution in µm/px as {override_hint}.")
        if upsampling > self.config.max_slide_upsampling:
            raise UnprocessableError(
                f"{plan}, enlarging the slide {upsampling:.1f} times; the limit is {self.config.max_slide_upsampling:g} "
                f"times (max_slide_upsampling setting). {fix}"
            )
        pixels = grid.width * grid.height
        if pixels > self.config.max_slide_grid_pixels:
            raise UnprocessableError(
                f"{plan} of {pixels:,} pixels; the limit is {self.config.max_slide_grid_pixels:,} pixels "
                f"(max_slide_grid_pixels setting). {fix}"
            )

    def _accepted(self, status: JobStatus) -> JSONResponse:
        return JSONResponse(status_code=202, content=status.model_dump(mode="json"),
                            headers={"Location": f"/v1/jobs/{status.job_id}"})

    def _submit(self, status: JobStatus, path: Path, mpp_override: float | None, upload: Path | None) -> None:
        """Queue a job on the thread pool and log an error that escapes it, which the pool would drop."""
        future = self.executor.submit(self._run_job, status, path, mpp_override, upload)

        def log_escaped(done: Future) -> None:
            if done.exception() is not None:
                logger.error("job %s stopped on an unexpected error", status.job_id, exc_info=done.exception())

        future.add_done_callback(log_escaped)

    def _run_job(self, status: JobStatus, path: Path, mpp_override: float | None, upload: Path | None) -> None:
        status = self.jobs.update(status, state=JobState.RUNNING)
        logger.info("job %s: scoring %s", status.job_id, status.slide)
        progress = JobProgress(self.jobs, status, min_interval_s=PROGRESS_WRITE_S)
        try:
            # Each predict call sends one batch of tiles as concurrent requests, so the
            # batch size sets how many tiles of this slide are in flight.
            scoring = self.config.scoring.model_copy(update={"batch_size": self.config.slide_tiles_in_flight})
            score = score_slide(path, predict=self.predict_tiles, model=self.info, config=scoring,
                                output_dir=self.jobs.folder(status.job_id), mpp_override=mpp_override,
                                slide_id=Path(status.slide).stem, progress=progress)
        except (CancerSegError, OSError, ray.exceptions.RayError) as error:
            logger.error("job %s failed on %s: %s", status.job_id, status.slide, error)
            self.jobs.update(progress.status, state=JobState.FAILED, error=str(error))
            return
        except Exception as error:  # noqa: BLE001 - a job thread has no caller to raise to
            logger.exception("job %s hit an internal error on %s", status.job_id, status.slide)
            self.jobs.update(progress.status, state=JobState.FAILED,
                             error=f"internal error ({type(error).__name__}); see the server log")
            return
        finally:
            if upload is not None:
                upload.unlink(missing_ok=True)
        status = progress.status
        score = score.model_copy(update={"slide_path": status.slide})
        self.jobs.update(status, state=JobState.SUCCEEDED, result=score)
        logger.info("job %s succeeded in %.1f s", status.job_id, score.seconds)


def build_app(args: dict[str, Any] | ServeConfig) -> serve.Application:
    """Assemble the application from a ``ServeConfig`` or its dictionary (the ``args`` of a Serve config file).

    Relative paths are resolved against the working folder of the process that builds the application.

    Raises:
        ConfigError: If ``data_root`` is not an existing folder.
    """
    config = args if isinstance(args, ServeConfig) else ServeConfig.model_validate(args)
    config = absolute_paths(config)
    if not config.data_root.is_dir():
        raise ConfigError(
            f"data_root {config.data_root} is not an existing folder, so every slide request would fail; "
            "create or mount it, or set data_root (--data-root) to the folder that contains the slides"
        )
    info = resolve_model(config.model)
    model = SegmentationModel.options(
        num_replicas=config.model_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.num_cpus_per_replica, "num_gpus": config.num_gpus_per_replica},
    ).bind(info, device=config.model.device, max_batch_size=config.max_batch_size,
           batch_wait_timeout_s=config.batch_wait_timeout_s, cache_dir=config.model.cache_dir)
    return SegmentationAPI.options(
        num_replicas=config.ingress_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress_num_cpus},
    ).bind(config, info, model)


def absolute_paths(config: ServeConfig) -> ServeConfig:
    """Resolve the config's local paths, so that replicas with another working folder find the same files."""
    model = config.model.model_copy(update={
        "best_file": _absolute_location(config.model.best_file),
        "checkpoint": _absolute_location(config.model.checkpoint),
        "cache_dir": None if config.model.cache_dir is None else config.model.cache_dir.resolve(),
    })
    return config.model_copy(update={
        "model": model, "data_root": config.data_root.resolve(), "output_root": config.output_root.resolve(),
    })


def _absolute_location(location: str | None) -> str | None:
    """Make a local path absolute and pass an object-store URI through."""
    if location is None or storage.is_remote(location):
        return location
    return str(Path(location).resolve())
