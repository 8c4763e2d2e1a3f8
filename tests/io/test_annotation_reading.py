"""Tests of reading QuPath GeoJSON and ImageScope XML annotations."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import shapely
from io_samples import MONUSEG_XML, feature_collection, polygon_feature, square

from cancerseg_ray.errors import InputDataError, LabelMapError
from cancerseg_ray.io.annotations import (
    AnnotationError,
    clip_to_bounds,
    read_annotations,
    validate_class_names,
)

WriteJson = Callable[..., Path]


# GeoJSON layouts.


def test_feature_collection(write_json: WriteJson) -> None:
    path = write_json(
        feature_collection(
            polygon_feature([square(0, 0, 10)], "Tumor"),
            polygon_feature([square(20, 0, 5)], "Stroma", object_type="detection"),
        )
    )
    gdf = read_annotations(path)
    assert list(gdf.columns) == ["class_name", "object_type", "geometry"]
    assert list(gdf["class_name"]) == ["Tumor", "Stroma"]
    assert list(gdf["object_type"]) == ["annotation", "detection"]
    assert list(gdf.geom_type) == ["Polygon", "Polygon"]
    assert gdf.geometry.iloc[0].area == pytest.approx(100.0)
    assert gdf.geometry.iloc[1].bounds == (20.0, 0.0, 25.0, 5.0)
    assert gdf.attrs["mpp"] is None
    assert gdf.attrs["source"] == str(path)


def test_bare_feature_list(write_json: WriteJson) -> None:
    path = write_json(
        [polygon_feature([square(0, 0, 10)]), polygon_feature([square(5, 5, 10)], "Stroma")]
    )
    gdf = read_annotations(path)
    assert list(gdf["class_name"]) == ["Tumor", "Stroma"]


def test_single_feature(write_json: WriteJson) -> None:
    gdf = read_annotations(write_json(polygon_feature([square(0, 0, 4)], "Necrosis")))
    assert list(gdf["class_name"]) == ["Necrosis"]
    assert gdf.geometry.iloc[0].area == pytest.approx(16.0)


def test_suffix_free_file_detected_as_geojson(write_json: WriteJson) -> None:
    gdf = read_annotations(
        write_json(feature_collection(polygon_feature([square(0, 0, 4)])), "export.txt")
    )
    assert len(gdf) == 1


def test_multipolygon_with_holes(write_json: WriteJson) -> None:
    feature = {
        "type": "Feature",
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [
                [square(0, 0, 100), square(25, 25, 50)],
                [square(200, 0, 10)],
            ],
        },
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
    }
    gdf = read_annotations(write_json(feature_collection(feature)))
    geometry = gdf.geometry.iloc[0]
    assert geometry.geom_type == "MultiPolygon"
    assert len(geometry.geoms) == 2
    assert len(geometry.geoms[0].interiors) == 1
    assert geometry.area == pytest.approx(100 * 100 - 50 * 50 + 10 * 10)
    assert not geometry.contains(shapely.Point(50, 50))


def test_classification_names_joined(write_json: WriteJson) -> None:
    feature = polygon_feature([square(0, 0, 10)], None)
    feature["properties"]["classification"] = {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}
    gdf = read_annotations(write_json([feature]))
    assert gdf["class_name"].iloc[0] == "Tumor: Positive"


def test_legacy_parent_class_chain(write_json: WriteJson) -> None:
    feature = polygon_feature([square(0, 0, 10)], None)
    feature["properties"]["classification"] = {
        "name": "Positive",
        "colorRGB": -1,
        "parentClass": {"name": "Tumor", "colorRGB": -2},
    }
    gdf = read_annotations(write_json([feature]))
    assert gdf["class_name"].iloc[0] == "Tumor: Positive"


def test_child_objects_flattened(write_json: WriteJson) -> None:
    parent = polygon_feature([square(0, 0, 100)], "Tissue")
    child = polygon_feature([square(10, 10, 5)], "Lymphocyte", object_type="cell")
    grandchild = polygon_feature([square(11, 11, 2)], "Nucleus", object_type="detection")
    child["properties"]["childObjects"] = [grandchild]
    parent["properties"]["childObjects"] = [child]
    gdf = read_annotations(
        write_json(feature_collection(parent, polygon_feature([square(200, 0, 5)], "Stroma")))
    )
    assert list(gdf["class_name"]) == ["Tissue", "Lymphocyte", "Nucleus", "Stroma"]
    assert list(gdf["object_type"]) == ["annotation", "cell", "detection", "annotation"]


def test_classification_as_plain_string(write_json: WriteJson) -> None:
    feature = polygon_feature([square(0, 0, 10)], None)
    feature["properties"]["classification"] = "Stroma"
    gdf = read_annotations(write_json([feature]))
    assert gdf["class_name"].iloc[0] == "Stroma"


def test_qupath_legacy_object_type(write_json: WriteJson) -> None:
    feature = polygon_feature([square(0, 0, 10)], "Tumor", object_type=None)
    feature["id"] = "PathDetectionObject"
    gdf = read_annotations(write_json([feature]))
    assert gdf["object_type"].iloc[0] == "detection"


def test_object_types_filter(write_json: WriteJson) -> None:
    path = write_json(
        [
            polygon_feature([square(0, 0, 10)], "Tumor"),
            polygon_feature([square(0, 0, 2)], "Lymphocyte", object_type="cell"),
        ]
    )
    gdf = read_annotations(path, object_types={"annotation"})
    assert list(gdf["class_name"]) == ["Tumor"]


def test_points_and_lines_skipped(write_json: WriteJson, caplog: pytest.LogCaptureFixture) -> None:
    point = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [1, 2]},
        "properties": {},
    }
    line = {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
        "properties": {},
    }
    path = write_json(feature_collection(point, point, line, polygon_feature([square(0, 0, 10)])))
    with caplog.at_level(logging.WARNING, logger="cancerseg_ray.io.annotations"):
        gdf = read_annotations(path)
    assert len(gdf) == 1
    assert "1 LineString, 2 Point" in caplog.text


def test_self_intersecting_polygon_repaired(
    write_json: WriteJson, caplog: pytest.LogCaptureFixture
) -> None:
    bow_tie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]
    path = write_json(
        feature_collection(polygon_feature([bow_tie]), polygon_feature([square(20, 20, 5)]))
    )
    with caplog.at_level(logging.WARNING, logger="cancerseg_ray.io.annotations"):
        gdf = read_annotations(path)
    repaired = gdf.geometry.iloc[0]
    assert repaired.is_valid
    assert repaired.geom_type == "MultiPolygon"
    assert len(repaired.geoms) == 2
    assert repaired.area == pytest.approx(50.0)
    assert "repaired 1 invalid polygon(s)" in caplog.text


def test_default_class_for_unclassified(write_json: WriteJson) -> None:
    path = write_json(
        [polygon_feature([square(0, 0, 10)], None), polygon_feature([square(0, 0, 3)], "Tumor")]
    )
    gdf = read_annotations(path, default_class="Tissue")
    assert list(gdf["class_name"]) == ["Tissue", "Tumor"]


# GeoJSON errors.


def test_unclassified_without_default(write_json: WriteJson) -> None:
    path = write_json(
        [
            polygon_feature([square(0, 0, 10)], "Tumor"),
            polygon_feature([square(0, 0, 10)], None),
            polygon_feature([square(0, 0, 10)], None),
        ]
    )
    with pytest.raises(AnnotationError) as caught:
        read_annotations(path)
    message = str(caught.value)
    assert str(path) in message
    assert "2 polygon feature(s) have no classification" in message
    assert "feature index 1, 2" in message
    assert "default_class" in message


def test_empty_feature_collection(write_json: WriteJson) -> None:
    path = write_json(feature_collection())
    with pytest.raises(AnnotationError, match="contains no features") as caught:
        read_annotations(path)
    assert str(path) in str(caught.value)


def test_points_only_raise(write_json: WriteJson) -> None:
    point = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [1, 2]},
        "properties": {},
    }
    with pytest.raises(AnnotationError, match="no polygon annotations found"):
        read_annotations(write_json([point]))


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.geojson"
    path.write_text('{\n  "type": "FeatureCollection",\n  "features": [,]\n}\n', encoding="utf-8")
    with pytest.raises(AnnotationError) as caught:
        read_annotations(path)
    message = str(caught.value)
    assert isinstance(caught.value, InputDataError)
    assert "broken.geojson" in message
    assert "invalid JSON at line 3, column 16" in message


def test_not_a_feature_collection(write_json: WriteJson) -> None:
    with pytest.raises(AnnotationError, match="found 'Polygon'"):
        read_annotations(write_json({"type": "Polygon", "coordinates": [square(0, 0, 1)]}))


def test_malformed_geometry(write_json: WriteJson) -> None:
    feature = polygon_feature([square(0, 0, 10)])
    feature["geometry"]["coordinates"] = [[[0, 0], [1]]]
    with pytest.raises(AnnotationError, match="feature 0 has a malformed Polygon geometry"):
        read_annotations(write_json([feature]))


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="absent.geojson: file not found"):
        read_annotations(tmp_path / "absent.geojson")


# Clipping and class validation.


def test_clip_to_bounds(write_json: WriteJson, caplog: pytest.LogCaptureFixture) -> None:
    path = write_json(
        [
            polygon_feature([square(10, 10, 20)], "Inside"),
            polygon_feature([square(90, 40, 20)], "Partly"),
            polygon_feature([square(200, 200, 10)], "Outside"),
        ]
    )
    gdf = read_annotations(path)
    with caplog.at_level(logging.INFO, logger="cancerseg_ray.io.annotations"):
        clipped = clip_to_bounds(gdf, 100, 80)
    assert list(clipped["class_name"]) == ["Inside", "Partly"]
    assert clipped.geometry.iloc[0].area == pytest.approx(400.0)
    assert clipped.geometry.iloc[1].bounds == (90.0, 40.0, 100.0, 60.0)
    assert clipped.attrs == gdf.attrs
    assert "1 feature(s) clipped" in caplog.text
    assert "1 feature(s) dropped because they lie outside" in caplog.text


def test_validate_class_names_lists_all_unknown(write_json: WriteJson) -> None:
    path = write_json(
        [
            polygon_feature([square(0, 0, 10)], "Tumor"),
            polygon_feature([square(0, 0, 10)], "Stroma"),
            polygon_feature([square(0, 0, 10)], "Necrosis"),
            polygon_feature([square(0, 0, 10)], "Fat"),
        ]
    )
    gdf = read_annotations(path)
    with pytest.raises(LabelMapError) as caught:
        validate_class_names(gdf, {"Tumor": 1, "Background": 0}, path)
    message = str(caught.value)
    assert str(path) in message
    assert "not in the label map: 'Fat', 'Necrosis', 'Stroma'." in message
    assert "Known classes: 'Background', 'Tumor'." in message


def test_validate_class_names_accepts_known(write_json: WriteJson) -> None:
    gdf = read_annotations(write_json([polygon_feature([square(0, 0, 10)], "Tumor")]))
    validate_class_names(gdf, {"Tumor": 1}, "slide.geojson")


# ImageScope XML.


def test_monuseg_xml() -> None:
    gdf = read_annotations(MONUSEG_XML, default_class="nucleus")
    assert len(gdf) == 249
    assert set(gdf["class_name"]) == {"nucleus"}
    assert gdf["object_type"].isna().all()
    assert gdf.attrs["mpp"] == pytest.approx(0.2525)
    assert gdf.geometry.is_valid.all()
    assert set(gdf.geom_type) <= {"Polygon", "MultiPolygon"}
    minx, miny, maxx, maxy = gdf.total_bounds
    assert minx >= -2
    assert miny >= -2
    assert maxx <= 1002
    assert maxy <= 1002


def test_monuseg_xml_needs_default_class() -> None:
    with pytest.raises(AnnotationError, match="no Name and no attribute value") as caught:
        read_annotations(MONUSEG_XML)
    assert MONUSEG_XML.name in str(caught.value)


IMAGESCOPE_XML = """<Annotations MicronsPerPixel="0.499">
  <Annotation Id="1" Name="Tumor">
    <Regions>
      <Region Id="1" NegativeROA="0">
        <Vertices><Vertex X="0" Y="0"/><Vertex X="100" Y="0"/><Vertex X="100" Y="100"/><Vertex X="0" Y="100"/></Vertices>
      </Region>
      <Region Id="2" NegativeROA="1">
        <Vertices><Vertex X="20" Y="20"/><Vertex X="40" Y="20"/><Vertex X="40" Y="40"/><Vertex X="20" Y="40"/></Vertices>
      </Region>
      <Region Id="3">
        <Vertices><Vertex X="5" Y="5"/><Vertex X="50" Y="50"/></Vertices>
      </Region>
    </Regions>
  </Annotation>
  <Annotation Id="2" Name="">
    <Attributes><Attribute Name="Description" Id="0" Value="Stroma"/></Attributes>
    <Regions>
      <Region Id="1">
        <Vertices><Vertex X="200.5" Y="0"/><Vertex X="210.5" Y="0"/><Vertex X="210.5" Y="10"/></Vertices>
      </Region>
    </Regions>
  </Annotation>
</Annotations>
"""


def test_imagescope_layers_and_negative_regions(tmp_path: Path) -> None:
    path = tmp_path / "slide.xml"
    path.write_text(IMAGESCOPE_XML, encoding="utf-8")
    gdf = read_annotations(path)
    assert list(gdf["class_name"]) == ["Tumor", "Stroma"]
    assert gdf.attrs["mpp"] == pytest.approx(0.499)
    tumor = gdf.geometry.iloc[0]
    assert tumor.area == pytest.approx(100 * 100 - 20 * 20)
    assert not tumor.contains(shapely.Point(30, 30))
    assert gdf.geometry.iloc[1].area == pytest.approx(50.0)


def test_malformed_xml(tmp_path: Path) -> None:
    path = tmp_path / "broken.xml"
    path.write_text(
        '<Annotations>\n  <Annotation Id="1">\n    <Regions>\n</Annotations>\n', encoding="utf-8"
    )
    with pytest.raises(AnnotationError) as caught:
        read_annotations(path)
    message = str(caught.value)
    assert "broken.xml" in message
    assert "malformed XML at line 4" in message


def test_truncated_monuseg_xml(tmp_path: Path) -> None:
    path = tmp_path / "truncated.xml"
    path.write_bytes(MONUSEG_XML.read_bytes()[:50_000])
    with pytest.raises(AnnotationError, match="truncated.xml: malformed XML"):
        read_annotations(path, default_class="nucleus")


def test_xml_with_wrong_root(tmp_path: Path) -> None:
    path = tmp_path / "other.xml"
    path.write_text("<Slide><Region/></Slide>", encoding="utf-8")
    with pytest.raises(AnnotationError, match="root element is <Slide>"):
        read_annotations(path)
