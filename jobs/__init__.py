"""Scheduled background jobs with a single-runner lease and cache invalidation helpers."""

from typing import TYPE_CHECKING

from cache._health import Health, HealthStatus

from ._clock import Clock, ManualClock, SystemClock
from ._errors import JobsError, JobStoreError, JobStoreUnavailableError, UnknownJobError
from ._invalidation import CacheInvalidator, InvalidationBatch, InvalidationError
from ._job import (
    JobContext,
    JobOutcome,
    JobProgress,
    JobRun,
    JobStopped,
    JobTrigger,
    ScheduledJob,
)
from ._schedule import Cron, Interval, Schedule
from ._scheduler import (
    JOBS_RAISER_ID,
    RUN_JOB_EVENT_ID,
    STOP_JOB_EVENT_ID,
    JobScheduler,
    RunJobRequest,
    SchedulerOptions,
    StopJobRequest,
    open_store,
)
from ._sqlite_store import SqliteJobStore
from ._store import AbortedRun, JobState, JobStore
from ._text import MAX_TEXT_LENGTH

if TYPE_CHECKING:
    from ._postgres_store import PostgresJobStore

__all__ = [
    "JOBS_RAISER_ID",
    "MAX_TEXT_LENGTH",
    "RUN_JOB_EVENT_ID",
    "STOP_JOB_EVENT_ID",
    "AbortedRun",
    "CacheInvalidator",
    "Clock",
    "Cron",
    "Health",
    "HealthStatus",
    "Interval",
    "InvalidationBatch",
    "InvalidationError",
    "JobContext",
    "JobOutcome",
    "JobProgress",
    "JobRun",
    "JobScheduler",
    "JobState",
    "JobStopped",
    "JobStore",
    "JobStoreError",
    "JobStoreUnavailableError",
    "JobTrigger",
    "JobsError",
    "ManualClock",
    "PostgresJobStore",
    "RunJobRequest",
    "Schedule",
    "ScheduledJob",
    "SchedulerOptions",
    "SqliteJobStore",
    "StopJobRequest",
    "SystemClock",
    "UnknownJobError",
    "open_store",
]


def __getattr__(name: str) -> object:
    # psycopg is an optional extra: import the PostgreSQL store only when asked for.
    if name == "PostgresJobStore":
        from ._postgres_store import PostgresJobStore

        return PostgresJobStore
    raise AttributeError(f"module 'jobs' has no attribute {name!r}")
