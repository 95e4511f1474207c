"""`JobScheduler`: runs due jobs off the caller's thread, one copy across the farm."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from ._clock import Clock, SystemClock
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

if TYPE_CHECKING:
    from eventbroker import Event, EventNotification, EventRegistry, Subscription

log = logging.getLogger(__name__)

STOP_JOB_EVENT_ID = uuid.UUID("8d4f4c5e-7f0b-4a55-9a52-3d1c6f0b2e71")
"""The registry event that carries stop requests between instances (like Optimizely's StopJob)."""
JOBS_RAISER_ID = uuid.UUID("2f6f0a8e-5f63-4c1e-b7b4-1e8b8f0f5d42")
"""The raiser id of every event the scheduler raises."""


@attrs.frozen
class StopJobRequest:
    """The parameter of the stop event."""

    job_id: str
    requested_by: str


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"SchedulerOptions.{attribute.name} must be > 0, got {value!r}")


def _default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@attrs.frozen
class SchedulerOptions:
    """How a `JobScheduler` polls, leases and shuts down."""

    instance_id: str | None = None
    """Names this scheduler in leases and history; default: the broker's instance id when a
    registry is given, else host:pid:random."""
    poll_interval: float = attrs.field(default=1.0, validator=_positive)
    """Seconds between looks at the store for due jobs."""
    lease_seconds: float = attrs.field(default=30.0, validator=_positive)
    """A lease lapses this long after its holder's last renewal (renewed every third of it)."""
    shutdown_timeout: float = attrs.field(default=30.0, validator=_positive)
    """How long `stop()` waits for running jobs after asking them to stop."""


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


@attrs.define
class _Running:
    job: ScheduledJob
    ctx: JobContext
    lease: HeldLease
    thread: threading.Thread | None = None
    final: JobRun | None = None


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
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[JobProgress], None]] = []
        self._finished_listeners: list[Callable[[JobRun], None]] = []
        self._stop_event: Event | None = None
        self._stop_sub: Subscription | None = None
        if registry is not None:
            self._stop_event = registry.get(STOP_JOB_EVENT_ID, param_type=StopJobRequest)
            self._stop_sub = self._stop_event.raised.subscribe(self._on_stop_event)
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
            raise KeyError(
                f"no job with id {key} is registered with this scheduler "
                f"(known: {', '.join(str(k) for k in self._jobs) or 'none'})"
            ) from None

    # ----------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Start polling on a background thread (returns at once)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._loop, name=f"JobScheduler[{self.instance_id}]", daemon=True
            )
            self._thread.start()
        log.info("job scheduler %s started with %d job(s)", self.instance_id, len(self._jobs))

    def stop(self) -> None:
        """Stop polling, ask running jobs to stop, wait up to `shutdown_timeout` for them."""
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._lock:
            running = list(self._running.values())
        for r in running:
            r.ctx._request_stop()
        for r in running:
            if r.thread is not None:
                r.thread.join(self.options.shutdown_timeout)
                if r.thread.is_alive():
                    log.warning(
                        "job %s still running after %.0fs; its lease will lapse",
                        r.job.display_name,
                        self.options.shutdown_timeout,
                    )
        if self._stop_sub is not None:
            self._stop_sub.unsubscribe()
            self._stop_sub = None
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

    def is_running(self, job_id: uuid.UUID | str) -> bool:
        """True while this instance runs the job."""
        return self._job(job_id).id in self._running

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
        while not self._stopping.is_set():
            try:
                self._poll()
            except Exception:
                log.exception("job scheduler %s: poll failed; retrying", self.instance_id)
            self._wake.wait(self.options.poll_interval)
            self._wake.clear()

    def _poll(self) -> list[tuple[_Running, JobRun]]:
        now = self.clock.now()
        self._renew(now)
        for aborted in self.store.reap_expired(now):
            log.warning(
                "job %s run %s aborted: instance %s stopped renewing its lease%s",
                aborted.job_id,
                aborted.run_id,
                aborted.holder,
                "; it will run again (restartable)" if aborted.restart_requested else "",
            )
        started: list[tuple[_Running, JobRun]] = []
        for state in self.store.states():
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
        with self._lock:
            running = list(self._running.values())
        for r in running:
            if not r.lease.renewal_due(now):
                continue
            until = now + r.lease.lease_seconds
            if self.store.renew(r.lease.job_id, r.lease.run_id, until):
                r.lease.renewed_at = now
            else:
                log.error(
                    "job %s lost its lease (run %s); asking it to stop",
                    r.job.display_name,
                    r.lease.run_id,
                )
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
        if not self.store.try_acquire(
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
        self.store.record_start(run)
        ctx = JobContext(
            job_id=job.id,
            run_id=run_id,
            instance_id=self.instance_id,
            trigger=trigger,
            on_report=self._report,
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
            outcome, message = JobOutcome.STOPPED, r.ctx.status or str(exc)
        except Exception as exc:
            log.exception("job %s failed (run %s)", r.job.display_name, r.ctx.run_id)
            outcome, message = JobOutcome.FAILED, f"{type(exc).__name__}: {exc}"
        ended = self.clock.now()
        try:
            self.store.record_end(
                r.ctx.run_id, ended_at=ended, outcome=outcome, status_message=message
            )
            self.store.release(r.job.id, r.ctx.run_id)
        except Exception:
            log.exception(
                "job %s: could not record the end of run %s", r.job.display_name, r.ctx.run_id
            )
        finally:
            with self._lock:
                if self._running.get(r.job.id) is r:
                    del self._running[r.job.id]
        log.info("job %s %s: %s", r.job.display_name, outcome.value, message)
        final = attrs.evolve(run, ended_at=ended, outcome=outcome, status_message=message)
        r.final = final
        for listener in list(self._finished_listeners):
            try:
                listener(final)
            except Exception:
                log.exception("job finished listener failed")

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


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result
