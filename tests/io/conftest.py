"""Fixtures of the io tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from io_samples import write_pyramid_tiff


@pytest.fixture(scope="session")
def pyramid_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic three-level generic TIFF pyramid (downsamples 1, 4, 16) at 0.25 µm/px."""
    return write_pyramid_tiff(tmp_path_factory.mktemp("pyramid") / "pyramid.tif")


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[..., Path]:
    """Return a function that writes a JSON value to a file under tmp_path."""

    def write(data: Any, name: str = "annotations.geojson") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(data), encoding="utf-8")
        return path

    return write
