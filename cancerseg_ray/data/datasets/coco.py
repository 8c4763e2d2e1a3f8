"""COCO instance-segmentation JSON: images with RLE or polygon instances.

Segmentations may be uncompressed RLE (``{"counts": [int, ...], "size": [h, w]}``),
compressed RLE (``counts`` as the COCO string encoding) or polygon lists.
RLE runs alternate background and foreground, starting with background, and
run over the pixels in column-major (Fortran) order. Categories map to classes
through the label map's ``annotation_names``; where instances of different
classes overlap, the label map's precedence decides.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rasterio import features
from shapely.geometry import Polygon

from cancerseg_ray.data.array_tiling import tile_array_pair
from cancerseg_ray.data.datasets.slides import failure
from cancerseg_ray.data.labels import LabelMap
from cancerseg_ray.data.sources import CocoSource
from cancerseg_ray.data.tile_sink import TileSink
from cancerseg_ray.data.work_items import WorkerContext, WorkItem
from cancerseg_ray.errors import InputDataError
from cancerseg_ray.io.images import read_rgb


def decode_rle_counts(counts: str) -> list[int]:
    """Decode the COCO compressed RLE string into run lengths.

    Each run is a variable-length number in 5-bit groups with a continuation
    bit, stored as characters offset by 48; runs after the second are stored
    as the difference to the run two places before.
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise InputDataError("compressed RLE ends inside a number; the counts string is truncated")
            code = ord(counts[position]) - 48
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_rle(segmentation: dict[str, Any], *, height: int, width: int, where: str) -> np.ndarray:
    """Decode an RLE segmentation into an (height, width) bool mask.

    Raises:
        InputDataError: If the size disagrees with the image or the runs do not cover it exactly.
    """
    size = segmentation.get("size")
    if list(size or []) != [height, width]:
        raise InputDataError(f"{where}: RLE size {size} differs from the image size [{height}, {width}]")
    counts = segmentation.get("counts")
    runs = decode_rle_counts(counts) if isinstance(counts, str) else counts
    if not isinstance(runs, list) or any(not isinstance(run, int) or run < 0 for run in runs):
        raise InputDataError(f"{where}: RLE counts must be non-negative integers or a COCO counts string")
    if sum(runs) != height * width:
        raise InputDataError(f"{where}: RLE runs cover {sum(runs)} pixels, the image has {height * width}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((width, height)).T


def rasterize_polygons(polygons: list[list[float]], *, height: int, width: int, where: str) -> np.ndarray:
    """Rasterise COCO polygon lists (x0, y0, x1, y1, ...) into an (height, width) bool mask."""
    shapes = []
    for flat in polygons:
        if len(flat) < 6 or len(flat) % 2:
            raise InputDataError(f"{where}: a polygon needs at least three x, y pairs, got {len(flat)} numbers")
        shapes.append((Polygon(np.asarray(flat, dtype=np.float64).reshape(-1, 2)), 1))
    burned = features.rasterize(shapes, out_shape=(height, width), fill=0, dtype=np.uint8)
    return burned.astype(bool)


def load_coco(path: Path) -> dict[str, Any]:
    """Read a COCO JSON and check its top-level lists.

    Raises:
        InputDataError: If the file is missing, not JSON, or lacks images, annotations or categories.
    """
    if not path.is_file():
        raise InputDataError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputDataError(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from error
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise InputDataError(f"{path}: a COCO file needs a '{key}' list")
    return data


def list_coco_items(source: CocoSource, labels: LabelMap) -> tuple[list[WorkItem], list[dict[str, Any]]]:
    """List one work item per image, carrying that image's instances.

    Raises:
        InputDataError: If the COCO file is invalid.
        LabelMapError: If categories are neither mapped nor ignored by the label map.
    """
    data = load_coco(source.annotations_file)
    categories = {int(category["id"]): str(category["name"]) for category in data["categories"]}
    labels.resolve_annotation_names(categories.values(), source=str(source.annotations_file))
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in data["annotations"]:
        by_image[int(annotation["image_id"])].append({
            "category": categories[int(annotation["category_id"])],
            "segmentation": annotation["segmentation"],
            "id": annotation.get("id"),
        })
    items, failed = [], []
    for image in data["images"]:
        path = source.images_dir / image["file_name"]
        item_id = Path(image["file_name"]).stem
        if not path.is_file():
            failed.append(failure(item_id, path, f"image not found: {path} (listed in {source.annotations_file})"))
            continue
        items.append(WorkItem(
            item_id=item_id,
            kind="coco",
            source_path=str(path.resolve()),
            mpp=source.mpp,
            extra={"height": int(image["height"]), "width": int(image["width"]),
                   "instances": by_image.get(int(image["id"]), [])},
        ))
    return items, failed


def instances_to_mask(item: WorkItem, labels: LabelMap, *, fill: int) -> np.ndarray:
    """Burn an image's instances into a class-id mask, lowest precedence first."""
    height, width = item.extra["height"], item.extra["width"]
    mask = np.full((height, width), fill, dtype=np.uint8)
    lookup = labels.resolve_annotation_names(
        [instance["category"] for instance in item.extra["instances"]], source=item.source_path
    )
    order = labels.precedence or labels.class_names
    rank = {name: position for position, name in enumerate(order)}
    ignored_rank = len(order)
    instances = sorted(
        item.extra["instances"],
        key=lambda instance: rank.get(lookup[instance["category"]] or "", ignored_rank),
    )
    for instance in instances:
        where = f"{item.source_path}: instance {instance['id']}"
        segmentation = instance["segmentation"]
        if isinstance(segmentation, dict):
            region = decode_rle(segmentation, height=height, width=width, where=where)
        elif isinstance(segmentation, list):
            region = rasterize_polygons(segmentation, height=height, width=width, where=where)
        else:
            raise InputDataError(f"{where}: segmentation must be an RLE object or a list of polygons")
        target = lookup[instance["category"]]
        mask[region] = labels.ignore_index if target is None else labels.class_id(target)
    return mask


def tile_coco(item: WorkItem, context: WorkerContext, sink: TileSink, summary: dict[str, Any]) -> None:
    """Tile one COCO image and the mask of its instances (runs inside a Ray task)."""
    config = context.config
    source = config.source
    assert isinstance(source, CocoSource)
    labels = config.labels
    image = read_rgb(item.source_path)
    if image.shape[:2] != (item.extra["height"], item.extra["width"]):
        raise InputDataError(
            f"{item.source_path}: image size {image.shape[1]}x{image.shape[0]} (WxH) differs from the "
            f"{item.extra['width']}x{item.extra['height']} given in {source.annotations_file}"
        )
    fill = labels.class_id(source.unannotated_class) if source.unannotated_class else labels.ignore_index
    mask = instances_to_mask(item, labels, fill=fill)
    summary.update(instances=len(item.extra["instances"]), mpp=config.target_mpp or item.mpp)
    tile_array_pair(sink, image, mask, context=context, mpp=item.mpp)
