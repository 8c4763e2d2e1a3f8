"""Checkpoint loading rejects files that are not this package's checkpoints, and package errors are found in Ray's errors."""

from __future__ import annotations

import pytest
import torch

from cancerseg_ray.errors import CheckpointError, package_error_text
from cancerseg_ray.train.checkpoint import load_checkpoint


def test_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_garbage_file_is_rejected(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt is not a readable checkpoint"):
        load_checkpoint(path)


def test_checkpoint_without_fields_is_rejected(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"model_state": {}}, path)
    with pytest.raises(CheckpointError, match=r"lacks the checkpoint fields \['format_version'"):
        load_checkpoint(path)


def test_pickled_code_is_not_loaded(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format_version": 1, "model_state": {}, "model_config": {}, "class_map": {},
                "epoch": 0, "payload": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_package_error_found_in_remote_traceback():
    remote = ("RayTaskError(UserCodeException): ray::MapBatches(decode)\n"
              "Traceback (most recent call last):\n"
              "  File \"loading.py\", line 90, in decode_tile_batch\n"
              "cancerseg_ray.errors.InputDataError: the tile at x=0, y=64 of image 'a' cannot be decoded\n")

    assert package_error_text(RuntimeError(remote)) == "the tile at x=0, y=64 of image 'a' cannot be decoded"


def test_other_remote_errors_are_not_matched():
    remote = "Traceback (most recent call last):\nValueError: shapes do not match\n"

    assert package_error_text(RuntimeError(remote)) is None
