"""Offline scoring of many slides with Ray Data model actors.

One dataset row is one slide. ``map_batches`` sends the rows to a pool of
``SlideScorer`` actors, each of which loads the model once and scores whole
slides with ``score_slide``: the tile reads of a slide overlap with its
predictions on the actor, and actors work on different slides in parallel.
A slide whose folder already holds a ``result.json`` from the same
checkpoint and settings is skipped, and a slide that fails is reported in
the summary while the others go on.

The output folder may be an ``s3://`` or ``gs://`` URI. An actor then writes
a slide's files to a local temporary folder and uploads them when the slide
is finished, ``result.json`` last, so a slide prefix with ``result.json`` is
complete. Manifest entries may name slides by URI as well. An actor downloads
each such slide to a temporary file, because OpenSlide reads local files only.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
from pydantic import BaseModel

from cancerseg_ray import storage
from cancerseg_ray.errors import CancerSegError, ConfigError
from cancerseg_ray.serve.config import BatchScoreConfig, ScoringConfig
from cancerseg_ray.serve.inference import score_slide
from cancerseg_ray.serve.outputs import SlideScore, publish_slide_outputs, read_slide_score
from cancerseg_ray.serve.predictor import ModelInfo, TilePredictor, resolve_model

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.csv"
SCORED, SKIPPED, FAILED = "scored", "skipped", "failed"


class SlideEntry(BaseModel):
    """A slide to score: its id (the output folder name), local file or URI, and optional resolution override."""

    slide_id: str
    path: str
    mpp: float | None = None


def _slide_id(relative: Path) -> str:
    return "__".join(relative.with_suffix("").parts)


def list_slides(config: BatchScoreConfig) -> list[SlideEntry]:
    """List the slides of the configured folder or manifest.

    Raises:
        ConfigError: If the folder or manifest is missing, the folder contains no
            slide, the manifest lacks a ``path`` column, lists no slide or has
            invalid rows, or two slides get the same id.
    """
    if config.slides_dir is not None:
        entries = _list_folder(Path(config.slides_dir), config.slide_suffixes, config.mpp_override)
    else:
        entries = _read_manifest(Path(config.manifest), config.mpp_override)
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.slide_id in seen:
            raise ConfigError(
                f"slides {seen[entry.slide_id]} and {entry.path} share the id {entry.slide_id!r}; "
                "give them distinct slide_id values in a manifest"
            )
        seen[entry.slide_id] = entry.path
    return entries


def _list_folder(folder: Path, slide_suffixes: list[str], mpp_override: float | None) -> list[SlideEntry]:
    if not folder.is_dir():
        raise ConfigError(f"slides_dir {folder} is not a folder")
    suffixes = {suffix.lower() for suffix in slide_suffixes}
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in suffixes)
    if not files:
        raise ConfigError(
            f"no slides found in {folder.resolve()} (looked for {', '.join(sorted(suffixes))}); "
            "pass a folder that contains slides, or set slide_suffixes in the config"
        )
    return [SlideEntry(slide_id=_slide_id(path.relative_to(folder)), path=str(path.resolve()), mpp=mpp_override)
            for path in files]


def _read_manifest(path: Path, mpp_override: float | None) -> list[SlideEntry]:
    """Read a manifest, checking every row before any slide is scored.

    Every invalid row is collected, so that one error lists all of them with
    their line numbers in the file.
    """
    if not path.is_file():
        raise ConfigError(f"manifest {path} not found")
    entries: list[SlideEntry] = []
    problems: list[str] = []
    try:
        # utf-8-sig drops the byte order mark that spreadsheet programs put before the header.
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns = reader.fieldnames or []
            if "path" not in columns:
                raise ConfigError(f"manifest {path} has no 'path' column; its columns are {list(columns)}")
            for row in reader:
                try:
                    entries.append(_manifest_entry(path, row, mpp_override))
                except ConfigError as error:
                    problems.append(f"line {reader.line_num}: {error}")
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"failed to read manifest {path}: {error}; save it as a UTF-8 CSV file") from error
    if problems:
        raise ConfigError(
            f"manifest {path.resolve()} has {len(problems)} invalid row(s); fix them and run the job again:\n  "
            + "\n  ".join(problems)
        )
    if not entries:
        raise ConfigError(f"manifest {path.resolve()} lists no slides; add one row per slide under the header")
    return entries


def _manifest_entry(manifest: Path, row: dict[str, str | None], mpp_override: float | None) -> SlideEntry:
    """Build the entry of one manifest row.

    Raises:
        ConfigError: If the path is empty or an invalid URI, or the mpp is not a positive number.
    """
    value = (row.get("path") or "").strip()
    if not value:
        raise ConfigError("path is empty; give the slide's file path or s3:// or gs:// URI")
    slide_location, stem = _manifest_location(manifest, value)
    slide_id = (row.get("slide_id") or "").strip() or stem
    mpp_text = (row.get("mpp") or "").strip()
    if not mpp_text:
        return SlideEntry(slide_id=slide_id, path=slide_location, mpp=mpp_override)
    try:
        mpp = float(mpp_text)
    except ValueError:
        mpp = math.nan
    if not math.isfinite(mpp) or mpp <= 0:
        raise ConfigError(
            f"slide {storage.redact(value)}: mpp {mpp_text!r} is not a positive number of micrometres per pixel; "
            "fix it or leave it empty to use the slide's own resolution"
        )
    return SlideEntry(slide_id=slide_id, path=slide_location, mpp=mpp)


def _manifest_location(manifest: Path, value: str) -> tuple[str, str]:
    """Return a manifest entry's slide location (absolute path or URI) and its default slide id."""
    try:
        remote = storage.is_remote(value)
    except storage.InvalidURIError as error:
        raise ConfigError(str(error)) from error
    if remote:
        name = storage.location_name(value)
        if not name:
            raise ConfigError(f"slide URI {storage.redact(value)!r} names no file")
        return value, Path(name).stem
    slide_path = Path(value)
    if not slide_path.is_absolute():
        slide_path = manifest.parent / slide_path
    return str(slide_path.resolve()), slide_path.stem


SUMMARY_COLUMNS = ("slide_id", "path", "status", "error", "seconds")
"""Columns of every summary row. A scored or skipped slide adds its counts and per-class areas."""


def summary_row(entry: SlideEntry, status: str, *, score: SlideScore | None = None, error: str = "",
                seconds: float = 0.0) -> dict[str, Any]:
    """Build one summary row; per-class columns are ``<class>_area_um2`` and ``<class>_fraction``."""
    row: dict[str, Any] = {"slide_id": entry.slide_id, "path": storage.redact(entry.path), "status": status,
                           "error": error, "seconds": round(seconds, 2)}
    if score is not None:
        row.update(tiles_scored=score.tiles_scored, tissue_area_um2=score.tissue_area_um2)
        for area in score.areas:
            row[f"{area.class_name}_area_um2"] = area.area_um2
            row[f"{area.class_name}_fraction"] = area.fraction_of_tissue
    return row


def summary_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Build the summary table sorted by slide id.

    A failed slide has no counts, and pandas would turn an integer column with
    a missing value into floats (``29.0``). Columns whose values are all
    integers therefore become nullable ``Int64``, which writes ``29`` and an
    empty cell.
    """
    summary = pd.DataFrame(rows, columns=None if rows else list(SUMMARY_COLUMNS))
    # The rows are checked, because the frame already contains floats in place of the integers.
    integer_columns = [column for column in summary.columns
                       if _all_integers([row[column] for row in rows if column in row])]
    summary = summary.astype({column: "Int64" for column in integer_columns})
    return summary.sort_values("slide_id").reset_index(drop=True)


def _all_integers(values: list[Any]) -> bool:
    return bool(values) and all(
        isinstance(value, int | np.integer) and not isinstance(value, bool) for value in values
    )


class SlideScorer:
    """Ray Data actor: loads the model once, then scores one slide per row.

    Args:
        info: Metadata of the model to load.
        scoring: Tiling, blending and output settings.
        output_dir: Folder or ``s3://`` / ``gs://`` URI that receives one subfolder per slide.
        use_gpu: Predict on the actor's GPU.
        cache_dir: Local folder for a checkpoint downloaded from an object store.
    """

    def __init__(self, *, info: ModelInfo, scoring: ScoringConfig, output_dir: str, use_gpu: bool,
                 cache_dir: Path | None = None) -> None:
        self.info = info
        self.scoring = scoring
        self.output_dir = output_dir
        self.remote_output = storage.is_remote(output_dir)
        self.predictor = TilePredictor(info, device="cuda" if use_gpu else "cpu", cache_dir=cache_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for slide_id, path, mpp in zip(batch["slide_id"], batch["path"], batch["mpp"], strict=True):
            entry = SlideEntry(slide_id=str(slide_id), path=str(path), mpp=None if math.isnan(mpp) else float(mpp))
            rows.append(self.score(entry))
        # Every row carries every key, so that Ray Data builds one column per key.
        return {key: np.array([str(row[key]) for row in rows]) for key in ("slide_id", "status", "error", "result")}

    def score(self, entry: SlideEntry) -> dict[str, Any]:
        """Score one slide and return its status; a slide error becomes a failed status, never an exception.

        The returned ``result`` is the slide's ``result.json`` text, or ``""`` when it failed.
        """
        started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="cancerseg-slide-") as scratch:
                score = self._score_in(entry, Path(scratch))
        except (CancerSegError, OSError) as error:
            logger.error("slide %s (%s) failed after %.1f s: %s", entry.slide_id, storage.redact(entry.path),
                         time.perf_counter() - started, error)
            return {"slide_id": entry.slide_id, "status": FAILED, "error": str(error), "result": ""}
        return {"slide_id": entry.slide_id, "status": SCORED, "error": "", "result": score.model_dump_json()}

    def _score_in(self, entry: SlideEntry, scratch: Path) -> SlideScore:
        """Score a slide, with a downloaded slide and outputs bound for an object store kept in ``scratch``."""
        slide_location = None
        slide_path = Path(entry.path)
        if storage.is_remote(entry.path):
            slide_location = storage.redact(entry.path)
            slide_path = storage.download(entry.path, scratch / "slide" / storage.location_name(entry.path))

        if not self.remote_output:
            return score_slide(slide_path, predict=self.predictor.predict, model=self.info, config=self.scoring,
                               output_dir=Path(self.output_dir) / entry.slide_id, mpp_override=entry.mpp,
                               slide_id=entry.slide_id, slide_location=slide_location)

        folder = scratch / "outputs" / entry.slide_id
        score = score_slide(slide_path, predict=self.predictor.predict, model=self.info, config=self.scoring,
                            output_dir=folder, mpp_override=entry.mpp, slide_id=entry.slide_id,
                            slide_location=slide_location)
        location = storage.join(self.output_dir, entry.slide_id)
        publish_slide_outputs(folder, location)
        logger.info("%s: outputs uploaded to %s", entry.slide_id, storage.redact(location))
        return score


def _slide_folder(output_dir: str, slide_id: str) -> str | Path:
    if storage.is_remote(output_dir):
        return storage.join(output_dir, slide_id)
    return Path(output_dir) / slide_id


def _already_scored(entry: SlideEntry, output_dir: str, info: ModelInfo, scoring: ScoringConfig) -> SlideScore | None:
    previous = read_slide_score(_slide_folder(output_dir, entry.slide_id))
    if previous is None:
        return None
    same_resolution = entry.mpp is None or math.isclose(previous.slide_mpp, entry.mpp, rel_tol=1e-6)
    if previous.checkpoint_sha256 == info.checkpoint_sha256 and previous.scoring == scoring and same_resolution:
        return previous
    return None


def score_slides(config: BatchScoreConfig, entries: list[SlideEntry] | None = None) -> pd.DataFrame:
    """Score every listed slide and write ``summary.csv`` into the output folder.

    An object-store output's bucket and the slide list are checked first, so
    a missing bucket, an empty slide folder or an invalid manifest fails
    before the model is loaded, any Ray work starts or the output folder is
    created.

    Args:
        config: The job settings.
        entries: The slides from ``list_slides(config)``, when the caller has
            listed them already; by default they are listed here.

    Returns:
        The summary: one row per slide with status ``scored``, ``skipped`` or
        ``failed``, the error of a failed slide, and per-class areas.

    Raises:
        ConfigError: If the model's resolution is unknown or the slide list is invalid.
        StorageNotFoundError: If the output's bucket does not exist.
        StorageError: If the object store of the output cannot be reached.
    """
    output_dir = config.output_dir
    if storage.is_remote(output_dir):
        storage.check_bucket(output_dir)
    else:
        # Actors with another working folder must write to the same place. This also turns file:// URIs into paths.
        output_dir = storage.resolve(output_dir)[1]
    if entries is None:
        entries = list_slides(config)
    info = resolve_model(config.model)
    if info.mpp is None:
        raise ConfigError(
            f"the resolution of {storage.redact(info.checkpoint)} is unknown; set model.model_mpp to score slides"
        )
    if not storage.is_remote(output_dir):
        Path(output_dir).mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    pending: list[SlideEntry] = []
    for entry in entries:
        previous = _already_scored(entry, output_dir, info, config.scoring)
        if previous is not None:
            rows.append(summary_row(entry, SKIPPED, score=previous))
        else:
            pending.append(entry)
    logger.info("%d slide(s) listed: %d already scored, %d to score", len(entries), len(rows), len(pending))

    if pending:
        items = [{"slide_id": entry.slide_id, "path": entry.path,
                  "mpp": math.nan if entry.mpp is None else entry.mpp} for entry in pending]
        statuses = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            SlideScorer,
            batch_size=1,
            concurrency=min(config.num_actors, len(items)),
            num_cpus=config.cpus_per_actor,
            num_gpus=1 if config.use_gpu else 0,
            fn_constructor_kwargs={"info": info, "scoring": config.scoring, "output_dir": output_dir,
                                   "use_gpu": config.use_gpu, "cache_dir": config.model.cache_dir},
        ).take_all()
        by_id = {entry.slide_id: entry for entry in pending}
        for status in statuses:
            entry = by_id[status["slide_id"]]
            score = SlideScore.model_validate_json(status["result"]) if status["status"] == SCORED else None
            rows.append(summary_row(entry, status["status"], score=score, error=status["error"],
                                    seconds=score.seconds if score else 0.0))

    summary = summary_frame(rows)
    summary_location = storage.join(output_dir, SUMMARY_FILE)
    # write_bytes replaces a local summary.csv atomically; an object becomes visible only once uploaded.
    storage.write_bytes(summary_location, summary.to_csv(index=False).encode("utf-8"))
    counts = summary["status"].value_counts().to_dict()
    logger.info("summary written to %s: %s", storage.redact(summary_location), counts)
    return summary
