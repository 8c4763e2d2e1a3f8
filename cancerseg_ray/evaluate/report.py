"""Writing the evaluation report: Markdown, self-contained HTML, JSON, CSV, PNG figures and best.json."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cancerseg_ray import storage
from cancerseg_ray.data.splits import write_json_atomic
from cancerseg_ray.evaluate.document import (
    Figure,
    Section,
    figure_path,
    render_html_document,
    render_markdown_document,
)
from cancerseg_ray.evaluate.published import PUBLISHED_SOURCE, published_results
from cancerseg_ray.evaluate.sections import build_sections
from cancerseg_ray.evaluate.tables import (
    per_class_table,
    published_comparison,
    runs_table,
    tests_table,
)
from cancerseg_ray.metrics import SCALAR_METRICS

if TYPE_CHECKING:
    from cancerseg_ray.evaluate.job import EvaluationResult

logger = logging.getLogger(__name__)

REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
BEST_FILE = "best.json"
FIGURES_DIR = "figures"
CSV_FILES = ("runs.csv", "summary.csv", "per_class.csv", "tests.csv", "bootstrap.csv")
BEST_CRITERION = "highest validation mIoU over all evaluated runs (the test split plays no part in the choice)"


def select_best_run(result: EvaluationResult) -> dict[str, Any] | None:
    """Pick the run to serve by validation mIoU, never by a test-split figure.

    Ties go to the variant listed first, then the lower seed. Returns None
    when no run was evaluated.
    """
    if not result.runs:
        return None
    best = max(result.runs, key=lambda run: (run["val_miou"], -result.runs.index(run)))
    return {
        "dataset_name": result.info.dataset_name,
        "checkpoint": best["checkpoint"],
        "checkpoint_sha256": best["checkpoint_sha256"],
        "variant": best["variant"],
        "seed": best["seed"],
        "criterion": BEST_CRITERION,
        "val_miou": best["val_miou"],
        f"{result.split}_metrics": best["headline"],
        "class_map": result.info.class_map(),
        "mpp": result.info.mpp,
        "tile_size": result.info.tile_size,
    }


def _title(result: EvaluationResult) -> str:
    return f"Evaluation report: {result.info.dataset_name}, {result.split} split"


def _preamble(result: EvaluationResult) -> list[str]:
    seeds = sorted({run["seed"] for run in result.runs})
    return [
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from the shards in `{storage.redact(result.info.root)}`.",
        f"Classes: {', '.join(result.info.class_names)}. Variants: "
        f"{', '.join(f'`{v}`' for v in result.variants) or 'none'}. Runs evaluated: {len(result.runs)} "
        f"(seeds {', '.join(map(str, seeds)) or 'none'}); runs left out: {len(result.skipped)}. "
        f"Test images: {len(result.image_ids)}; tiles: {result.baseline['tiles']}.",
    ]


def _sections(result: EvaluationResult, best: dict[str, Any] | None, files: list[str]) -> list[Section]:
    return build_sections(result, best=best, criterion=BEST_CRITERION, files=files)


def render_markdown(result: EvaluationResult, *, test_metrics: list[str] | None = None) -> str:
    """Render the report as Markdown; figures are referenced as files under ``figures/``."""
    if test_metrics is not None:
        result.test_metrics = list(test_metrics)
    sections = _sections(result, select_best_run(result), _file_names(result))
    return render_markdown_document(_title(result), sections, preamble=_preamble(result))


def _file_names(result: EvaluationResult) -> list[str]:
    names = [REPORT_MARKDOWN, REPORT_HTML, REPORT_JSON, *CSV_FILES, "evaluation_config.json"]
    if result.runs:
        names.append(BEST_FILE)
    if result.figures:
        names.append(f"{FIGURES_DIR}/*.png")
    return names


def _json_payload(result: EvaluationResult, best: dict[str, Any] | None, figures: list[str]) -> dict[str, Any]:
    return {
        "dataset_name": result.info.dataset_name,
        "split": result.split,
        "class_names": result.info.class_names,
        "image_ids": result.image_ids,
        "variants": result.variants,
        "scalar_metrics": list(SCALAR_METRICS),
        "test_metrics": result.test_metrics,
        "significance_level": result.significance_level,
        "baseline": result.baseline,
        "runs": result.runs,
        "summary": json.loads(result.summary.to_json(orient="records")) if not result.summary.empty else [],
        "per_class": json.loads(per_class_table(result).to_json(orient="records")),
        "paired_t_tests": result.tests,
        "wilcoxon_tests": result.wilcoxon,
        "bootstrap_intervals": result.bootstrap,
        "published": {"source": PUBLISHED_SOURCE,
                      "rows": published_comparison(result, published_results(result.info.dataset_name))},
        "panel_tiles": [{"image_id": t.image_id, "x": t.x, "y": t.y} for t in result.panels],
        "panel_runs": result.panel_runs,
        "best": best,
        "skipped_runs": result.skipped,
        "notes": result.notes,
        "figures": figures,
        "seconds": round(result.seconds, 1),
    }


def _write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def _write_csv_files(result: EvaluationResult, output: Path) -> None:
    runs_table(result).to_csv(output / "runs.csv", index=False)
    result.summary.to_csv(output / "summary.csv", index=False)
    per_class_table(result).to_csv(output / "per_class.csv", index=False)
    tests_table(result).to_csv(output / "tests.csv", index=False)
    pd.DataFrame([{**b, "excluded_images": " ".join(b["excluded_images"])} for b in result.bootstrap]).to_csv(
        output / "bootstrap.csv", index=False)


def write_report(result: EvaluationResult, output: Path, *, test_metrics: list[str] | None = None) -> Path:
    """Write every report file into ``output`` and return the Markdown report's path.

    Files: ``report.md`` (figures referenced under ``figures/``), ``report.html``
    (one page with the figures embedded as base64 PNG), ``report.json``,
    ``runs.csv``, ``summary.csv``, ``per_class.csv``, ``tests.csv`` (t-tests
    and Wilcoxon tests), ``bootstrap.csv``, ``figures/*.png`` and, when a run
    was evaluated, ``best.json``. When no run could be evaluated, a
    ``best.json`` left from an earlier report is renamed to
    ``best.json.stale``, so serving never picks up a checkpoint this report
    did not check and the old record is kept.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if test_metrics is not None:
        result.test_metrics = list(test_metrics)
    best = select_best_run(result)
    sections = _sections(result, best, _file_names(result))
    figures = [block for section in sections for block in section.blocks if isinstance(block, Figure)]
    if figures:
        (output / FIGURES_DIR).mkdir(exist_ok=True)
    for figure in figures:
        (output / figure_path(figure)).write_bytes(figure.png)

    write_json_atomic(output / REPORT_JSON, _json_payload(result, best, [figure_path(f) for f in figures]))
    _write_csv_files(result, output)
    if best is not None:
        write_json_atomic(output / BEST_FILE, best)
    elif (output / BEST_FILE).exists():
        stale = output / f"{BEST_FILE}.stale"
        logger.warning("no run was evaluated; renaming the earlier %s to %s so that serving does not use it",
                       output / BEST_FILE, stale)
        (output / BEST_FILE).replace(stale)

    title, preamble = _title(result), _preamble(result)
    _write_text_atomic(output / REPORT_HTML, render_html_document(title, sections, preamble=preamble))
    markdown = output / REPORT_MARKDOWN
    _write_text_atomic(markdown, render_markdown_document(title, sections, preamble=preamble))
    logger.info("report written to %s and %s", markdown, output / REPORT_HTML)
    return markdown
