"""Start the segmentation endpoint on Ray Serve and keep it running until Ctrl-C.

Example:
    python jobs/serve_app.py --config configs/serve/local.yaml

The API listens on http://127.0.0.1:8000 by default; its OpenAPI page is /docs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ray import serve

from cancerseg_ray.config import load_yaml_config
from cancerseg_ray.errors import CancerSegError
from cancerseg_ray.runtime import configure_logging, init_ray
from cancerseg_ray.serve.app import build_app
from cancerseg_ray.serve.config import ServeConfig

logger = logging.getLogger("serve_app")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="ServeConfig YAML (see configs/serve/local.yaml)")
    # Plain strings, so that the config reports a URI given here instead of Path collapsing its "//".
    parser.add_argument("--data-root", help="local folder that slide paths must resolve inside")
    parser.add_argument("--output-root", help="local or shared folder for slide jobs and their outputs")
    parser.add_argument("--replicas", type=int, help="replicas of the model deployment")
    parser.add_argument("--gpus-per-replica", type=float, help="GPUs reserved by each model replica")
    parser.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy binds; 0.0.0.0 exposes it")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    parser.add_argument("--address", help="Ray cluster address; default RAY_ADDRESS or an embedded Ray")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="logging level (default INFO)")
    args = parser.parse_args(argv)

    configure_logging(args.log_level)
    try:
        config = load_yaml_config(args.config, ServeConfig, data_root=args.data_root, output_root=args.output_root,
                                  model_replicas=args.replicas, num_gpus_per_replica=args.gpus_per_replica)
        # The data root and the model are checked here, before Ray and the HTTP proxy start.
        application = build_app(config)
        init_ray(args.address)
        serve.start(http_options={"host": args.host, "port": args.port})
        logger.info("starting the endpoint at http://%s:%d (API description at /docs)", args.host, args.port)
        serve.run(application, name="cancerseg", route_prefix="/", blocking=True)
    except CancerSegError as error:
        logger.error("%s", error)
        return 2
    except KeyboardInterrupt:
        logger.info("stopping the endpoint")
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
