"""Slide jobs of the HTTP API, kept as status files on disk.

A job is a folder ``<output_root>/jobs/<job_id>`` with ``status.json`` and,
once it succeeds, the slide outputs. Status lives on disk rather than in a
replica's memory, so every ingress replica that shares the output root can
report on every job, and a restarted replica still finds finished jobs.

A job runs on a thread of the replica that accepted it, so it dies with that
replica. The replica touches the status files of its unfinished jobs every
``JOB_HEARTBEAT_S`` seconds. An unfinished job whose status file is older than
``STALE_JOB_S`` has lost its replica and is marked failed by any other replica
(``JobStore.fail_interrupted``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import threading
import time
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

JOB_HEARTBEAT_S = 30.0
"""Interval at which a replica touches the status files of its unfinished jobs, in seconds."""
STALE_JOB_S = 4 * JOB_HEARTBEAT_S
"""Age of an unfinished job's status file after which its replica counts as stopped, in seconds."""
INTERRUPTED_ERROR = "the server stopped before the job finished; submit the slide again"


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
        tiles_done: Tiles predicted so far by a running job.
        tiles_total: Tiles that the job predicts, known once it has planned the slide's grid.
        result: Areas and output files of a finished job.
    """

    job_id: str
    state: JobState
    slide: str
    created: str
    updated: str
    error: str | None = None
    tiles_done: int | None = None
    tiles_total: int | None = None
    result: SlideScore | None = None

    @property
    def finished(self) -> bool:
        """Tell whether the job succeeded or failed."""
        return self.state in (JobState.SUCCEEDED, JobState.FAILED)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class JobStore:
    """Create, update and look up slide jobs under ``<root>/jobs``.

    The store remembers the unfinished jobs that it created, so that
    ``heartbeat`` can mark them as alive for the other replicas.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._own_jobs: set[str] = set()
        self._lock = threading.Lock()

    def new_job(self, slide: str) -> JobStatus:
        """Create a queued job with a fresh random id and its folder."""
        job_id = uuid.uuid4().hex
        self.folder(job_id).mkdir(parents=True)
        status = JobStatus(job_id=job_id, state=JobState.QUEUED, slide=slide, created=_now(), updated=_now())
        with self._lock:
            self._own_jobs.add(job_id)
        self._write(status)
        return status

    def delete(self, job_id: str) -> None:
        """Remove a job's folder, for a request rejected before the job was accepted."""
        with self._lock:
            self._own_jobs.discard(job_id)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

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
        if changed.finished:
            with self._lock:
                self._own_jobs.discard(changed.job_id)
        return changed

    def fail_interrupted(self, *, older_than_s: float) -> list[str]:
        """Mark unfinished jobs of stopped replicas as failed and delete their uploads.

        A queued or running job counts as interrupted when this store did not
        create it and its status file was last written or touched more than
        ``older_than_s`` seconds ago. Pass 0 when no other replica can be running.

        Returns:
            The ids of the jobs marked failed.
        """
        with self._lock:
            own = set(self._own_jobs)
        now = time.time()
        failed = []
        for path in sorted(self.root.glob(f"*/{STATUS_FILE}")):
            job_id = path.parent.name
            if not _JOB_ID.match(job_id) or job_id in own:
                continue
            try:
                age_s = now - path.stat().st_mtime
                status = JobStatus.model_validate_json(path.read_text())
            except (OSError, ValueError) as error:
                logger.warning("job %s: cannot read %s (%s); leaving the job as it is", job_id, path, error)
                continue
            if status.finished or age_s < older_than_s:
                continue
            self.update(status, state=JobState.FAILED, error=INTERRUPTED_ERROR)
            shutil.rmtree(path.parent / UPLOAD_FOLDER, ignore_errors=True)
            logger.warning("job %s on %s was %s when its server stopped; marked it failed", job_id, status.slide,
                           status.state.value)
            failed.append(job_id)
        return failed

    def heartbeat(self) -> None:
        """Touch the status files of this store's unfinished jobs, then fail the stale jobs of other replicas."""
        with self._lock:
            own = sorted(self._own_jobs)
        for job_id in own:
            try:
                os.utime(self.folder(job_id) / STATUS_FILE)
            except FileNotFoundError:
                logger.warning("job %s: its status file was removed while the job ran", job_id)
        self.fail_interrupted(older_than_s=STALE_JOB_S)

    def run_heartbeat(self, stop: threading.Event, interval_s: float = JOB_HEARTBEAT_S) -> None:
        """Call ``heartbeat`` every ``interval_s`` seconds until ``stop`` is set; run it on a daemon thread."""
        while not stop.wait(interval_s):
            try:
                self.heartbeat()
            except OSError as error:
                logger.error("job heartbeat in %s failed: %s; retrying in %.0f s", self.root, error, interval_s)

    def _write(self, status: JobStatus) -> None:
        write_json_atomic(self.folder(status.job_id) / STATUS_FILE, status.model_dump(mode="json"))


class JobProgress:
    """Progress callback of ``score_slide`` that writes a running job's tile count to its status file.

    It writes at most every ``min_interval_s`` seconds, except for the first and the last count.
    ``status`` is the job's latest status.
    """

    def __init__(self, jobs: JobStore, status: JobStatus, *, min_interval_s: float) -> None:
        self.jobs = jobs
        self.status = status
        self.min_interval_s = min_interval_s
        self._written_at = 0.0

    def __call__(self, tiles_done: int, tiles_total: int) -> None:
        now = time.monotonic()
        if 0 < tiles_done < tiles_total and now - self._written_at < self.min_interval_s:
            return
        self.status = self.jobs.update(self.status, tiles_done=tiles_done, tiles_total=tiles_total)
        self._written_at = now
