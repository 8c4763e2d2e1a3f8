"""Reading polygon annotations from QuPath GeoJSON and Aperio ImageScope XML.

Every reader returns a ``geopandas.GeoDataFrame`` with the columns

- ``class_name`` (str): the annotation class,
- ``object_type`` (str or None): QuPath's object type (``annotation``,
  ``detection``, ``cell``, ``tile``); None for ImageScope XML,
- ``geometry``: a shapely ``Polygon`` or ``MultiPolygon`` in level-0 pixel
  coordinates of the slide (origin top left, y down),

and ``gdf.attrs`` with ``source`` (the file path) and ``mpp`` (the
resolution stored in the file in µm/px, or None).

Invalid polygons are repaired with ``shapely.make_valid`` and only their
polygonal parts are kept. Points and lines cannot be rasterised into label
masks, so they are skipped with a logged count.
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from cancerseg_ray.errors import InputDataError, LabelMapError

logger = logging.getLogger(__name__)

CLASS_NAME_SEPARATOR = ": "
"""Separator between the parts of a derived QuPath class such as ``Tumor: Positive``.

The parts are joined the way QuPath displays the class (``PathClass.toString``),
so a label map can use the class names shown in QuPath.
"""

AnnotationFormat = Literal["auto", "geojson", "imagescope_xml"]

_GEOJSON_SUFFIXES = frozenset({".geojson", ".json"})
_XML_SUFFIXES = frozenset({".xml"})
_POLYGONAL_TYPES = frozenset({"Polygon", "MultiPolygon"})
_SKIPPED_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString"})
# QuPath 0.2 stored the object type in the feature's "id" member as a Java class name.
_QUPATH_LEGACY_OBJECT_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
}
_MAX_CLASS_DEPTH = 32
_MAX_LISTED = 10


class AnnotationError(InputDataError):
    """An annotation file is missing, malformed or contains no usable polygons."""


@dataclass
class _Collected:
    """Polygons gathered from one file, before the GeoDataFrame is built."""

    class_names: list[str] = field(default_factory=list)
    object_types: list[str | None] = field(default_factory=list)
    geometries: list[BaseGeometry] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, class_name: str, object_type: str | None, geometry: BaseGeometry) -> None:
        self.class_names.append(class_name)
        self.object_types.append(object_type)
        self.geometries.append(geometry)


def read_annotations(
    path: str | Path,
    *,
    default_class: str | None = None,
    object_types: Collection[str] | None = None,
    format: AnnotationFormat = "auto",
) -> gpd.GeoDataFrame:
    """Read polygon annotations from a QuPath GeoJSON or Aperio ImageScope XML file.

    With ``format="auto"`` the suffix decides: ``.geojson``/``.json`` is read
    as GeoJSON and ``.xml`` as ImageScope XML; other suffixes are detected from
    the first non-blank character (``<`` for XML).

    Args:
        path: Annotation file.
        default_class: Class for features or ImageScope layers that carry no
            class. Without it, an unclassified polygon raises ``AnnotationError``.
        object_types: QuPath object types to keep, such as ``{"annotation"}``;
            None keeps all. Ignored for ImageScope XML, which has no object types.
        format: ``"geojson"``, ``"imagescope_xml"`` or ``"auto"``.

    Returns:
        One row per polygonal feature or region, see the module docstring.

    Raises:
        AnnotationError: If the file is missing, malformed or contains no
            polygons, or if a polygon has no class and no ``default_class`` is given.
    """
    path = Path(path)
    resolved = _resolve_format(path, format)
    if resolved == "geojson":
        return read_geojson_annotations(
            path, default_class=default_class, object_types=object_types
        )
    return read_imagescope_annotations(path, default_class=default_class)


def read_geojson_annotations(
    path: str | Path,
    *,
    default_class: str | None = None,
    object_types: Collection[str] | None = None,
) -> gpd.GeoDataFrame:
    """Read a QuPath-style GeoJSON file.

    Accepted layouts are a ``FeatureCollection``, a bare JSON list of features
    and a single ``Feature``, because QuPath writes each of them depending on
    the export options. Child objects nested in ``properties.childObjects``
    (a hierarchy export) are read as features of their own.

    The class of a feature is taken from ``properties.classification``: its
    ``names`` list joined with ``CLASS_NAME_SEPARATOR``, else its ``name``
    prefixed by the names of any nested ``parentClass`` (older QuPath
    versions wrote derived classes that way), else the classification itself when it
    is a plain string. Without a classification, ``default_class`` is used.
    The feature's ``properties.name`` is never used as a class, because QuPath
    stores user-given object names such as "Annotation 3" there. For cells,
    the cell boundary (``geometry``) is read and ``nucleusGeometry`` is ignored.

    Args:
        path: GeoJSON file.
        default_class: Class for features without a classification.
        object_types: QuPath object types to keep; None keeps all.

    Returns:
        One row per polygonal feature; ``attrs["mpp"]`` is None.

    Raises:
        AnnotationError: See ``read_annotations``.
    """
    path = Path(path)
    features = list(_flatten_child_objects(_load_geojson_features(path)))
    if not features:
        raise AnnotationError(
            f"{path}: the GeoJSON contains no features; export the annotations again "
            "or remove the file from the manifest"
        )

    collected = _Collected()
    unclassified: list[int] = []
    filtered_out = 0
    for index, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            found = feature.get("type") if isinstance(feature, dict) else type(feature).__name__
            raise AnnotationError(
                f"{path}: item {index} is not a GeoJSON Feature (found {found!r})"
            )
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise AnnotationError(
                f"{path}: feature {index} has properties that are not a JSON object"
            )

        object_type = _qupath_object_type(feature, properties)
        if object_types is not None and object_type not in object_types:
            filtered_out += 1
            continue

        geometry = _feature_geometry(path, index, feature, collected.skipped)
        if geometry is None:
            continue

        class_name = _qupath_class_name(properties) or default_class
        if class_name is None:
            unclassified.append(index)
            continue
        collected.add(class_name, object_type, geometry)

    if unclassified:
        listed = ", ".join(str(index) for index in unclassified[:_MAX_LISTED])
        more = (
            f" and {len(unclassified) - _MAX_LISTED} more"
            if len(unclassified) > _MAX_LISTED
            else ""
        )
        raise AnnotationError(
            f"{path}: {len(unclassified)} polygon feature(s) have no classification "
            f"(feature index {listed}{more}, counted in file order); classify them in QuPath "
            "or pass default_class"
        )
    if filtered_out:
        logger.info(
            "%s: %d feature(s) skipped because their object type is not in %s",
            path,
            filtered_out,
            sorted(object_types or ()),
        )
    return _build_frame(path, collected, mpp=None)


def read_imagescope_annotations(
    path: str | Path, *, default_class: str | None = None
) -> gpd.GeoDataFrame:
    """Read an Aperio ImageScope XML file.

    Each ``Annotations/Annotation/Regions/Region`` becomes one polygon from its
    ``Vertices/Vertex`` X and Y attributes. Regions marked ``NegativeROA="1"``
    are exclusions: they are cut out of the other regions of the same
    annotation layer and are not returned themselves. The class of a layer is
    its ``Name`` attribute, else the first non-blank ``Value`` in its
    ``Attributes``, else ``default_class`` (MoNuSeg files, for example, leave
    both blank, so pass ``default_class="nucleus"``).

    Args:
        path: ImageScope XML file.
        default_class: Class for layers without a name or attribute value.

    Returns:
        One row per region. ``object_type`` is None, and ``attrs["mpp"]`` is
        the ``MicronsPerPixel`` attribute of the root, else that of the first
        layer that has one, else None.

    Raises:
        AnnotationError: See ``read_annotations``.
    """
    path = Path(path)
    root = _parse_xml(path)
    mpp = _imagescope_mpp(root)

    collected = _Collected()
    unclassified: list[str] = []
    for layer_index, layer in enumerate(root.findall("Annotation")):
        layer_id = layer.get("Id", str(layer_index + 1))
        positives, negatives = _imagescope_regions(path, layer, layer_id, collected.skipped)
        if not positives:
            continue
        class_name = _imagescope_class_name(layer) or default_class
        if class_name is None:
            unclassified.append(layer_id)
            continue
        if negatives:
            excluded = shapely.union_all([shapely.make_valid(polygon) for polygon in negatives])
            positives = [shapely.make_valid(polygon).difference(excluded) for polygon in positives]
        for polygon in positives:
            collected.add(class_name, None, polygon)

    if unclassified:
        raise AnnotationError(
            f"{path}: annotation layer(s) with Id {', '.join(unclassified)} have no Name and no "
            "attribute value to use as class; name the layers in ImageScope or pass default_class"
        )
    return _build_frame(path, collected, mpp=mpp)


def clip_to_bounds(
    gdf: gpd.GeoDataFrame,
    width: float,
    height: float,
    *,
    x0: float = 0.0,
    y0: float = 0.0,
) -> gpd.GeoDataFrame:
    """Clip annotations to a rectangle, normally the slide or its scanned bounds.

    Parts outside the rectangle are cut away; features that lie wholly outside
    are dropped. Both counts are logged.

    Args:
        gdf: Annotations as returned by ``read_annotations``.
        width: Rectangle width in level-0 pixels.
        height: Rectangle height in level-0 pixels.
        x0: Left edge of the rectangle in level-0 pixels.
        y0: Top edge of the rectangle in level-0 pixels.

    Returns:
        A new GeoDataFrame with the same columns and ``attrs``.
    """
    if not (width > 0 and height > 0):
        raise ValueError(f"width and height must be positive, got {width} x {height}")
    bounds = shapely.box(x0, y0, x0 + width, y0 + height)
    geometries = gdf.geometry.to_numpy()
    inside = shapely.within(geometries, bounds)
    clipped = geometries.copy()
    clipped[~inside] = shapely.intersection(geometries[~inside], bounds)
    polygonal = [_polygonal_part(geometry) for geometry in clipped]
    keep = [geometry is not None for geometry in polygonal]

    dropped = len(keep) - sum(keep)
    cut = int((~inside).sum()) - dropped
    source = gdf.attrs.get("source", "annotations")
    if cut:
        logger.info(
            "%s: %d feature(s) clipped to the %gx%g bounds at (%g, %g)",
            source,
            cut,
            width,
            height,
            x0,
            y0,
        )
    if dropped:
        logger.warning(
            "%s: %d feature(s) dropped because they lie outside the %gx%g bounds at (%g, %g)",
            source,
            dropped,
            width,
            height,
            x0,
            y0,
        )

    result = gdf.loc[keep].copy()
    kept_geometries = [geometry for geometry in polygonal if geometry is not None]
    result["geometry"] = gpd.GeoSeries(kept_geometries, index=result.index)
    result.attrs = dict(gdf.attrs)
    return result


def validate_class_names(gdf: gpd.GeoDataFrame, known: Mapping[str, int], path: str | Path) -> None:
    """Check that every annotation class is in the label map.

    Args:
        gdf: Annotations as returned by ``read_annotations``.
        known: Label map from class name to class id.
        path: Annotation file, named in the error message.

    Raises:
        LabelMapError: Listing all unknown class names (sorted) and the known ones.
    """
    unknown = sorted(set(gdf["class_name"]) - set(known))
    if unknown:
        raise LabelMapError(
            f"{path}: annotation class(es) not in the label map: {', '.join(map(repr, unknown))}. "
            f"Known classes: {', '.join(map(repr, sorted(known)))}. Add the missing classes to "
            "the label map or rename them in the annotation file."
        )


# GeoJSON helpers.


def _resolve_format(path: Path, format: AnnotationFormat) -> Literal["geojson", "imagescope_xml"]:
    if format in ("geojson", "imagescope_xml"):
        return format
    if format != "auto":
        raise ValueError(f"format must be 'auto', 'geojson' or 'imagescope_xml', got {format!r}")
    suffix = path.suffix.lower()
    if suffix in _GEOJSON_SUFFIXES:
        return "geojson"
    if suffix in _XML_SUFFIXES:
        return "imagescope_xml"
    _check_file(path)
    with path.open("rb") as file:
        start = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "imagescope_xml" if start.startswith(b"<") else "geojson"


def _check_file(path: Path) -> None:
    if not path.is_file():
        reason = "not a regular file" if path.exists() else "file not found"
        raise AnnotationError(
            f"{path}: {reason}; check the annotation path in the manifest or config"
        )


def _load_geojson_features(path: Path) -> list[Any]:
    _check_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{path}: not UTF-8 text ({error}); GeoJSON must be UTF-8") from error
    except OSError as error:
        raise AnnotationError(f"{path}: cannot read the file ({error})") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise AnnotationError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}; "
            "fix the file or export it again"
        ) from error

    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise AnnotationError(f"{path}: the FeatureCollection has no 'features' list")
        return features
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    found = data.get("type") if isinstance(data, dict) else type(data).__name__
    raise AnnotationError(
        f"{path}: expected a GeoJSON FeatureCollection, a Feature or a list of Features, found {found!r}"
    )


def _flatten_child_objects(features: list[Any]) -> Iterator[Any]:
    """Yield each feature followed by the features nested in its ``properties.childObjects``."""
    pending = list(reversed(features))
    while pending:
        feature = pending.pop()
        yield feature
        properties = feature.get("properties") if isinstance(feature, dict) else None
        children = properties.get("childObjects") if isinstance(properties, dict) else None
        if isinstance(children, list):
            pending.extend(reversed(children))


def _qupath_object_type(feature: Mapping[str, Any], properties: Mapping[str, Any]) -> str | None:
    # QuPath itself reads "object_type" as an older spelling of "objectType".
    for key in ("objectType", "object_type"):
        object_type = properties.get(key)
        if isinstance(object_type, str):
            return object_type
    return _QUPATH_LEGACY_OBJECT_TYPES.get(str(feature.get("id")))


def _qupath_class_name(properties: Mapping[str, Any]) -> str | None:
    classification = properties.get("classification")
    if isinstance(classification, str):
        return classification.strip() or None
    if not isinstance(classification, dict):
        return None

    names = classification.get("names")
    if isinstance(names, list) and names and all(isinstance(name, str) for name in names):
        return CLASS_NAME_SEPARATOR.join(name.strip() for name in names)

    parts: list[str] = []
    node: Any = classification
    for _ in range(_MAX_CLASS_DEPTH):
        if not isinstance(node, dict):
            break
        name = node.get("name")
        if isinstance(name, str) and name.strip():
            parts.append(name.strip())
        node = node.get("parentClass")
    return CLASS_NAME_SEPARATOR.join(reversed(parts)) or None


def _feature_geometry(
    path: Path, index: int, feature: Mapping[str, Any], skipped: Counter[str]
) -> BaseGeometry | None:
    """Convert a feature's geometry with shapely, or count it as skipped."""
    geometry_json = feature.get("geometry")
    if geometry_json is None:
        skipped["no geometry"] += 1
        return None
    geometry_type = geometry_json.get("type") if isinstance(geometry_json, dict) else None
    if geometry_type in _SKIPPED_TYPES:
        skipped[geometry_type] += 1
        return None
    if geometry_type not in _POLYGONAL_TYPES and geometry_type != "GeometryCollection":
        raise AnnotationError(
            f"{path}: feature {index} has an unknown geometry type {geometry_type!r}"
        )
    try:
        geometry = shape(geometry_json)
    except (shapely.errors.ShapelyError, ValueError, TypeError, KeyError, IndexError) as error:
        raise AnnotationError(
            f"{path}: feature {index} has a malformed {geometry_type} geometry ({error})"
        ) from error

    if geometry_type == "GeometryCollection":
        parts = shapely.get_parts(geometry)
        polygons = [part for part in parts if part.geom_type in _POLYGONAL_TYPES]
        for part in parts:
            if part.geom_type not in _POLYGONAL_TYPES:
                skipped[part.geom_type] += 1
        if not polygons:
            return None
        geometry = shapely.union_all(polygons)
    return geometry


# ImageScope XML helpers.


def _parse_xml(path: Path) -> ET.Element:
    _check_file(path)
    # NOTE: only expat 2.4.1 or later (see pyexpat.EXPAT_VERSION) limits entity
    # expansion ("billion laughs"); defusedxml is not a dependency.
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        line, column = error.position
        raise AnnotationError(
            f"{path}: malformed XML at line {line}, column {column} ({error}); "
            "fix the file or export it again from ImageScope"
        ) from error
    except OSError as error:
        raise AnnotationError(f"{path}: cannot read the file ({error})") from error
    if root.tag != "Annotations":
        raise AnnotationError(
            f"{path}: the XML root element is <{root.tag}>, not <Annotations>; "
            "this is not an Aperio ImageScope annotation file"
        )
    return root


def _imagescope_mpp(root: ET.Element) -> float | None:
    candidates = [root.get("MicronsPerPixel")] + [
        layer.get("MicronsPerPixel") for layer in root.findall("Annotation")
    ]
    for value in candidates:
        if value is None:
            continue
        try:
            mpp = float(value)
        except ValueError:
            continue
        if math.isfinite(mpp) and mpp > 0:
            return mpp
    return None


def _imagescope_class_name(layer: ET.Element) -> str | None:
    name = (layer.get("Name") or "").strip()
    if name:
        return name
    for attribute in layer.findall("Attributes/Attribute"):
        value = (attribute.get("Value") or "").strip()
        if value:
            return value
    return None


def _imagescope_regions(
    path: Path, layer: ET.Element, layer_id: str, skipped: Counter[str]
) -> tuple[list[Polygon], list[Polygon]]:
    """Split a layer's regions into included and excluded (``NegativeROA="1"``) polygons."""
    positives: list[Polygon] = []
    negatives: list[Polygon] = []
    for region_index, region in enumerate(layer.findall("Regions/Region")):
        region_id = region.get("Id", str(region_index + 1))
        coordinates = []
        for vertex in region.findall("Vertices/Vertex"):
            try:
                coordinates.append((float(vertex.get("X", "")), float(vertex.get("Y", ""))))
            except ValueError as error:
                raise AnnotationError(
                    f"{path}: region {region_id} of annotation {layer_id} has a vertex with "
                    f"invalid coordinates X={vertex.get('X')!r}, Y={vertex.get('Y')!r}"
                ) from error
        if len(set(coordinates)) < 3:
            # ImageScope rulers, arrows and single clicks have fewer than three
            # distinct vertices and enclose no area.
            skipped["region with fewer than 3 vertices"] += 1
            continue
        polygon = Polygon(coordinates)
        if region.get("NegativeROA") == "1":
            negatives.append(polygon)
        else:
            positives.append(polygon)
    return positives, negatives


# Shared helpers.


def _polygonal_part(geometry: BaseGeometry | None) -> Polygon | MultiPolygon | None:
    """Return the polygonal part of a geometry, or None if it has no area."""
    if geometry is None or geometry.is_empty:
        return None
    if geometry.geom_type in _POLYGONAL_TYPES:
        return geometry
    polygons = [
        part
        for part in shapely.get_parts(geometry)
        if part.geom_type in _POLYGONAL_TYPES and not part.is_empty
    ]
    if not polygons:
        return None
    merged = shapely.union_all(polygons)
    return merged if merged.geom_type in _POLYGONAL_TYPES else None


def _build_frame(path: Path, collected: _Collected, *, mpp: float | None) -> gpd.GeoDataFrame:
    """Repair invalid polygons, log what was skipped and build the GeoDataFrame."""
    repaired = 0
    degenerate = 0
    class_names: list[str] = []
    object_types: list[str | None] = []
    geometries: list[Polygon | MultiPolygon] = []
    for class_name, object_type, geometry in zip(
        collected.class_names, collected.object_types, collected.geometries, strict=True
    ):
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
            repaired += 1
        polygonal = _polygonal_part(geometry)
        if polygonal is None or polygonal.area == 0:
            degenerate += 1
            continue
        class_names.append(class_name)
        object_types.append(object_type)
        geometries.append(polygonal)

    if collected.skipped:
        counts = ", ".join(f"{count} {kind}" for kind, count in sorted(collected.skipped.items()))
        logger.warning("%s: skipped features that are not polygons: %s", path, counts)
    if repaired:
        logger.warning("%s: repaired %d invalid polygon(s) with shapely.make_valid", path, repaired)
    if degenerate:
        logger.warning("%s: dropped %d polygon(s) with zero area", path, degenerate)
    if not geometries:
        raise AnnotationError(
            f"{path}: no polygon annotations found (skipped: "
            f"{dict(collected.skipped) or 'nothing'}, zero-area: {degenerate}); "
            "export polygon annotations or remove the file from the manifest"
        )

    frame = gpd.GeoDataFrame(
        {"class_name": class_names, "object_type": object_types},
        geometry=gpd.GeoSeries(geometries),
        crs=None,
    )
    frame.attrs = {"source": str(path), "mpp": mpp}
    return frame
