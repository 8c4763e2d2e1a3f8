"""Loss terms, schedules, mixed precision and augmentation, without a Ray cluster."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cancerseg_ray.data.augment import AugmentationSettings, augment_batch, augment_tile
from cancerseg_ray.data.loading import DatasetInfo
from cancerseg_ray.errors import ConfigError
from cancerseg_ray.train.config import (
    OptimizerSettings,
    SchedulePreset,
    TrainGridConfig,
    TrainRunConfig,
)
from cancerseg_ray.train.grid import build_run_config, run_training_grid
from cancerseg_ray.train.loop import _start_mlflow, _weighted_loss_terms, mixed_precision_context


def make_info(name: str = "glas") -> DatasetInfo:
    return DatasetInfo(
        root=".", dataset_name=name, class_names=["a", "b", "c"], colours=["#000000"] * 3, ignore_index=255,
        tile_size=256, mpp=0.5, loss_weights=[0.2, 0.0, 0.8], frequencies=[0.8, 0.0, 0.2],
        majority_class=0, tiles_per_split={"train": 10, "val": 2, "test": 2},
    )


def test_loss_terms_equal_weighted_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, :2] = 255
    weights = torch.tensor([0.2, 0.3, 0.5])
    total, weight_sum = _weighted_loss_terms(logits, target, weights, 255)
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    torch.testing.assert_close(total / weight_sum, expected)


def test_loss_with_zero_weight_class_is_finite():
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    target = torch.ones(1, 4, 4, dtype=torch.long)  # every pixel is the class with weight 0
    target[0, 0, 0] = 0
    total, weight_sum = _weighted_loss_terms(logits, target, torch.tensor([0.2, 0.0, 0.8]), 255)
    loss = total / weight_sum.clamp_min(1e-12)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_uniform_schedule_is_the_same_for_every_variant():
    config = TrainGridConfig(variants=["deeplabv3plus_resnet50", "cancerseg_xa"], seeds=[0], epochs=7)
    runs = [build_run_config(config, make_info(), variant, 0) for variant in config.variants]
    assert {run.epochs for run in runs} == {7}
    assert {run.optimizer.learning_rate for run in runs} == {config.optimizer.learning_rate}


@pytest.mark.parametrize(
    ("dataset", "variant", "learning_rate", "epochs"),
    [
        ("bcss", "deeplabv3plus_resnet50", 1e-2, 25),
        ("bcss", "cancerseg_xa", 1e-4, 45),
        ("PanNuke", "cancerseg_xa", 1e-4, 38),
        ("puma", "deeplabv3plus_xception", 1e-4, 45),
    ],
)
def test_published_schedule_preset(dataset, variant, learning_rate, epochs):
    config = TrainGridConfig(variants=[variant], seeds=[0], schedule=SchedulePreset.PUBLISHED)
    run = build_run_config(config, make_info(dataset), variant, 0)
    assert run.optimizer.learning_rate == learning_rate
    assert run.epochs == epochs


def test_class_weights_come_from_shard_statistics():
    config = TrainGridConfig(variants=["cancerseg_xa"], seeds=[3])
    run = build_run_config(config, make_info(), "cancerseg_xa", 3)
    assert run.class_weights == [0.2, 0.0, 0.8]
    assert run.run_name == "glas-cancerseg_xa-seed3"


def test_duplicate_seeds_are_rejected():
    with pytest.raises(ValueError, match="seeds must be unique"):
        TrainGridConfig(variants=["cancerseg_xa"], seeds=[1, 1])


def test_mixed_precision_off_gives_null_context():
    factory = mixed_precision_context(False, torch.device("cpu"))
    with factory():
        assert not torch.is_autocast_enabled("cpu")


def test_missing_pretrained_file_is_reported(tmp_path):
    config = TrainGridConfig(variants=["cancerseg_xa"], seeds=[0], pretrained={"xception": str(tmp_path / "x.pth")})
    with pytest.raises(ConfigError, match="pretrained.xception .*x.pth not found"):
        build_run_config(config, make_info(), "cancerseg_xa", 0)


def test_mlflow_without_package_is_reported(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "mlflow" else real_find_spec(name, *args))
    config = TrainGridConfig(variants=["cancerseg_xa"], seeds=[0], shards_dir=tmp_path, mlflow={"enabled": True})
    with pytest.raises(ConfigError, match="mlflow package is not installed"):
        run_training_grid(config)


def test_mlflow_run_logs_params_and_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    # MLflow 3 keeps its file store only behind this switch; a database store needs SQLAlchemy.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    run = TrainRunConfig(
        run_name="glas-cancerseg_xa-seed0", dataset_name="glas", variant="cancerseg_xa", seed=0,
        class_names=["a", "b"], colours=["#000000", "#ffffff"], ignore_index=255, class_weights=[0.5, 0.5],
        epochs=1, batch_size=2, optimizer=OptimizerSettings(),
        mlflow={"enabled": True, "tracking_uri": uri, "experiment_name": "unit"},
    )
    tracker = _start_mlflow(run)
    tracker.log_metrics({"val_miou": 0.25}, step=0)
    tracker.end_run()

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["unit"])
    assert runs["tags.mlflow.runName"].tolist() == ["glas-cancerseg_xa-seed0"]
    assert runs["metrics.val_miou"].tolist() == [0.25]
    assert runs["params.variant"].tolist() == ["cancerseg_xa"]


def test_unknown_variant_lists_valid_names(tmp_path):
    config = TrainGridConfig(variants=["unet"], seeds=[0], shards_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown variants \['unet'\]; valid names are \['deeplabv3plus_resnet50'"):
        run_training_grid(config)


def _labelled_tile() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, size=(32, 32)).astype(np.uint8)
    image = np.stack([mask * 80, mask * 80, mask * 80], axis=-1).astype(np.uint8)
    return image, mask


def test_geometric_augmentation_keeps_mask_aligned():
    image, mask = _labelled_tile()
    settings = AugmentationSettings(hed_jitter=0.0, brightness=0.0, contrast=0.0)
    for seed in range(12):
        out_image, out_mask = augment_tile(image, mask, np.random.default_rng(seed), settings)
        np.testing.assert_array_equal(out_image[..., 0], out_mask * 80)


def test_colour_augmentation_leaves_mask_alone():
    image, mask = _labelled_tile()
    settings = AugmentationSettings(flips=False, rotations=False, hed_jitter=0.1, brightness=0.2, contrast=0.2)
    out_image, out_mask = augment_tile(image, mask, np.random.default_rng(1), settings)
    np.testing.assert_array_equal(out_mask, mask)
    assert out_image.dtype == np.uint8
    assert not np.array_equal(out_image, image)


def test_augment_batch_varies_between_calls():
    image, mask = _labelled_tile()
    batch = {"image": np.stack([image] * 4), "mask": np.stack([mask] * 4), "tile_key": np.arange(4)}
    first = augment_batch(batch, settings=AugmentationSettings(), seed=0)
    second = augment_batch(batch, settings=AugmentationSettings(), seed=0)
    assert first["image"].shape == (4, 32, 32, 3)
    assert first["mask"].shape == (4, 32, 32)
    np.testing.assert_array_equal(first["tile_key"], np.arange(4))
    assert not np.array_equal(first["image"], second["image"])
