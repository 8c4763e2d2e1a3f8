"""The committed OpenAPI schema and the serve config files match the code."""

from __future__ import annotations

import yaml

from cancerseg_ray.serve.config import BatchScoreConfig, ServeConfig
from cancerseg_ray.serve.openapi import openapi_text
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs" / "serve"


def test_committed_openapi_is_current():
    committed = (REPO_ROOT / "schemas" / "openapi.json").read_text(encoding="utf-8")
    assert committed == openapi_text(), "run: python -m cancerseg_ray.serve.openapi schemas/openapi.json"


def test_openapi_lists_routes():
    import json

    paths = json.loads(openapi_text())["paths"]
    assert set(paths) == {"/v1/health", "/v1/model", "/v1/tiles/segment", "/v1/slides/score", "/v1/slides/upload",
                          "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/files/{name}"}
    assert set(paths["/v1/tiles/segment"]["post"]["requestBody"]["content"]) == {"image/png", "image/jpeg",
                                                                               "image/tiff"}


def test_local_serve_config_validates():
    config = ServeConfig.model_validate(yaml.safe_load((CONFIGS / "local.yaml").read_text()))
    assert config.model.best_file is not None


def test_serve_config_files_validate():
    for name in ("serve-run.local.yaml", "serve-deploy.cluster.yaml"):
        document = yaml.safe_load((CONFIGS / name).read_text())
        (application,) = document["applications"]
        assert application["import_path"] == "cancerseg_ray.serve.app:build_app"
        ServeConfig.model_validate(application["args"])


def test_cluster_config_reserves_gpus():
    document = yaml.safe_load((CONFIGS / "serve-deploy.cluster.yaml").read_text())
    config = ServeConfig.model_validate(document["applications"][0]["args"])
    assert config.num_gpus_per_replica == 1
    assert config.model.device == "cuda"


def test_batch_config_validates():
    document = yaml.safe_load((CONFIGS / "score_slides.yaml").read_text())
    config = BatchScoreConfig.model_validate({**document, "slides_dir": "slides", "output_dir": "scores"})
    assert config.num_actors >= 1
