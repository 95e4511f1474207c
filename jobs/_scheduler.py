"""`JobScheduler`: runs due jobs off the caller's thread, one copy across the farm."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from cache._health import Health
from cache._settings import EnvSettings, env, number

from ._clock import Clock, SystemClock
from ._errors import UnknownJobError
from ._job import (
    JobContext,
    JobOutcome,
    JobProgress,
    JobRun,
    JobStopped,
    JobTrigger,
    ScheduledJob,
    validate_job,
)
from ._lease import HeldLease
from ._store import JobState, JobStore
from ._store_watch import StoreWatch
from ._telemetry import RunTelemetry
from ._text import describe, message_of, redact, storable_text

if TYPE_CHECKING:
    from eventbroker import Event, EventNotification, EventRegistry, Subscription

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_FIRST_DELAY = 1.0
"""Seconds before the first retry of an unrecorded run end; doubled each time, up to a third
of `lease_seconds` (the renewal period)."""
RECORD_ATTEMPTS = 10
"""Attempts to record a run's end once its lease is released; while the lease is still held
the scheduler keeps trying (and renewing) for as long as it runs."""
LOST_LEASE_REPORTED_FOR = 3600.0
"""Seconds `health()` reports a lost lease (unless a later run of the job ends here first)."""

STOP_JOB_EVENT_ID = uuid.UUID("8d4f4c5e-7f0b-4a55-9a52-3d1c6f0b2e71")
"""The registry event that carries stop requests between instances (like Optimizely's StopJob)."""
JOBS_RAISER_ID = uuid.UUID("2f6f0a8e-5f63-4c1e-b7b4-1e8b8f0f5d42")
"""The raiser id of every event the scheduler raises."""
RUN_JOB_EVENT_ID = uuid.UUID("0b7e3a51-52c4-4d0e-8f6b-9a1d2c3e4f5a")
"""The registry event that asks the schedulers of the farm to run a job now (`RunJobRequest`):
an instance without a scheduler (a web instance's farm page) starts a job this way."""


@attrs.frozen
class StopJobRequest:
    """The parameter of the stop event."""

    job_id: str
    requested_by: str


@attrs.frozen
class RunJobRequest:
    """The parameter of the run-now event (`RUN_JOB_EVENT_ID`)."""

    job_id: str
    requested_by: str


_positive = number(above=0)


def _default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@attrs.frozen
class SchedulerOptions(EnvSettings):
    """How a `JobScheduler` polls, leases and shuts down; `from_env()` reads the ``JOBS_*``
    environment variables (keyword arguments win)."""

    instance_id: str | None = attrs.field(default=None, metadata=env("JOBS_INSTANCE_ID"))
    """Names this scheduler in leases and history; default: the broker's instance id when a
    registry is given, else host:pid:random."""
    poll_interval: float = attrs.field(
        default=1.0, validator=_positive, metadata=env("JOBS_POLL_INTERVAL")
    )
    """Seconds between looks at the store for due jobs."""
    lease_seconds: float = attrs.field(
        default=30.0, validator=_positive, metadata=env("JOBS_LEASE_SECONDS")
    )
    """A lease lapses this long after its holder's last renewal (renewed every third of it).
    After a store outage, no lease is reaped for this long either."""
    shutdown_timeout: float = attrs.field(
        default=30.0, validator=_positive, metadata=env("JOBS_SHUTDOWN_TIMEOUT")
    )
    """How long `stop()` waits for running jobs after asking them to stop, and for the store to
    take the ends of runs it could not record yet."""


def open_store(target: str | os.PathLike[str]) -> JobStore:
    """A PostgreSQL store for a ``postgresql://`` URL, else a SQLite store at that file path."""
    text = os.fspath(target)
    if text.startswith(("postgresql://", "postgres://")):
        from ._postgres_store import PostgresJobStore

        return PostgresJobStore(text)
    from ._sqlite_store import SqliteJobStore

    return SqliteJobStore(text)


def _schedule_key(job: ScheduledJob) -> str:
    return "manual" if job.schedule is None else repr(job.schedule)


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@attrs.define
class _PendingEnd:
    """The end of a run on its way to the store: recorded in the history, lease released."""

    outcome: JobOutcome
    message: str
    ended_at: float
    recorded: bool = False
    released: bool = False
    attempts: int = 0
    """Failed attempts so far."""
    failing_since: float | None = None
    next_attempt_at: float = 0.0
    last_error: str = ""

    @property
    def done(self) -> bool:
        return self.recorded and self.released


@attrs.define
class _Running:
    job: ScheduledJob
    ctx: JobContext
    lease: HeldLease
    thread: threading.Thread | None = None
    final: JobRun | None = None
    end: _PendingEnd | None = None
    """Set when `execute` returned; while not done, the run waits in `_ending`."""
    lease_lost: bool = False


@attrs.frozen
class _LostLease:
    job_name: str
    run_id: str
    at: float


class JobScheduler:
    """Runs scheduled jobs on background threads; a store lease keeps one copy farm-wide.

    Every instance of an app may run a scheduler over the same store: whichever polls first
    when a job is due takes its lease and runs it; the lease is renewed while the job runs and
    lapses if the instance dies (a `restartable` job then runs again elsewhere). With an
    `EventRegistry`, `request_stop` reaches the instance running the job through the broker.
    """

    def __init__(
        self,
        jobs: Iterable[ScheduledJob] = (),
        *,
        store: JobStore | str | os.PathLike[str] = "jobs.sqlite3",
        options: SchedulerOptions | None = None,
        clock: Clock | None = None,
        registry: EventRegistry | None = None,
    ) -> None:
        self.options = options or SchedulerOptions()
        self.instance_id: str = self.options.instance_id or (
            registry.broker.instance_id if registry is not None else _default_instance_id()
        )
        self.clock: Clock = clock or SystemClock()
        self.store: JobStore = open_store(store) if isinstance(store, str | os.PathLike) else store
        self._owns_store = isinstance(store, str | os.PathLike)
        self._jobs: dict[uuid.UUID, ScheduledJob] = {}
        self._running: dict[uuid.UUID, _Running] = {}
        """Runs holding their lease here: executing, or ended with the release not yet done."""
        self._ending: dict[str, _Running] = {}
        """Ended runs (by run id) whose end the store has not taken yet; retried by `_poll`."""
        self._lost: dict[uuid.UUID, _LostLease] = {}
        self._lock = threading.RLock()
        self._retrying = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._died: tuple[float, str] | None = None
        self._store_watch = StoreWatch(repr(self.store), self.options.lease_seconds)
        self._listeners: list[Callable[[JobProgress], None]] = []
        self._finished_listeners: list[Callable[[JobRun], None]] = []
        self._stop_event: Event | None = None
        self._stop_sub: Subscription | None = None
        self._run_sub: Subscription | None = None
        self._telemetry: RunTelemetry | None = None
        """Set by an instrumentation (``eventbroker.contrib.otel``): a span and metrics per run."""
        if registry is not None:
            self._stop_event = registry.get(STOP_JOB_EVENT_ID, param_type=StopJobRequest)
            self._stop_sub = self._stop_event.raised.subscribe(self._on_stop_event)
            run_event = registry.get(RUN_JOB_EVENT_ID, param_type=RunJobRequest)
            self._run_sub = run_event.raised.subscribe(self._on_run_event)
        for job in jobs:
            self.register(job)

    # ----------------------------------------------------------------- registration
    def register(self, job: ScheduledJob) -> None:
        """Add a job (and its schedule) to this scheduler and to the store."""
        validate_job(job)
        with self._lock:
            if job.id in self._jobs and self._jobs[job.id] is not job:
                raise ValueError(
                    f"job id {job.id} is used by both {self._jobs[job.id].display_name!r} and "
                    f"{job.display_name!r}; give each job its own fixed UUID"
                )
            self._jobs[job.id] = job
        now = self.clock.now()
        self.store.register(
            job.id,
            name=job.display_name,
            restartable=job.restartable,
            schedule_key=_schedule_key(job),
            next_run_at=None if job.schedule is None else job.schedule.next_after(now),
        )

    @property
    def jobs(self) -> dict[uuid.UUID, ScheduledJob]:
        """The registered jobs by id."""
        return dict(self._jobs)

    def _job(self, job_id: uuid.UUID | str) -> ScheduledJob:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
        try:
            return self._jobs[key]
        except KeyError:
            raise UnknownJobError(
                f"no job with id {key} is registered with this scheduler "
                f"(known: {', '.join(str(k) for k in self._jobs) or 'none'})"
            ) from None

    # ----------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Start polling on a background thread (returns at once)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._stopped, self._died = False, None
            self._thread = threading.Thread(
                target=self._loop, name=f"JobScheduler[{self.instance_id}]", daemon=True
            )
            self._thread.start()
        log.info("job scheduler %s started with %d job(s)", self.instance_id, len(self._jobs))

    def stop(self) -> None:
        """Stop polling, ask running jobs to stop, wait up to `shutdown_timeout` for them.

        Run ends the store has not taken yet are retried until `shutdown_timeout` too.
        """
        deadline = time.monotonic() + self.options.shutdown_timeout
        self._stopping.set()
        self._wake.set()
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._lock:
            running = list(self._running.values())
        for r in running:
            r.ctx._request_stop()
        for r in running:
            if r.thread is not None:
                r.thread.join(max(0.0, deadline - time.monotonic()))
                if r.thread.is_alive():
                    log.warning(
                        "job %s still running after %.0fs; its lease will lapse",
                        r.job.display_name,
                        self.options.shutdown_timeout,
                    )
        self._flush_ends(deadline)
        for sub in (self._stop_sub, self._run_sub):
            if sub is not None:
                sub.unsubscribe()
        self._stop_sub = self._run_sub = None
        if self._owns_store:
            self.store.close()

    async def start_async(self) -> None:
        await asyncio.to_thread(self.start)

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> JobScheduler:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> JobScheduler:
        await self.start_async()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop_async()

    # ----------------------------------------------------------------- commands
    def run_now(self, job_id: uuid.UUID | str) -> None:
        """Queue a manual run; the first free instance (usually this one) runs it."""
        job = self._job(job_id)
        self.store.request_run(job.id, JobTrigger.MANUAL)
        self._wake.set()

    def request_stop(self, job_id: uuid.UUID | str) -> bool:
        """Ask the running copy of a stoppable job to stop, wherever it runs.

        Returns True if it was running on this instance; the request is also broadcast
        through the event broker when the scheduler has a registry.
        """
        job = self._job(job_id)
        if not job.stoppable:
            raise ValueError(
                f"job {job.display_name!r} ({job.id}) is not stoppable; set stoppable = True "
                "on the class and check ctx.stop_requested in execute()"
            )
        here = self._stop_local(job.id)
        if self._stop_event is not None:
            from eventbroker import EventRaiseOption

            self._stop_event.raise_(
                JOBS_RAISER_ID,
                StopJobRequest(job_id=str(job.id), requested_by=self.instance_id),
                EventRaiseOption.RAISE_BROADCAST,
            )
        return here

    async def run_now_async(self, job_id: uuid.UUID | str) -> None:
        await asyncio.to_thread(self.run_now, job_id)

    async def request_stop_async(self, job_id: uuid.UUID | str) -> bool:
        return await asyncio.to_thread(self.request_stop, job_id)

    def history(self, job_id: uuid.UUID | str, limit: int = 50) -> list[JobRun]:
        """Runs of the job on any instance, newest first."""
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
        return self.store.history(key, limit)

    async def history_async(self, job_id: uuid.UUID | str, limit: int = 50) -> list[JobRun]:
        return await asyncio.to_thread(self.history, job_id, limit)

    def running(self) -> list[JobProgress]:
        """The runs executing on this instance now: each one's start, last status and progress."""
        with self._lock:
            runs = [r for r in self._running.values() if r.end is None]
        return [r.ctx.progress() for r in runs]

    def is_running(self, job_id: uuid.UUID | str) -> bool:
        """True while this instance runs the job."""
        r = self._running.get(self._job(job_id).id)
        return r is not None and r.end is None

    def on_progress(self, listener: Callable[[JobProgress], None]) -> Callable[[], None]:
        """Call `listener` on every status/progress report of a job run here; returns unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_finished(self, listener: Callable[[JobRun], None]) -> Callable[[], None]:
        """Call `listener` with the record of every run that ends here; returns unsubscribe."""
        self._finished_listeners.append(listener)
        return lambda: self._finished_listeners.remove(listener)

    # ----------------------------------------------------------------- polling
    def run_pending(self, *, wait: bool = True) -> list[JobRun]:
        """Poll once now: renew, reap, start due jobs; with `wait`, return after they finish.

        The background loop polls the same way; tests call this with an injected clock.
        Returns the records of the runs this call started (final records when waited for).
        """
        started = self._poll()
        if not wait:
            return [run for _, run in started]
        for r, _ in started:
            if r.thread is not None:
                r.thread.join()
        return [r.final or run for r, run in started]

    async def run_pending_async(self, *, wait: bool = True) -> list[JobRun]:
        return await asyncio.to_thread(self.run_pending, wait=wait)

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._poll()
                except Exception as exc:
                    if self._store_watch.trouble is None:  # else the watch logged it
                        log.error(
                            "job scheduler %s: poll failed (%s); retrying",
                            self.instance_id,
                            describe(exc),
                            exc_info=exc,
                        )
                self._wake.wait(self.options.poll_interval)
                self._wake.clear()
        except BaseException as exc:  # recorded for health(), then the thread ends
            self._died = (time.time(), describe(exc))
            log.critical(
                "job scheduler %s: polling thread died (%s); no job runs on this instance",
                self.instance_id,
                describe(exc),
                exc_info=exc,
            )

    def _call(self, now: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call whose failure or success `store_watch` notes."""
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._store_watch.failed(now, exc)
            raise
        self._store_watch.ok(now)
        return result

    def _poll(self) -> list[tuple[_Running, JobRun]]:
        now = self.clock.now()
        self._retry_ends(now)
        self._renew(now)
        if self._store_watch.may_reap(now):
            for aborted in self._call(now, self.store.reap_expired, now):
                log.warning(
                    "job %s run %s aborted: instance %s stopped renewing its lease%s",
                    aborted.job_id,
                    aborted.run_id,
                    aborted.holder,
                    "; it will run again (restartable)" if aborted.restart_requested else "",
                )
        started: list[tuple[_Running, JobRun]] = []
        for state in self._call(now, self.store.states):
            job = self._jobs.get(state.job_id)
            if job is None or state.lease_holder is not None or self._stopping.is_set():
                continue
            with self._lock:
                if state.job_id in self._running:
                    continue
            begun = self._try_start(job, state, now)
            if begun is not None:
                started.append(begun)
        return started

    def _renew(self, now: float) -> None:
        """Renew due leases, including those of ended runs whose release is pending.

        A renewal the store cannot take (it is down) is retried at the next poll and the job
        keeps running: other schedulers do not reap leases during an outage or for one lease
        period after it, so the holder gets the chance to renew first.
        """
        with self._lock:
            running = list(self._running.values())
        for r in running:
            if r.lease_lost or not r.lease.renewal_due(now):
                continue
            until = now + r.lease.lease_seconds
            try:
                renewed = self._call(now, self.store.renew, r.lease.job_id, r.lease.run_id, until)
            except Exception:
                continue  # the store watch logged it; try again at the next poll
            if renewed:
                r.lease.renewed_at = now
            else:
                self._lease_lost(r, now)

    def _lease_lost(self, r: _Running, now: float) -> None:
        log.error(
            "lease of job %s lost at %s (run %s): another instance reaped it; asking the job "
            "to stop",
            r.job.display_name,
            _when(now),
            r.lease.run_id,
        )
        with self._lock:
            r.lease_lost = True
            self._lost[r.job.id] = _LostLease(r.job.display_name, r.lease.run_id, now)
            if r.end is not None:
                r.end.released = True  # nothing left to release
                if r.end.done:
                    self._ending.pop(r.ctx.run_id, None)
                if self._running.get(r.job.id) is r:
                    del self._running[r.job.id]
        if self._telemetry is not None:
            self._telemetry.lease_lost(r.job)
        r.ctx._request_stop()

    def _try_start(
        self, job: ScheduledJob, state: JobState, now: float
    ) -> tuple[_Running, JobRun] | None:
        trigger: JobTrigger | None = state.run_requested
        next_run_at = state.next_run_at
        due = job.schedule is not None and next_run_at is not None and next_run_at <= now
        if trigger is None and not due:
            return None
        if due and job.schedule is not None and next_run_at is not None:
            # this run takes the slot; missed slots (nobody was up) run once, not each
            next_run_at = job.schedule.next_after(next_run_at)
            if next_run_at <= now:
                next_run_at = job.schedule.next_after(now)
        trigger = trigger or JobTrigger.SCHEDULED
        run_id = uuid.uuid4().hex
        lease = HeldLease(job.id, run_id, self.options.lease_seconds, now)
        if not self._call(
            now,
            self.store.try_acquire,
            state,
            instance_id=self.instance_id,
            run_id=run_id,
            lease_until=lease.expires_at,
            trigger=trigger,
            next_run_at=next_run_at,
        ):
            return None
        run = JobRun(
            run_id=run_id,
            job_id=job.id,
            instance_id=self.instance_id,
            trigger=trigger,
            started_at=now,
            ended_at=None,
            outcome=JobOutcome.RUNNING,
            status_message="",
        )
        try:
            self._call(now, self.store.record_start, run)
        except Exception:
            try:  # the job has not run: free the lease now rather than when it lapses
                self._call(now, self.store.release, job.id, run_id)
            except Exception:
                log.warning("job %s: could not release run %s", job.display_name, run_id)
            raise
        ctx = JobContext(
            job_id=job.id,
            run_id=run_id,
            instance_id=self.instance_id,
            trigger=trigger,
            on_report=self._report,
            started_at=now,
        )
        running = _Running(job, ctx, lease)
        running.thread = threading.Thread(
            target=self._execute, args=(running, run), name=f"job:{job.display_name}", daemon=True
        )
        with self._lock:
            self._running[job.id] = running
        log.info("job %s started (%s, run %s)", job.display_name, trigger.value, run_id)
        running.thread.start()
        return running, run

    def _execute(self, r: _Running, run: JobRun) -> None:
        telemetry = self._telemetry
        if telemetry is None:
            outcome, message = self._run_job(r)
        else:
            outcome, message = telemetry.run(r.job, r.ctx, lambda: self._run_job(r))
        ended = self.clock.now()
        r.end = _PendingEnd(outcome, message, ended)
        if self._end_attempt(r, ended):
            with self._lock:
                lost = self._lost.get(r.job.id)
                if lost is not None and lost.run_id != r.ctx.run_id:
                    del self._lost[r.job.id]  # a later run ended normally
        log.info("job %s %s: %s", r.job.display_name, outcome.value, message)
        final = attrs.evolve(run, ended_at=ended, outcome=outcome, status_message=message)
        r.final = final
        for listener in list(self._finished_listeners):
            try:
                listener(final)
            except Exception:
                log.exception("job finished listener failed")

    def _run_job(self, r: _Running) -> tuple[JobOutcome, str]:
        """Run `execute`; its outcome and status message (storable), whatever it raised."""
        outcome, message = JobOutcome.SUCCEEDED, ""
        try:
            result = r.job.execute(r.ctx)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
            stopped = r.ctx.stop_requested
            message = result if isinstance(result, str) else r.ctx.status
            if stopped and r.job.stoppable:
                outcome = JobOutcome.STOPPED
        except JobStopped as exc:
            outcome, message = JobOutcome.STOPPED, r.ctx.status or message_of(exc)
        except BaseException as exc:  # even SystemExit: the run must end and free its lease
            log.exception("job %s failed (run %s)", r.job.display_name, r.ctx.run_id)
            outcome, message = JobOutcome.FAILED, describe(exc)
        if not isinstance(message, str):
            message = repr(message)
        return outcome, storable_text(message)

    def _end_attempt(self, r: _Running, now: float) -> bool:
        """Record the end of `r` and release its lease (each if not done yet); True when done.

        The release is attempted whatever happens while recording. While it is not done the
        run stays in `_running`, so `_poll` keeps renewing its lease: no other instance can
        take the lease and run a job that already ended. Failed attempts are retried by
        `_poll` with a doubling delay.
        """
        end = r.end
        assert end is not None
        errors: list[Exception] = []
        try:
            if not end.recorded:
                self._call(
                    now,
                    self.store.record_end,
                    r.ctx.run_id,
                    ended_at=end.ended_at,
                    outcome=end.outcome,
                    status_message=end.message,
                )
                end.recorded = True
        except Exception as exc:
            errors.append(exc)
        finally:
            if not end.released:
                try:
                    self._call(now, self.store.release, r.job.id, r.ctx.run_id)
                    end.released = True
                except Exception as exc:
                    errors.append(exc)
        with self._lock:
            if end.released and self._running.get(r.job.id) is r:
                del self._running[r.job.id]
            if end.done:
                self._ending.pop(r.ctx.run_id, None)
                if end.attempts:
                    log.info(
                        "job %s: the end of run %s (%s) is recorded after %d failed attempt(s)",
                        r.job.display_name,
                        r.ctx.run_id,
                        end.outcome.value,
                        end.attempts,
                    )
                return True
            end.attempts += 1
            end.failing_since = end.failing_since if end.failing_since is not None else now
            end.last_error = describe(errors[-1])
            if end.released and end.attempts >= RECORD_ATTEMPTS:
                self._ending.pop(r.ctx.run_id, None)
                log.error(
                    "job %s: gave up recording the end of run %s after %d attempts (%s); the "
                    "history keeps it as running. It ended %s: %s",
                    r.job.display_name,
                    r.ctx.run_id,
                    end.attempts,
                    end.last_error,
                    end.outcome.value,
                    end.message,
                )
                return False
            cap = max(RETRY_FIRST_DELAY, self.options.lease_seconds / 3)
            end.next_attempt_at = now + min(cap, RETRY_FIRST_DELAY * 2 ** (end.attempts - 1))
            self._ending[r.ctx.run_id] = r
        log.warning(
            "job %s: could not record the end of run %s (%s, attempt %d: %s); %s",
            r.job.display_name,
            r.ctx.run_id,
            end.outcome.value,
            end.attempts,
            end.last_error,
            "the lease is released, retrying the record"
            if end.released
            else "the lease is kept and renewed meanwhile, so the job does not run again; retrying",
        )
        return False

    def _retry_ends(self, now: float, *, due_only: bool = True) -> None:
        """Retry the run ends the store did not take (one poller at a time)."""
        if not self._retrying.acquire(blocking=False):
            return
        try:
            with self._lock:
                ending = list(self._ending.values())
            for r in ending:
                if r.end is not None and (not due_only or r.end.next_attempt_at <= now):
                    self._end_attempt(r, now)
        finally:
            self._retrying.release()

    def _flush_ends(self, deadline: float) -> None:
        """At stop: retry pending run ends with backoff until `deadline` (monotonic)."""
        delay = RETRY_FIRST_DELAY / 4
        while self._ending:
            self._retry_ends(self.clock.now(), due_only=False)
            if not self._ending or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, RETRY_FIRST_DELAY * 4)
        with self._lock:
            left = list(self._ending.values())
            self._ending.clear()
        for r in left:
            assert r.end is not None
            log.error(
                "job %s: stopped before the end of run %s could be recorded (%s). It ended %s: "
                "%s. %s",
                r.job.display_name,
                r.ctx.run_id,
                r.end.last_error,
                r.end.outcome.value,
                r.end.message,
                "The history keeps it as running."
                if r.end.released
                else "Its lease will lapse: other instances mark it aborted"
                + (" and run the job again (restartable)." if r.job.restartable else "."),
            )

    # ----------------------------------------------------------------- health
    def health(self) -> Health:
        """How this scheduler is doing, with reasons in words when it is not OK.

        DOWN: not started, stopped, or its polling thread died. DEGRADED: the store is failing,
        a lease was lost while a job ran, or the end of a run waits to be recorded.
        """
        now = self.clock.now()
        down: list[str] = []
        degraded: list[str] = []
        thread = self._thread
        if thread is None:
            down.append(
                "the scheduler is stopped: no job runs on this instance"
                if self._stopped
                else "the scheduler is not started: call start() (or use it in a with block) "
                "so that due jobs run on this instance"
            )
        elif not thread.is_alive():
            died_at, error = self._died or (now, "unknown error")
            down.append(
                f"the scheduler's polling thread died at {_when(died_at)} ({error}): no job "
                "runs on this instance; see the log and restart the instance"
            )
        trouble = self._store_watch.trouble
        if trouble is not None:
            degraded.append(
                f"the job store {redact(repr(self.store))} has failed since "
                f"{_when(trouble.since)} ({trouble.failures} failed call(s); last error: "
                f"{trouble.last_error}); running jobs go on and their ends are recorded when it "
                "answers; check that the database is up and reachable"
            )
        with self._lock:
            lost = list(self._lost.values())
            ending = [r for r in self._ending.values() if r.end is not None]
        for lease in lost:
            if now - lease.at < LOST_LEASE_REPORTED_FOR:
                degraded.append(
                    f"lease of job {lease.job_name!r} lost at {_when(lease.at)} (run "
                    f"{lease.run_id}): the run was asked to stop and the job may have run on "
                    "another instance too; check this instance's clock and its link to the store"
                )
        for r in ending:
            end = r.end
            assert end is not None
            degraded.append(
                f"the end of run {r.ctx.run_id} of job {r.job.display_name!r} ({end.outcome.value}) "
                f"is not recorded yet: {end.attempts} attempt(s) failed since "
                f"{_when(end.failing_since or now)} (last error: {end.last_error}); retrying at "
                f"{_when(end.next_attempt_at)}"
                + ("" if end.released else "; its lease is kept meanwhile")
            )
        return Health.from_reasons(
            f"job scheduler {self.instance_id!r}", down=down, degraded=degraded
        )

    def _report(self, progress: JobProgress) -> None:
        for listener in list(self._listeners):
            try:
                listener(progress)
            except Exception:
                log.exception("job progress listener failed")

    # ----------------------------------------------------------------- stop
    def _stop_local(self, job_id: uuid.UUID) -> bool:
        with self._lock:
            r = self._running.get(job_id)
        if r is None:
            return False
        log.info("job %s: stop requested", r.job.display_name)
        r.ctx._request_stop()
        return True

    def _on_stop_event(self, notification: EventNotification) -> None:
        param = notification.param
        job_id = getattr(param, "job_id", None)
        if notification.is_local or job_id is None:
            return  # request_stop already stopped the local copy
        try:
            key = uuid.UUID(str(job_id))
        except ValueError:
            log.warning("stop request with a bad job id %r ignored", job_id)
            return
        job = self._jobs.get(key)
        if job is not None and job.stoppable and self._stop_local(key):
            log.info(
                "job %s stopped on request from instance %s",
                job.display_name,
                getattr(param, "requested_by", "?"),
            )

    def _on_run_event(self, notification: EventNotification) -> None:
        """Another instance asked for a run now: queue it when the job is registered here."""
        if notification.is_local:
            return
        param = notification.param
        job_id = getattr(param, "job_id", None)
        try:
            key = uuid.UUID(str(job_id))
        except ValueError:
            log.warning("run request with a bad job id %r ignored", job_id)
            return
        job = self._jobs.get(key)
        if job is None or self._stopping.is_set():
            return
        requested_by = getattr(param, "requested_by", "?")
        try:
            self.run_now(key)
        except Exception as exc:  # the store is down: the requester sees no run start
            log.warning(
                "job %s: the run requested by instance %s could not be queued: %s",
                job.display_name,
                requested_by,
                describe(exc),
            )
            return
        log.info("job %s: run requested by instance %s", job.display_name, requested_by)


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result
