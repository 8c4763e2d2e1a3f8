"""Train every requested model variant and seed on Ray Train.

Locally this starts an embedded Ray; on a cluster submit it with
``ray job submit -- python jobs/train_all.py --config ...``.

Example:
    python jobs/train_all.py --config configs/demo/train.yaml --shards outputs/demo/shards --output outputs/demo/runs
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from cancerseg_ray import storage
from cancerseg_ray.config import load_yaml_config
from cancerseg_ray.errors import CancerSegError
from cancerseg_ray.runtime import configure_logging, init_ray
from cancerseg_ray.train.config import TrainGridConfig
from cancerseg_ray.train.grid import check_gpus_available, run_training_grid
from cancerseg_ray.train.preflight import check_grid_config

logger = logging.getLogger("train_all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="training grid config YAML")
    parser.add_argument("--shards", help="shard folder written by make_shards.py: a local path or an s3://, gs:// or file:// URI")
    parser.add_argument("--output", help="folder for run records and checkpoints: a local path or a URI")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL backend, mixed precision")
    parser.add_argument("--num-workers", type=int, help="data-parallel workers per run")
    parser.add_argument("--restart", action="store_true",
                        help="train every run again from epoch 1, deleting its checkpoints in the output folder; "
                        "by default runs with checkpoints there continue from them")
    parser.add_argument("--address", help="Ray cluster address; default RAY_ADDRESS or an embedded Ray")
    parser.add_argument("--num-cpus", type=int,
                        help="logical CPUs of an embedded Ray (default: this machine's CPUs, at least the "
                        "training workers' CPUs plus 2 for Ray Data tasks)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="logging level (default INFO)")
    args = parser.parse_args(argv)

    configure_logging(args.log_level)
    try:
        config = load_yaml_config(args.config, TrainGridConfig, shards_dir=args.shards, output_dir=args.output)
        if args.restart:
            config = config.model_copy(update={"resume": False})
        if args.use_gpu or args.num_workers is not None:
            overrides = {"use_gpu": args.use_gpu or None, "num_workers": args.num_workers}
            scaling = config.scaling.model_dump() | {k: v for k, v in overrides.items() if v is not None}
            config = TrainGridConfig.model_validate(config.model_dump() | {"scaling": scaling})
        # Bad names, files and folders fail here, before Ray starts.
        check_grid_config(config)
        num_cpus = args.num_cpus
        if num_cpus is None and not (args.address or os.environ.get("RAY_ADDRESS")):
            # Ray Data's read and decode tasks need CPUs beside the training workers'.
            needed = math.ceil(config.scaling.num_workers * config.scaling.cpus_per_worker) + 2
            num_cpus = max(os.cpu_count() or 1, needed)
        init_ray(args.address, num_cpus=num_cpus)
        check_gpus_available(config, embedded=not (args.address or os.environ.get("RAY_ADDRESS")))
        records = run_training_grid(config)
    except (CancerSegError, ValidationError) as error:
        logger.error("%s", error)
        return 2
    for record in records:
        logger.info("%s: best checkpoint %s", record.run_name, storage.redact(record.best_checkpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main())
