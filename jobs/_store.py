"""The job store protocol: schedules, single-runner leases and run history.

A store is shared by every scheduler of the farm. Its operations are atomic compare-and-set
statements, so two schedulers racing for one job cannot both win. Times are seconds since the
epoch from the schedulers' clocks (keep instance clocks in sync, as NTP does on any PaaS).
The SQL stores pass every text through `storable_text` and raise `JobStoreError` when a
statement fails; the scheduler copes with any exception from a store.
"""

from __future__ import annotations

import uuid
from typing import Protocol

import attrs

from ._errors import UnknownJobError
from ._job import JobOutcome, JobRun, JobTrigger

__all__ = ["AbortedRun", "JobState", "JobStore", "UnknownJobError"]


@attrs.frozen
class JobState:
    """A job's row in the store."""

    job_id: uuid.UUID
    name: str
    restartable: bool
    next_run_at: float | None
    """When the schedule is next due; None for manual-only jobs."""
    run_requested: JobTrigger | None
    """A pending manual run or crash restart."""
    lease_holder: str | None
    lease_run_id: str | None
    lease_expires_at: float | None


@attrs.frozen
class AbortedRun:
    """A run whose holder stopped renewing its lease (returned by `reap_expired`)."""

    job_id: uuid.UUID
    run_id: str
    holder: str
    restart_requested: bool


class JobStore(Protocol):
    """Where schedulers keep schedules, leases and history (SQLite or PostgreSQL)."""

    def register(
        self,
        job_id: uuid.UUID,
        *,
        name: str,
        restartable: bool,
        schedule_key: str,
        next_run_at: float | None,
    ) -> None:
        """Add a job, or update it; `next_run_at` is kept unless the schedule changed."""
        ...

    def states(self) -> list[JobState]: ...

    def state(self, job_id: uuid.UUID) -> JobState: ...

    def try_acquire(
        self,
        seen: JobState,
        *,
        instance_id: str,
        run_id: str,
        lease_until: float,
        trigger: JobTrigger,
        next_run_at: float | None,
    ) -> bool:
        """Take the lease if the row is still as `seen` and free; True when this caller won."""
        ...

    def renew(self, job_id: uuid.UUID, run_id: str, lease_until: float) -> bool:
        """Extend a held lease; False when it was lost (expired and taken or reaped)."""
        ...

    def release(self, job_id: uuid.UUID, run_id: str) -> None: ...

    def reap_expired(self, now: float) -> list[AbortedRun]:
        """Free leases whose holders died; mark their runs ABORTED; queue restartable ones."""
        ...

    def request_run(self, job_id: uuid.UUID, trigger: JobTrigger) -> None: ...

    def record_start(self, run: JobRun) -> None: ...

    def record_end(
        self, run_id: str, *, ended_at: float, outcome: JobOutcome, status_message: str
    ) -> None: ...

    def history(self, job_id: uuid.UUID, limit: int = 50) -> list[JobRun]:
        """Runs of a job, newest first."""
        ...

    def close(self) -> None: ...
