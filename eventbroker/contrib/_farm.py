"""The farm view's data, framework-neutral.

* **Sending**: `FarmReporter` gives the broker its heartbeat summary (`summary()`, on the
  broker loop: counters read from memory, no I/O), remembers the last runs of the jobs this
  instance runs and asks for an early heartbeat when one starts reporting or ends, and (when
  this instance serves the page) keeps the last events received.
* **Receiving**: a peer's summary is hostile input: `parse_summary` takes only the known shape
  (types checked, numbers clamped, texts and lists cut short) and drops the rest.
* **The page**: `farm_state` puts the instances (this one and every one heard from), the flow,
  the caches, the jobs and the recent events together; `request_run` / `request_stop` are the
  page's buttons.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from cache import Health, HealthStatus, HybridCache
from cache._redact import redact_text

from .._args import EventRaiseOption, EventReceivedEventArgs
from .._broker import EventBroker
from .._envelope import to_wire_param
from .._flow import Flow
from .._presence import InstanceInfo
from .._registry import EventRegistry

if TYPE_CHECKING:
    from jobs import JobProgress, JobRun, JobScheduler, RunJobRequest, ScheduledJob, StopJobRequest

SUMMARY_VERSION = 1
MAX_CACHES = 16
"""Caches listed per instance (in a summary, and read from one)."""
MAX_JOBS = 16
MAX_RUNS = 3
"""Last runs per job in a summary."""
MAX_TEXT = 160
"""Characters of a status text or reason in a summary."""
MAX_NAME = 80
MAX_REASONS = 3
RECENT_EVENTS = 10
GONE_KEPT = 600.0
"""Seconds an instance that stopped reporting stays listed (marked gone)."""
_MAX_COUNT = 2**53
_MAX_GONE = 100

HEALTH_WORDS = ("ok", "degraded", "down", "starting")
CONNECTION_WORDS = ("connected", "disconnected")
OUTCOME_WORDS = ("running", "succeeded", "failed", "stopped", "aborted")
L2_WORDS = ("none", "ok", "open")


# ------------------------------------------------------------------------------ sending


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def schedule_text(job: ScheduledJob) -> str:
    """``every 300 s``, ``cron */15 * * * *`` or ``manual``."""
    schedule = job.schedule
    if schedule is None:
        return "manual"
    seconds = getattr(schedule, "seconds", None)
    if isinstance(seconds, int | float):
        return f"every {seconds:g} s"
    expression = getattr(schedule, "expression", None)
    if isinstance(expression, str):
        return f"cron {expression}"
    return _cut(repr(schedule), MAX_NAME)


def _run_fields(run: JobRun) -> dict[str, Any]:
    return {
        "run": run.run_id[:32],
        "started": _round(run.started_at, 1),
        "ended": _round(run.ended_at, 1),
        "outcome": run.outcome.value,
        "status": _cut(run.status_message),
    }


def _progress_fields(progress: JobProgress) -> dict[str, Any]:
    return {
        "run": progress.run_id[:32],
        "started": _round(progress.started_at, 1),
        "status": _cut(progress.status),
        "done": progress.done,
        "total": progress.total,
    }


def cache_fields(cache: HybridCache) -> dict[str, Any]:
    """What a summary says of one cache."""
    stats = cache.stats
    has_l2 = getattr(cache, "_l2", None) is not None
    return {
        "name": _cut(cache.options.name, MAX_NAME),
        "entries": cache.memory_count,
        "hits": stats.hits,
        "misses": stats.misses,
        "stale": stats.stale_hits,
        "factory_errors": stats.factory_errors,
        "bp_in": stats.backplane_received,
        "bp_out": stats.backplane_sent,
        "backlog": len(cache.auto_recovery_pending),
        "l2": ("open" if cache.distributed_cache_circuit_open else "ok") if has_l2 else "none",
    }


def event_fields(broker: EventBroker, flow: Flow) -> dict[str, Any]:
    """What a summary says of the broker's events: totals and the last minute."""
    stats = broker.stats
    minute = flow.last(60.0)
    fields: dict[str, Any] = {
        "in": stats.dispatched,
        "out": stats.published,
        "refused": sum(stats.rejected.values()),
        "gaps": stats.gaps,
        "reconnects": stats.reconnects,
        "in_1m": minute.events_in,
        "out_1m": minute.events_out,
        "lag_p50": _round(minute.lag_p50, 5),
        "lag_p99": _round(minute.lag_p99, 5),
    }
    if minute.refused:
        fields["refused_1m"] = dict(list(minute.refused.items())[:8])
    return fields


def health_fields(health: Health) -> dict[str, Any]:
    return {
        "health": health.status.value,
        "reasons": [_cut(redact_text(r)) for r in health.reasons[:MAX_REASONS]],
    }


class FarmReporter:
    """What one instance tells the farm about itself, and remembers for its own farm page.

    Built by `AppServices` (unless ``EVENTBROKER_HEARTBEAT_SUMMARY=false``) and attached when it
    starts. `summary()` is the broker's `summary_provider`.
    """

    def __init__(
        self,
        broker: EventBroker,
        registry: EventRegistry,
        caches: Callable[[], Iterable[HybridCache]],
        scheduler: JobScheduler | None = None,
        health: Callable[[], Health] | None = None,
    ) -> None:
        self.broker = broker
        self.registry = registry
        self.caches = caches
        self.scheduler = scheduler
        self._health = health or broker.health
        self._lock = threading.Lock()
        self._runs: dict[uuid.UUID, deque[JobRun]] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._recent: deque[EventReceivedEventArgs] | None = None
        self._known: dict[str, InstanceInfo] = {}
        self._gone: dict[str, tuple[InstanceInfo, float]] = {}

    # -- life cycle ---------------------------------------------------------------------------

    def attach(self, *, summary: bool = True) -> None:
        """Follow the scheduler's runs and, with `summary`, become the broker's summary
        provider (call before the broker starts, so its hello carries the summary)."""
        scheduler = self.scheduler
        if scheduler is not None:
            self._seed_history(scheduler)
            self._unsubscribe += [
                scheduler.on_progress(self._on_progress),
                scheduler.on_finished(self._on_finished),
            ]
        if summary:
            self.broker.summary_provider = self.summary

    def detach(self) -> None:
        if self.broker.summary_provider == self.summary:
            self.broker.summary_provider = None
        for undo in self._unsubscribe:
            with contextlib.suppress(ValueError):
                undo()
        self._unsubscribe.clear()

    def _seed_history(self, scheduler: JobScheduler) -> None:
        for job_id in list(scheduler.jobs)[:MAX_JOBS]:
            try:
                runs = scheduler.history(job_id, MAX_RUNS)
            except Exception:  # the store is down: the page shows runs from now on
                runs = []
            with self._lock:
                self._runs[job_id] = deque(reversed(runs), maxlen=MAX_RUNS)

    def _on_progress(self, progress: JobProgress) -> None:
        self.broker.request_heartbeat()

    def _on_finished(self, run: JobRun) -> None:
        with self._lock:
            runs = self._runs.setdefault(run.job_id, deque(maxlen=MAX_RUNS))
            runs.append(run)
        self.broker.request_heartbeat()

    # -- the summary ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """This instance's counters, about 300 bytes of JSON plus about 250 per job (bounded by
        `MAX_CACHES`, `MAX_JOBS`, `MAX_RUNS` and `MAX_TEXT`)."""
        broker = self.broker
        self._track(broker.instances, time.time())
        summary: dict[str, Any] = {
            "v": SUMMARY_VERSION,
            "conn": broker.connection_state.value
            if broker.connection_state.value in CONNECTION_WORDS
            else "disconnected",
            **(
                health_fields(self._checked_health())
                if broker.is_started
                else {"health": "starting", "reasons": []}  # the hello: health comes next
            ),
            "events": event_fields(broker, broker.flow),
            "caches": [cache_fields(c) for c in list(self.caches())[:MAX_CACHES]],
        }
        if self.scheduler is not None:
            summary["jobs"] = self._jobs(self.scheduler)
        return summary

    def _checked_health(self) -> Health:
        try:
            return self._health()
        except Exception as exc:
            return Health(HealthStatus.DOWN, [f"health() failed: {type(exc).__name__}"])

    def _jobs(self, scheduler: JobScheduler) -> list[dict[str, Any]]:
        running = {progress.job_id: progress for progress in scheduler.running()}
        with self._lock:
            runs = {job_id: list(found) for job_id, found in self._runs.items()}
        jobs = []
        for job_id, job in list(scheduler.jobs.items())[:MAX_JOBS]:
            progress = running.get(job_id)
            jobs.append(
                {
                    "id": str(job_id),
                    "name": _cut(job.display_name, MAX_NAME),
                    "schedule": schedule_text(job),
                    "stoppable": bool(job.stoppable),
                    "running": None if progress is None else _progress_fields(progress),
                    "runs": [_run_fields(r) for r in reversed(runs.get(job_id, []))],
                }
            )
        return jobs

    # -- instances that stopped reporting -----------------------------------------------------

    def _track(self, instances: list[InstanceInfo], now: float) -> None:
        """Remember the instances heard from; those no longer listed are gone."""
        with self._lock:
            current = {info.instance_id: info for info in instances}
            for instance_id, info in self._known.items():
                if instance_id not in current:
                    self._gone[instance_id] = (info, now)
            for instance_id in current:
                self._gone.pop(instance_id, None)
            self._known = current
            for instance_id, (_, since) in list(self._gone.items()):
                if now - since > GONE_KEPT:
                    del self._gone[instance_id]
            while len(self._gone) > _MAX_GONE:
                del self._gone[next(iter(self._gone))]

    def gone(self, now: float) -> list[tuple[InstanceInfo, float]]:
        """Instances that stopped reporting in the last `GONE_KEPT` seconds, and when."""
        self._track(self.broker.instances, now)
        with self._lock:
            return list(self._gone.values())

    # -- recent events (the instance serving the page) ------------------------------------------

    def watch_events(self) -> None:
        """Keep the last `RECENT_EVENTS` events received (from now on)."""
        with self._lock:
            if self._recent is not None:
                return
            recent: deque[EventReceivedEventArgs] = deque(maxlen=RECENT_EVENTS)
            self._recent = recent
        subscription = self.broker.event_received.subscribe(recent.append)
        self._unsubscribe.append(subscription.unsubscribe)

    def recent_events(self) -> list[EventReceivedEventArgs]:
        """Newest first."""
        recent = self._recent
        return [] if recent is None else list(reversed(list(recent)))


# ------------------------------------------------------------------------------ receiving


def _int(value: object) -> int | None:
    if type(value) is int and 0 <= value <= _MAX_COUNT:
        return value
    return None


def _count(value: object) -> int:
    return _int(value) or 0


def _number(value: object, *, low: float = 0.0, high: float = 1e12) -> float | None:
    """A finite float from `low` to `high` (ints too: a huge int is out of range, never an
    OverflowError); None otherwise."""
    if type(value) is int:
        return float(value) if low <= value <= high else None
    if type(value) is float and math.isfinite(value) and low <= value <= high:
        return value
    return None


def _text(value: object, limit: int = MAX_TEXT) -> str:
    if type(value) is not str:
        return ""
    cleaned = "".join(c if c.isprintable() else " " for c in value[: limit + 1])
    return _cut(cleaned, limit)


def _word(value: object, allowed: tuple[str, ...], default: str) -> str:
    return value if type(value) is str and value in allowed else default


def _list(value: object, limit: int) -> list[Any]:
    return value[:limit] if type(value) is list else []


def _dict(value: object) -> dict[str, Any]:
    return value if type(value) is dict else {}


@attrs.frozen
class CacheView:
    name: str
    entries: int
    hits: int
    misses: int
    stale: int
    factory_errors: int
    backplane_in: int
    backplane_out: int
    backlog: int
    l2: str
    """none, ok or open (the circuit breaker skips L2)."""

    @property
    def hit_ratio(self) -> float | None:
        reads = self.hits + self.misses
        return None if reads == 0 else self.hits / reads


@attrs.frozen
class RunView:
    run_id: str
    started_at: float | None
    ended_at: float | None
    outcome: str
    status: str

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.started_at)


@attrs.frozen
class RunningView:
    run_id: str
    started_at: float | None
    status: str
    done: int | None
    total: int | None


@attrs.frozen
class JobView:
    job_id: uuid.UUID
    name: str
    schedule: str
    stoppable: bool
    running: RunningView | None
    runs: tuple[RunView, ...]


@attrs.frozen
class EventsView:
    events_in: int = 0
    events_out: int = 0
    refused: int = 0
    gaps: int = 0
    reconnects: int = 0
    in_last_minute: int = 0
    out_last_minute: int = 0
    lag_p50: float | None = None
    lag_p99: float | None = None
    refused_last_minute: Mapping[str, int] = attrs.field(factory=dict)


@attrs.frozen
class InstanceSummary:
    """A peer's summary, checked (`parse_summary`)."""

    connection: str
    health: str
    reasons: tuple[str, ...]
    events: EventsView
    caches: tuple[CacheView, ...]
    jobs: tuple[JobView, ...]


def _parse_cache(raw: object) -> CacheView | None:
    fields = _dict(raw)
    name = _text(fields.get("name"), MAX_NAME)
    if not name:
        return None
    return CacheView(
        name,
        _count(fields.get("entries")),
        _count(fields.get("hits")),
        _count(fields.get("misses")),
        _count(fields.get("stale")),
        _count(fields.get("factory_errors")),
        _count(fields.get("bp_in")),
        _count(fields.get("bp_out")),
        _count(fields.get("backlog")),
        _word(fields.get("l2"), L2_WORDS, "none"),
    )


def _parse_run(raw: object) -> RunView | None:
    fields = _dict(raw)
    run_id = _text(fields.get("run"), 32)
    if not run_id:
        return None
    return RunView(
        run_id,
        _number(fields.get("started"), high=1e11),
        _number(fields.get("ended"), high=1e11),
        _word(fields.get("outcome"), OUTCOME_WORDS, "running"),
        _text(fields.get("status")),
    )


def _parse_running(raw: object) -> RunningView | None:
    fields = _dict(raw)
    run_id = _text(fields.get("run"), 32)
    if not run_id:
        return None
    return RunningView(
        run_id,
        _number(fields.get("started"), high=1e11),
        _text(fields.get("status")),
        _int(fields.get("done")),
        _int(fields.get("total")),
    )


def _parse_job(raw: object) -> JobView | None:
    fields = _dict(raw)
    try:
        job_id = uuid.UUID(_text(fields.get("id"), 36))
    except ValueError:
        return None
    runs = (_parse_run(r) for r in _list(fields.get("runs"), MAX_RUNS))
    return JobView(
        job_id,
        _text(fields.get("name"), MAX_NAME) or str(job_id),
        _text(fields.get("schedule"), MAX_NAME),
        fields.get("stoppable") is True,
        _parse_running(fields["running"]) if fields.get("running") is not None else None,
        tuple(r for r in runs if r is not None),
    )


def _parse_events(raw: object) -> EventsView:
    fields = _dict(raw)
    refused = {
        _text(cause, 40): _count(count)
        for cause, count in list(_dict(fields.get("refused_1m")).items())[:8]
        if _text(cause, 40)
    }
    return EventsView(
        _count(fields.get("in")),
        _count(fields.get("out")),
        _count(fields.get("refused")),
        _count(fields.get("gaps")),
        _count(fields.get("reconnects")),
        _count(fields.get("in_1m")),
        _count(fields.get("out_1m")),
        _number(fields.get("lag_p50"), high=1e6),
        _number(fields.get("lag_p99"), high=1e6),
        refused,
    )


def parse_summary(raw: object) -> InstanceSummary | None:
    """A peer's summary in the known shape, or None when it is not one (never raises).

    Whatever the peer sent: unknown fields are dropped, counts are ints from 0 to 2**53 (else
    0), texts are printable and cut to `MAX_TEXT`, lists to their limits, words (health,
    outcome, ...) one of the known ones.
    """
    try:
        fields = _dict(raw)
        if fields.get("v") != SUMMARY_VERSION or type(fields.get("v")) is not int:
            return None
        caches = (_parse_cache(c) for c in _list(fields.get("caches"), MAX_CACHES))
        jobs = (_parse_job(j) for j in _list(fields.get("jobs"), MAX_JOBS))
        return InstanceSummary(
            _word(fields.get("conn"), CONNECTION_WORDS, "disconnected"),
            _word(fields.get("health"), HEALTH_WORDS, "down"),
            tuple(_text(r) for r in _list(fields.get("reasons"), MAX_REASONS) if _text(r)),
            _parse_events(fields.get("events")),
            tuple(c for c in caches if c is not None),
            tuple(j for j in jobs if j is not None),
        )
    except Exception:  # a bug of ours must not break the page: the summary is left out
        return None


# ------------------------------------------------------------------------------ the page


@attrs.frozen
class InstanceRow:
    instance_id: str
    application_name: str
    site_id: str | None
    host: str | None
    started_at: float | None
    last_seen: float | None
    state: str
    """this (the instance serving the page), up, late (missed a heartbeat) or gone."""
    summary: InstanceSummary | None
    heartbeat_interval: float | None = None


@attrs.frozen
class RecentEvent:
    at: float
    event: str
    """The event's name when known, else its id."""
    source: str
    param: str | None
    """A JSON preview, cut to 200 characters; None when private."""


@attrs.frozen
class FarmState:
    """Everything the page shows, at `now`."""

    now: float
    application_name: str
    instances: tuple[InstanceRow, ...]
    flow: Flow
    jobs: tuple[tuple[JobView, tuple[str, ...], tuple[str, ...]], ...]
    """Each job with the instances that run it now (its lease holder) and those that schedule
    it."""
    recent: tuple[RecentEvent, ...]


def _state_of(info: InstanceInfo, now: float) -> str:
    interval = info.heartbeat_interval
    if interval and now - info.last_seen > 1.5 * interval:
        return "late"
    return "up"


def _param_preview(param: object) -> str:
    try:
        text = json.dumps(to_wire_param(param), ensure_ascii=False, separators=(", ", ": "))
    except Exception:
        text = f"<{type(param).__name__}>"
    return _cut(text, 200)


def known_event_names() -> dict[uuid.UUID, str]:
    """Names of the library's own events."""
    from cache.eventbroker_backplane import EVENT_ID as BACKPLANE

    names = {BACKPLANE: "cache backplane"}
    try:
        from jobs import RUN_JOB_EVENT_ID, STOP_JOB_EVENT_ID
    except ImportError:  # pragma: no cover - jobs ships with the library
        return names
    names[STOP_JOB_EVENT_ID] = "job stop request"
    names[RUN_JOB_EVENT_ID] = "job run request"
    return names


def farm_state(
    reporter: FarmReporter,
    *,
    now: float | None = None,
    event_names: Mapping[uuid.UUID, str] | None = None,
    private_events: Collection[uuid.UUID] = (),
    show_params: bool = True,
) -> FarmState:
    """The page's state: this instance (its summary fresh), every instance heard from (their
    last summary, checked), the flow, the jobs merged across instances, the recent events."""
    broker = reporter.broker
    now = time.time() if now is None else now
    me = broker.instance_info
    rows = [
        InstanceRow(
            me.instance_id,
            me.application_name,
            me.site_id,
            me.host,
            me.started_at,
            now,
            "this",
            parse_summary(reporter.summary()),
            me.heartbeat_interval,
        )
    ]
    for info in broker.instances:
        rows.append(
            InstanceRow(
                info.instance_id,
                info.application_name,
                info.site_id,
                info.host,
                info.started_at,
                info.last_seen,
                _state_of(info, now),
                parse_summary(info.summary),
                info.heartbeat_interval,
            )
        )
    for info, _since in reporter.gone(now):
        rows.append(
            InstanceRow(
                info.instance_id,
                info.application_name,
                info.site_id,
                info.host,
                info.started_at,
                info.last_seen,
                "gone",
                parse_summary(info.summary),
                info.heartbeat_interval,
            )
        )
    names = {**known_event_names(), **(event_names or {})}
    recent = tuple(
        RecentEvent(
            args.sent_at,
            names.get(args.event_id, str(args.event_id)),
            args.source_instance_id,
            _param_preview(args.param)
            if show_params and args.event_id not in private_events
            else None,
        )
        for args in reporter.recent_events()
    )
    return FarmState(
        now,
        broker.options.application_name,
        tuple(rows),
        broker.flow,
        _merge_jobs(rows),
        recent,
    )


def _merge_jobs(
    rows: Iterable[InstanceRow],
) -> tuple[tuple[JobView, tuple[str, ...], tuple[str, ...]], ...]:
    jobs: dict[uuid.UUID, JobView] = {}
    holders: dict[uuid.UUID, list[str]] = {}
    schedulers: dict[uuid.UUID, list[str]] = {}
    runs: dict[uuid.UUID, dict[str, RunView]] = {}
    for row in rows:
        if row.summary is None or row.state == "gone":
            continue
        for job in row.summary.jobs:
            jobs.setdefault(job.job_id, job)
            schedulers.setdefault(job.job_id, []).append(row.instance_id)
            if job.running is not None:
                holders.setdefault(job.job_id, []).append(row.instance_id)
                jobs[job.job_id] = job  # the running copy's view wins
            for run in job.runs:
                runs.setdefault(job.job_id, {})[run.run_id] = run
    merged = []
    for job_id, job in jobs.items():
        last = sorted(runs.get(job_id, {}).values(), key=lambda r: r.started_at or 0.0)
        merged.append(
            (
                attrs.evolve(job, runs=tuple(reversed(last[-5:]))),
                tuple(holders.get(job_id, ())),
                tuple(schedulers.get(job_id, ())),
            )
        )
    merged.sort(key=lambda item: item[0].name)
    return tuple(merged)


# ------------------------------------------------------------------------------ the buttons


def request_run(reporter: FarmReporter, job_id: uuid.UUID) -> str:
    """Run a job now: through this instance's scheduler when it has the job, else by asking
    every scheduler of the farm through the broker. Returns what was done, in words."""
    from jobs import RUN_JOB_EVENT_ID, JobScheduler, RunJobRequest

    return _request(
        reporter,
        job_id,
        JobScheduler.run_now,
        "run requested on this instance",
        RUN_JOB_EVENT_ID,
        RunJobRequest,
        "run requested from the instances that schedule it",
    )


def request_stop(reporter: FarmReporter, job_id: uuid.UUID) -> str:
    """Ask the running copy of a job to stop, wherever it runs (through the broker)."""
    from jobs import STOP_JOB_EVENT_ID, JobScheduler, StopJobRequest

    return _request(
        reporter,
        job_id,
        JobScheduler.request_stop,
        "stop requested",
        STOP_JOB_EVENT_ID,
        StopJobRequest,
        "stop requested from the instance running it",
    )


def _request(
    reporter: FarmReporter,
    job_id: uuid.UUID,
    here: Callable[[JobScheduler, uuid.UUID], object],
    done_here: str,
    event_id: uuid.UUID,
    request_type: type[RunJobRequest] | type[StopJobRequest],
    done_by_farm: str,
) -> str:
    """`here` on this instance's scheduler when it has the job, else the request to the farm."""
    from jobs import JOBS_RAISER_ID

    scheduler = reporter.scheduler
    if scheduler is not None and job_id in scheduler.jobs:
        here(scheduler, job_id)
        return done_here
    event = reporter.registry.get(event_id, param_type=request_type)
    event.raise_(
        JOBS_RAISER_ID,
        request_type(job_id=str(job_id), requested_by=reporter.broker.instance_id),
        EventRaiseOption.RAISE_BROADCAST,
    )
    return done_by_farm
