"""Tile slides, ROIs or image/mask folders into Parquet shards on Ray Data.

The config's ``source.kind`` picks the input: folder, slides, bcss, pannuke,
puma or coco (see docs/ingest.md). A config without ``source`` is read as the
folder ingest config of the demo.

Examples:
    python jobs/make_shards.py --config configs/demo/ingest.yaml --output outputs/demo/shards
    python jobs/make_shards.py --config configs/ingest/slides.yaml --mpp 0.25
    python jobs/make_shards.py --config configs/ingest/bcss.yaml --output s3://my-bucket/shards/bcss
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from cancerseg_ray import storage
from cancerseg_ray.config import load_yaml_config
from cancerseg_ray.data.config import FolderIngestConfig
from cancerseg_ray.data.dataset_ingest import run_ingest
from cancerseg_ray.data.ingest import run_folder_ingest
from cancerseg_ray.data.preflight import check_ingest_config
from cancerseg_ray.data.sources import IngestConfig
from cancerseg_ray.errors import CancerSegError, ConfigError
from cancerseg_ray.runtime import configure_logging, init_ray

logger = logging.getLogger("make_shards")


def _has_source(path: Path) -> bool:
    """Tell whether a config is a source config rather than a folder config (``images_dir`` at the top level).

    A config without ``images_dir`` counts as a source config, so a misspelled
    ``source:`` is reported as such instead of as a folder config's missing fields.
    """
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    return isinstance(data, dict) and ("source" in data or "images_dir" not in data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="ingest config YAML")
    # A str, not a Path: Path("s3://bucket/x") would collapse the URI to s3:/bucket/x.
    parser.add_argument(
        "--output",
        help="shard folder, or an s3:// or gs:// URI (S3 options such as endpoint_override in its query); "
        "overrides output_dir in the config",
    )
    parser.add_argument("--overwrite", action="store_true", default=None, help="re-tile items whose shards exist")
    parser.add_argument(
        "--mpp", type=float,
        help="level-0 resolution in micrometres per pixel for every slide or image of the run, for slides "
        "without resolution metadata; a manifest's mpp column still wins for its slide",
    )
    parser.add_argument("--address", help="Ray cluster address; default RAY_ADDRESS or an embedded Ray")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="logging level (default INFO)")
    args = parser.parse_args(argv)

    configure_logging(args.log_level)
    overrides = {"output_dir": args.output, "overwrite": args.overwrite, "mpp": args.mpp}
    try:
        if _has_source(args.config):
            config = load_yaml_config(args.config, IngestConfig, **overrides)
            check_ingest_config(config)
            init_ray(args.address)
            result = run_ingest(config)
        else:
            folder_config = load_yaml_config(args.config, FolderIngestConfig, **overrides)
            check_ingest_config(folder_config)
            init_ray(args.address)
            result = run_folder_ingest(folder_config)
    except CancerSegError as error:
        logger.error("%s", error)
        return 2
    logger.info("shards written to %s", storage.redact(result.output_dir))
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
