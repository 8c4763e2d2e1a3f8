"""Evaluate every trained run on the test split and write the comparison report.

Example:
    python jobs/evaluate.py --config configs/demo/evaluate.yaml --shards outputs/demo/shards \
        --runs outputs/demo/runs --output outputs/demo/report
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ray.exceptions import RayError

from cancerseg_ray import storage
from cancerseg_ray.config import load_yaml_config
from cancerseg_ray.errors import CancerSegError, package_error_text
from cancerseg_ray.evaluate.config import EvaluateConfig
from cancerseg_ray.evaluate.job import evaluate_and_report
from cancerseg_ray.evaluate.preflight import check_evaluate_config
from cancerseg_ray.runtime import configure_logging, init_ray

logger = logging.getLogger("evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="evaluation config YAML")
    parser.add_argument("--shards", help="shard folder written by make_shards.py: a local path or an s3://, gs:// or file:// URI")
    parser.add_argument("--runs", help="runs folder written by train_all.py: a local path or a URI")
    parser.add_argument("--output", help="report folder: a local path or a URI")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per model replica")
    parser.add_argument("--address", help="Ray cluster address; default RAY_ADDRESS or an embedded Ray")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="logging level (default INFO)")
    args = parser.parse_args(argv)

    configure_logging(args.log_level)
    try:
        config = load_yaml_config(args.config, EvaluateConfig, shards_dir=args.shards, runs_dir=args.runs,
                                  output_dir=args.output, use_gpu=args.use_gpu)
        # Missing folders and files fail here, before Ray starts.
        check_evaluate_config(config)
        init_ray(args.address)
        report = evaluate_and_report(config)
    except CancerSegError as error:
        logger.error("%s", error)
        return 2
    except RayError as error:
        message = package_error_text(error)
        if message is None:
            raise
        logger.error("%s", message)
        return 2
    logger.info("report: %s", storage.redact(report.resolve() if isinstance(report, Path) else report))
    skipped = storage.read_json(storage.join(str(config.output_dir), "report.json")).get("skipped_runs", [])
    if skipped:
        # The report is complete for the other runs; a non-zero code lets scripts notice the gap.
        logger.warning("%d of the runs were left out of the report; see its 'left out' section", len(skipped))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
