"""Slide jobs of the HTTP API, kept as status files on disk.

A job is a folder ``<output_root>/jobs/<job_id>`` with ``status.json`` and,
once it succeeds, the slide outputs. Status lives on disk rather than in a
replica's memory, so every ingress replica that shares the output root can
report on every job, and a restarted replica still finds finished jobs.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel

from cancerseg_ray.data.splits import write_json_atomic
from cancerseg_ray.serve.outputs import SlideScore
from cancerseg_ray.serve.security import NotFoundError

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
UPLOAD_FOLDER = "upload"
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobState(StrEnum):
    """Life cycle of a slide job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobStatus(BaseModel):
    """State of a slide job, returned by the status endpoint.

    Attributes:
        job_id: 32 hexadecimal digits.
        state: queued, running, succeeded or failed.
        slide: Slide path relative to the data root, or the uploaded file name.
        created: Creation time (UTC, ISO 8601).
        updated: Time of the last change (UTC, ISO 8601).
        error: Why the job failed.
        result: Areas and output files of a finished job.
    """

    job_id: str
    state: JobState
    slide: str
    created: str
    updated: str
    error: str | None = None
    result: SlideScore | None = None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class JobStore:
    """Create, update and look up slide jobs under ``<root>/jobs``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def new_job(self, slide: str) -> JobStatus:
        """Create a queued job with a fresh random id and its folder."""
        job_id = uuid.uuid4().hex
        self.folder(job_id).mkdir(parents=True)
        status = JobStatus(job_id=job_id, state=JobState.QUEUED, slide=slide, created=_now(), updated=_now())
        self._write(status)
        return status

    def folder(self, job_id: str) -> Path:
        """Return a job's folder; the id is checked before it touches a path.

        Raises:
            NotFoundError: If the id is not 32 hexadecimal digits.
        """
        if not _JOB_ID.match(job_id):
            raise NotFoundError(f"unknown job id {job_id!r}; job ids are 32 hexadecimal digits")
        return self.root / job_id

    def get(self, job_id: str) -> JobStatus:
        """Read a job's status.

        Raises:
            NotFoundError: If no such job exists.
        """
        path = self.folder(job_id) / STATUS_FILE
        if not path.is_file():
            raise NotFoundError(f"unknown job id {job_id!r}; it was never created or its folder was removed")
        return JobStatus.model_validate_json(path.read_text())

    def update(self, status: JobStatus, **changes: object) -> JobStatus:
        """Write a changed status and return it."""
        changed = status.model_copy(update={**changes, "updated": _now()})
        self._write(changed)
        return changed

    def _write(self, status: JobStatus) -> None:
        write_json_atomic(self.folder(status.job_id) / STATUS_FILE, status.model_dump(mode="json"))
