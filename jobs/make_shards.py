"""Tile a folder of images and masks into Parquet shards on Ray Data.

Example:
    python jobs/make_shards.py --config configs/demo/ingest.yaml --output outputs/demo/shards
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cancerseg_ray.config import load_yaml_config
from cancerseg_ray.data.config import FolderIngestConfig
from cancerseg_ray.data.ingest import run_folder_ingest
from cancerseg_ray.errors import CancerSegError
from cancerseg_ray.runtime import configure_logging, init_ray

logger = logging.getLogger("make_shards")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="ingest config YAML")
    parser.add_argument("--output", type=Path, help="shard folder; overrides output_dir in the config")
    parser.add_argument("--overwrite", action="store_true", default=None, help="re-tile images whose shards exist")
    parser.add_argument("--address", help="Ray cluster address; default RAY_ADDRESS or an embedded Ray")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    configure_logging(args.log_level)
    try:
        config = load_yaml_config(args.config, FolderIngestConfig, output_dir=args.output, overwrite=args.overwrite)
        init_ray(args.address)
        result = run_folder_ingest(config)
    except CancerSegError as error:
        logger.error("%s", error)
        return 2
    logger.info("shards written to %s", result.output_dir)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
