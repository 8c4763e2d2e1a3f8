"""Cluster files: launcher YAMLs, KubeRay manifests, the Dockerfile, job configs and docs/cluster.md.

Each file is parsed and checked against what reads it: Ray's own launcher
schema, Ray Serve's config schema, the project's config models and job
parsers, and the Ray version pinned in pyproject.toml.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT

CLUSTER_DIR = REPO_ROOT / "cluster"
LAUNCHER_FILES = sorted((CLUSTER_DIR / "launcher").glob("*.yaml"))
KUBERAY_DIR = CLUSTER_DIR / "kuberay"
RAY_MANIFESTS = sorted(KUBERAY_DIR.glob("ray-*.yaml"))
DOCKERFILE = CLUSTER_DIR / "Dockerfile"
DOCS = REPO_ROOT / "docs" / "cluster.md"

KIND_BY_PREFIX = {"ray-cluster": "RayCluster", "ray-job": "RayJob", "ray-service": "RayService"}
MANIFEST_NAME = re.compile(r"^(ray-cluster|ray-job|ray-service)\.[a-z0-9]+(-[a-z0-9]+)*\.yaml$")
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]+)>")


def pinned_ray_version() -> str:
    """Return X from the ``ray[...]==X`` requirement of pyproject.toml, failing when Ray is not pinned exactly."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == "ray":
            specifiers = list(requirement.specifier)
            if len(specifiers) != 1 or specifiers[0].operator != "==":
                pytest.fail(f"pyproject.toml requires {line!r}; cluster images and rayVersion need an exact "
                            "pin such as 'ray[data,train,serve]==2.60.0'")
            return specifiers[0].version
    pytest.fail("pyproject.toml has no ray dependency")


def load_yaml(path: Path) -> dict:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path} does not contain a mapping"
    return document


def image_tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def dockerfile_workdir() -> str:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert len(workdirs) == 1, workdirs
    return workdirs[0]


def job_options(script: Path) -> set[str]:
    """Collect the option strings that ``script`` passes to ``add_argument``, read from its source."""
    options = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            options.update(arg.value for arg in node.args
                           if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"))
    return options


def check_job_command(command: str, *, image_root: str | None = None) -> tuple[Path, list[str]]:
    """Check that a job command names an existing script and only options that script accepts.

    Returns the script and the command's arguments after it.
    """
    tokens = shlex.split(command)
    scripts = [i for i, token in enumerate(tokens) if re.search(r"(^|/)jobs/[a-z_]+\.py$", token)]
    assert len(scripts) == 1, f"expected one jobs/*.py script in {command!r}"
    index = scripts[0]
    name = tokens[index]
    if image_root is not None:
        assert name.startswith(image_root + "/"), f"{name} is not under the image's WORKDIR {image_root}"
        name = name[len(image_root) + 1:]
    script = REPO_ROOT / name
    assert script.is_file(), f"{command!r} names {name}, which does not exist"
    arguments = tokens[index + 1:]
    unknown = sorted({a.split("=", 1)[0] for a in arguments if a.startswith("--")} - job_options(script))
    assert not unknown, f"{script.name} has no options {unknown}; command: {command!r}"
    return script, arguments


def option_value(arguments: list[str], option: str) -> str:
    assert option in arguments, f"{option} missing from {arguments}"
    return arguments[arguments.index(option) + 1]


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}[manifest["kind"]]


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [group["template"] for group in spec.get("workerGroupSpecs", [])]


# The pin and the Dockerfile.


def test_ray_pin_is_exact():
    version = pinned_ray_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version


def test_installed_ray_matches_pin():
    import ray

    assert ray.__version__ == pinned_ray_version()


def test_dockerfile_ray_version_matches_pin():
    text = DOCKERFILE.read_text()
    assert re.findall(r"^ARG RAY_VERSION=(\S+)$", text, flags=re.MULTILINE) == [pinned_ray_version()]
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-gpu$", text, flags=re.MULTILINE)


def test_dockerfile_copies_existing_paths():
    text = DOCKERFILE.read_text()
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, flags=re.MULTILINE)
    sources = [source for line in copies for source in line.split()]
    assert "cancerseg_ray" in sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


def test_dockerfile_installs_project_and_checks_cuda():
    text = DOCKERFILE.read_text()
    assert "pip install --no-cache-dir ." in text
    assert "torch.version.cuda" in text


def test_dockerfile_build_command_tag_matches_pin():
    tags = re.findall(r"cancerseg-ray:(\S+)", DOCKERFILE.read_text())
    assert tags, "the Dockerfile's header names no image tag"
    assert {tag.split("-")[0] for tag in tags} == {pinned_ray_version()}


# Cluster launcher YAMLs.


def test_launcher_files_exist():
    assert [path.name for path in LAUNCHER_FILES] == ["aws.yaml", "gcp.yaml"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_passes_ray_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_yaml(path)
    assert config["provider"]["type"] == path.stem
    validate_config(prepare_config(config))


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_workers_scale_from_zero(path):
    config = load_yaml(path)
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {name: spec for name, spec in node_types.items() if name != config["head_node_type"]}
    gpu_workers = [spec for spec in workers.values() if spec["resources"].get("GPU", 0) > 0]
    assert gpu_workers, f"{path.name} has no GPU worker type"
    for name, spec in workers.items():
        assert spec["min_workers"] == 0, f"{name} does not scale from zero"
        assert spec["max_workers"] >= 1
    assert sum(spec["max_workers"] for spec in workers.values()) <= config["max_workers"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_image_tag_matches_pin(path):
    image = load_yaml(path)["docker"]["image"]
    assert image_tag(image).split("-")[0] == pinned_ray_version(), image


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_setup_installs_synced_project(path):
    config = load_yaml(path)
    targets = [target for target, source in config["file_mounts"].items() if source == "."]
    assert len(targets) == 1, config["file_mounts"]
    installs = [command for command in config["setup_commands"] if command.startswith("pip install")]
    assert installs, config["setup_commands"]
    assert installs[0].endswith(targets[0]), installs
    assert any("import cancerseg_ray" in command for command in config["setup_commands"])


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_mounts_shared_storage_into_container(path):
    config = load_yaml(path)
    assert "-v /mnt/cancerseg:/mnt/cancerseg" in config["docker"]["run_options"]
    assert any("mount" in command and "/mnt/cancerseg" in command for command in config["initialization_commands"])


# KubeRay manifests.


def test_kuberay_manifests_exist():
    kinds = sorted(load_yaml(path)["kind"] for path in RAY_MANIFESTS)
    assert kinds == ["RayCluster", "RayJob", "RayService"]


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_manifest_name_and_kind(path):
    assert MANIFEST_NAME.match(path.name), f"{path.name} is not named <kind>.<name>.yaml"
    manifest = load_yaml(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == KIND_BY_PREFIX[path.name.split(".")[0]]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_manifest_ray_version_and_images_match_pin(path):
    spec = cluster_spec(load_yaml(path))
    pin = pinned_ray_version()
    assert spec["rayVersion"] == pin
    for template in pod_templates(spec):
        for container in containers(template):
            assert image_tag(container["image"]).split("-")[0] == pin, container["image"]


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_manifest_required_cluster_keys(path):
    spec = cluster_spec(load_yaml(path))
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert containers(head["template"])[0]["name"] == "ray-head"
    assert spec["workerGroupSpecs"], "no worker groups"
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_manifest_gpu_groups_request_gpus(path):
    spec = cluster_spec(load_yaml(path))
    gpu_groups = [group for group in spec["workerGroupSpecs"] if "gpu" in group["groupName"]]
    assert gpu_groups
    for group in gpu_groups:
        resources = containers(group["template"])[0]["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_manifest_pods_mount_shared_claim(path):
    claim = load_yaml(KUBERAY_DIR / "pvc.cancerseg-data.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for template in pod_templates(cluster_spec(load_yaml(path))):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in containers(template)[0]["volumeMounts"]}
        assert "/mnt/cancerseg" in mounts
        volume = volumes[mounts["/mnt/cancerseg"]]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_ray_job_runs_train_all():
    manifest = load_yaml(KUBERAY_DIR / "ray-job.train-all.yaml")
    script, arguments = check_job_command(manifest["spec"]["entrypoint"], image_root=dockerfile_workdir())
    assert script.name == "train_all.py"
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    config_path = option_value(arguments, "--config")
    assert config_path.startswith(dockerfile_workdir() + "/")
    local_config = REPO_ROOT / config_path[len(dockerfile_workdir()) + 1:]
    assert local_config.is_file(), local_config

    from cancerseg_ray.config import load_yaml_config
    from cancerseg_ray.train.config import TrainGridConfig

    config = load_yaml_config(local_config, TrainGridConfig)
    gpu_group = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus_per_pod = int(containers(gpu_group["template"])[0]["resources"]["limits"]["nvidia.com/gpu"])
    assert config.scaling.use_gpu
    assert config.scaling.num_workers * config.scaling.gpus_per_worker <= gpus_per_pod * gpu_group["maxReplicas"]
    assert option_value(arguments, "--shards").startswith("/mnt/cancerseg/")
    assert option_value(arguments, "--output").startswith("/mnt/cancerseg/")


def test_ray_service_serve_config_is_valid():
    from ray.serve.schema import ServeDeploySchema

    from cancerseg_ray.serve.config import ServeConfig

    manifest = load_yaml(KUBERAY_DIR / "ray-service.cancerseg-serve.yaml")
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_config)
    assert [application.name for application in schema.applications] == ["cancerseg"]
    application = serve_config["applications"][0]
    module_name, attribute = application["import_path"].split(":")
    builder = getattr(importlib.import_module(module_name), attribute)
    assert callable(builder)
    config = ServeConfig.model_validate(application["args"])
    assert str(config.data_root).startswith("/mnt/cancerseg/")
    assert str(config.model.best_file).startswith("/mnt/cancerseg/")


def test_ray_service_replicas_fit_gpu_group():
    from cancerseg_ray.serve.config import ServeConfig

    manifest = load_yaml(KUBERAY_DIR / "ray-service.cancerseg-serve.yaml")
    args = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["args"]
    config = ServeConfig.model_validate(args)
    group = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    limits = containers(group["template"])[0]["resources"]["limits"]
    gpus = int(limits["nvidia.com/gpu"]) * group["maxReplicas"]
    cpus = int(limits["cpu"]) * group["maxReplicas"]
    assert config.model_replicas * config.num_gpus_per_replica <= gpus
    assert config.model_replicas * config.num_cpus_per_replica + config.ingress_num_cpus <= cpus


# Job configs used on the cluster.


@pytest.mark.parametrize("path", sorted((CLUSTER_DIR / "configs").glob("ingest-*.yaml")), ids=lambda p: p.name)
def test_cluster_ingest_config_is_valid(path, monkeypatch):
    from cancerseg_ray.config import load_yaml_config
    from cancerseg_ray.data.sources import IngestConfig

    monkeypatch.chdir(REPO_ROOT)  # label maps are named relative to the repository, as in the image's WORKDIR
    config = load_yaml_config(path, IngestConfig)
    assert str(config.output_dir).startswith("/mnt/cancerseg/shards/")
    assert path.stem == f"ingest-{config.dataset_name}"


def test_cluster_train_and_evaluate_configs_are_valid():
    from cancerseg_ray.config import load_yaml_config
    from cancerseg_ray.evaluate.config import EvaluateConfig
    from cancerseg_ray.models import list_models
    from cancerseg_ray.train.config import TrainGridConfig

    train = load_yaml_config(CLUSTER_DIR / "configs" / "train-study.yaml", TrainGridConfig)
    assert sorted(train.variants) == sorted(list_models())
    assert train.seeds == [0, 1, 2]
    evaluate = load_yaml_config(CLUSTER_DIR / "configs" / "evaluate.yaml", EvaluateConfig)
    assert evaluate.use_gpu


# docs/cluster.md against the files and options its commands use.


def docs_commands() -> list[str]:
    """Return the shell commands of docs/cluster.md's code blocks, with continuation lines joined."""
    blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def test_docs_job_commands_use_existing_options():
    job_commands = [c for c in docs_commands() if re.search(r"jobs/[a-z_]+\.py", c)]
    scripts = {check_job_command(command.split(" -- ", 1)[-1])[0].name for command in job_commands}
    assert {"make_shards.py", "train_all.py", "evaluate.py"} <= scripts


def test_docs_name_existing_repository_files():
    text = DOCS.read_text()
    named = set(re.findall(r"\b((?:cluster|jobs|configs|cancerseg_ray)/[\w./-]+\.(?:yaml|py|md))\b", text))
    assert "cluster/launcher/aws.yaml" in named
    missing = sorted(name for name in named if not (REPO_ROOT / name).exists())
    assert not missing, f"docs/cluster.md names files that do not exist: {missing}"


def test_docs_explain_every_placeholder():
    docs = DOCS.read_text()
    used = set()
    for path in CLUSTER_DIR.rglob("*"):
        if path.is_file():
            used.update(PLACEHOLDER.findall(path.read_text()))
    assert used, "no <PLACEHOLDER> found; the test's pattern is out of date"
    unexplained = sorted(name for name in used if f"<{name}>" not in docs)
    assert not unexplained, f"docs/cluster.md does not explain {unexplained}"


def test_every_cluster_yaml_parses():
    paths = sorted(CLUSTER_DIR.rglob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert documents and all(isinstance(d, dict) for d in documents), path


def test_serve_deploy_config_matches_ray_service():
    manifest = load_yaml(KUBERAY_DIR / "ray-service.cancerseg-serve.yaml")
    in_service = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert load_yaml(CLUSTER_DIR / "configs" / "serve-deploy.yaml") == in_service
