"""The job model: `ScheduledJob`, the context it runs with, and its run records."""

from __future__ import annotations

import enum
import threading
import uuid
from collections.abc import Awaitable, Callable

import attrs

from ._errors import JobsError
from ._schedule import Schedule


class JobOutcome(enum.Enum):
    """How a run ended (or that it has not ended yet)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """`execute` raised; the status message names the exception."""
    STOPPED = "stopped"
    """A stop was requested and the job honoured it."""
    ABORTED = "aborted"
    """The instance running it died: its lease expired before the run ended."""


class JobTrigger(enum.Enum):
    """Why a run started."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    RESTART = "restart"
    """A restartable job's previous run was aborted by a crash."""


class JobStopped(JobsError):
    """Raised by `JobContext.raise_if_stop_requested`; the run ends as STOPPED."""


@attrs.frozen
class JobRun:
    """One run of a job, as kept in the store's history."""

    run_id: str
    job_id: uuid.UUID
    instance_id: str
    """The scheduler instance that ran it."""
    trigger: JobTrigger
    started_at: float
    ended_at: float | None
    outcome: JobOutcome
    status_message: str

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, or None while running."""
        return None if self.ended_at is None else self.ended_at - self.started_at


@attrs.frozen
class JobProgress:
    """A status or progress report from a running job (`JobScheduler.progress_changed`)."""

    job_id: uuid.UUID
    run_id: str
    instance_id: str
    status: str
    done: int | None = None
    total: int | None = None
    started_at: float | None = None
    """When the run started (the scheduler's clock); None when unknown."""


class JobContext:
    """What a running job gets: progress reporting and the cooperative stop flag."""

    def __init__(
        self,
        *,
        job_id: uuid.UUID,
        run_id: str,
        instance_id: str,
        trigger: JobTrigger,
        on_report: Callable[[JobProgress], None],
        started_at: float | None = None,
    ) -> None:
        self.job_id = job_id
        self.run_id = run_id
        self.instance_id = instance_id
        self.trigger = trigger
        self.started_at = started_at
        self._on_report = on_report
        self._stop = threading.Event()
        self.status = ""
        self.done: int | None = None
        self.total: int | None = None

    @property
    def stop_requested(self) -> bool:
        """True once someone asked this run to stop (only stoppable jobs are asked)."""
        return self._stop.is_set()

    def raise_if_stop_requested(self) -> None:
        """Raise `JobStopped` if a stop was requested: a one-line check inside a loop."""
        if self._stop.is_set():
            raise JobStopped(f"job {self.job_id} stopped on request")

    def report_status(self, text: str) -> None:
        """Say what the job is doing now; the last text is the status if `execute` returns None."""
        self.status = text
        self._emit()

    def report_progress(self, done: int, total: int | None = None) -> None:
        """Report `done` of `total` units (total None when unknown)."""
        if done < 0 or (total is not None and total < 0):
            raise ValueError(f"report_progress: done and total must be >= 0, got {done}/{total}")
        self.done, self.total = done, total
        self._emit()

    def _request_stop(self) -> None:
        self._stop.set()

    def progress(self) -> JobProgress:
        """The run's last status and progress."""
        return JobProgress(
            job_id=self.job_id,
            run_id=self.run_id,
            instance_id=self.instance_id,
            status=self.status,
            done=self.done,
            total=self.total,
            started_at=self.started_at,
        )

    def _emit(self) -> None:
        self._on_report(self.progress())


class ScheduledJob:
    """Base class of a scheduled job (the model is Optimizely's scheduled jobs).

    Subclasses set a stable `id` (a fixed UUID: it keys the schedule, the lease and the history
    in the store, so it must not change between deployments) and implement `execute`::

        class ImportJob(ScheduledJob):
            id = uuid.UUID("5b0e...")
            name = "Inventory import"
            schedule = Interval(300)          # or Cron("*/5 * * * *"); None = manual only
            stoppable = True
            restartable = True

            async def execute(self, ctx: JobContext) -> str:
                ...
                return "imported 120 products"
    """

    id: uuid.UUID
    name: str = ""
    description: str = ""
    schedule: Schedule | None = None
    stoppable: bool = False
    """The job checks `ctx.stop_requested`; stop requests for other jobs are refused."""
    restartable: bool = False
    """A run aborted by a crash (expired lease) runs again as soon as an instance can take it."""

    def execute(self, ctx: JobContext) -> str | Awaitable[str | None] | None:
        """Do the work and return a status message. May be `async def`."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute(ctx)")

    @property
    def display_name(self) -> str:
        return self.name or type(self).__name__


def validate_job(job: ScheduledJob) -> None:
    """Raise a clear error when a job lacks what the scheduler needs."""
    job_id = getattr(job, "id", None)
    if not isinstance(job_id, uuid.UUID):
        raise TypeError(
            f"{type(job).__name__}.id must be a fixed uuid.UUID (got {job_id!r}); "
            'set e.g. id = uuid.UUID("...") on the class'
        )
    schedule = job.schedule
    if schedule is not None and not callable(getattr(schedule, "next_after", None)):
        raise TypeError(
            f"{type(job).__name__}.schedule must be Interval(...), Cron(...) or None, got {schedule!r}"
        )
