"""Score a folder or manifest of slides with the best checkpoint on Ray Data model actors.

Example:
    python jobs/score_slides.py --config configs/serve/score_slides.yaml \
        --slides-dir tests/data/openslide_testdata --output outputs/scores

Each slide gets a folder with mask.tiff, annotations.geojson, overlay.png and
result.json. summary.csv lists every slide as scored, skipped (finished on an
earlier run with the same checkpoint and settings) or failed, with the error.
The output may be an s3:// or gs:// URI. The slide list is checked before Ray
starts: an empty slide folder, or a manifest with invalid rows (every one is
listed with its line number), stops the job before any slide is scored. The
exit status is 1 when some slide failed and 2 on a config, slide list or
storage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cancerseg_ray import storage
from cancerseg_ray.config import load_yaml_config
from cancerseg_ray.errors import CancerSegError
from cancerseg_ray.runtime import configure_logging, init_ray
from cancerseg_ray.serve.batch import FAILED, SUMMARY_FILE, list_slides, score_slides
from cancerseg_ray.serve.config import BatchScoreConfig

logger = logging.getLogger("score_slides")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="BatchScoreConfig YAML")
    # Plain strings, so that the config reports a URI given here instead of Path collapsing its "//".
    parser.add_argument("--slides-dir", help="local folder searched recursively for slides")
    parser.add_argument("--manifest", help="local CSV with a path column (local paths or s3:// or gs:// URIs) "
                        "and optional slide_id and mpp columns")
    parser.add_argument("--output", help="output folder: a local path or an s3:// or gs:// URI")
    parser.add_argument("--mpp", type=float, help="level-0 resolution of every slide in µm/px")
    parser.add_argument("--num-actors", type=int, help="model actors scoring slides in parallel")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per model actor")
    parser.add_argument("--address", help="Ray cluster address; default RAY_ADDRESS or an embedded Ray")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="logging level (default INFO)")
    args = parser.parse_args(argv)

    configure_logging(args.log_level)
    try:
        config = load_yaml_config(args.config, BatchScoreConfig, slides_dir=args.slides_dir, manifest=args.manifest,
                                  output_dir=args.output, mpp_override=args.mpp, num_actors=args.num_actors,
                                  use_gpu=args.use_gpu)
        storage.check_bucket(config.output_dir)
        entries = list_slides(config)
        init_ray(args.address)
        summary = score_slides(config, entries)
    except CancerSegError as error:
        logger.error("%s", error)
        return 2
    failed = summary[summary["status"] == FAILED]
    for row in failed.itertuples():
        logger.error("failed: %s (%s): %s", row.slide_id, row.path, row.error)
    summary_location = storage.join(config.output_dir, SUMMARY_FILE)
    if not storage.is_remote(summary_location):
        summary_location = storage.resolve(summary_location)[1]
    logger.info("summary: %s", storage.redact(summary_location))
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
