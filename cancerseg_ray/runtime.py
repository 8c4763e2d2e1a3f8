"""Starting or joining Ray, and logging set-up for entry points."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger; call only from entry points."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` or ``RAY_ADDRESS``, or start an embedded one.

    Under ``ray job submit`` the job's driver finds its cluster through
    ``RAY_ADDRESS``; run locally, the same job starts Ray on this machine.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address)
    else:
        logger.info("starting an embedded Ray instance on this machine")
        # address="local" always starts a new instance, never attaching to a stray local cluster.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    resources = ray.cluster_resources()
    logger.info("Ray resources: %s CPUs, %s GPUs", resources.get("CPU", 0), resources.get("GPU", 0))
