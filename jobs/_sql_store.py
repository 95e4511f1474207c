"""The SQL behind both stores: one set of statements, two drivers (sqlite3 and psycopg)."""

from __future__ import annotations

import abc
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ._errors import JobsError, JobStoreError, UnknownJobError
from ._job import JobOutcome, JobRun, JobTrigger
from ._store import AbortedRun, JobState
from ._text import redact, storable_text

log = logging.getLogger(__name__)
T = TypeVar("T")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")

# {s}: schedule table, {h}: history table. Placeholders are :name (translated per driver).
_DDL = (
    """CREATE TABLE IF NOT EXISTS {s} (
        job_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        restartable INTEGER NOT NULL,
        schedule_key TEXT NOT NULL,
        next_run_at DOUBLE PRECISION,
        run_requested TEXT,
        lease_holder TEXT,
        lease_run_id TEXT,
        lease_expires_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS {h} (
        run_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        run_trigger TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION,
        outcome TEXT NOT NULL,
        status_message TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {h}_by_job ON {h} (job_id, started_at)",
)

_STATE_COLUMNS = (
    "job_id, name, restartable, next_run_at, run_requested, lease_holder, lease_run_id, "
    "lease_expires_at"
)
_RUN_COLUMNS = (
    "run_id, job_id, instance_id, run_trigger, started_at, ended_at, outcome, status_message"
)


def check_identifier(what: str, value: str) -> str:
    """Table names and prefixes go into SQL text: allow letters, digits and underscores only."""
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a plain SQL identifier; use letters, digits and '_' "
            "(starting with a letter or '_', at most 41 characters)"
        )
    return value


def _time(value: Any, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{value!r:.40} is not a time in seconds")
    return float(value)


def _text(value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if type(value) is not str:
        raise ValueError(f"{value!r:.40} is not text")
    return value


def _state(row: Sequence[Any]) -> JobState:
    return JobState(
        job_id=uuid.UUID(_text(row[0])),
        name=_text(row[1]),  # type: ignore[arg-type]
        restartable=bool(row[2]),
        next_run_at=_time(row[3]),
        run_requested=None if row[4] is None else JobTrigger(row[4]),
        lease_holder=_text(row[5], optional=True),
        lease_run_id=_text(row[6], optional=True),
        lease_expires_at=_time(row[7]),
    )


def _run(row: Sequence[Any]) -> JobRun:
    return JobRun(
        run_id=_text(row[0]),  # type: ignore[arg-type]
        job_id=uuid.UUID(_text(row[1])),
        instance_id=_text(row[2]),  # type: ignore[arg-type]
        trigger=JobTrigger(row[3]),
        started_at=_time(row[4], optional=False),  # type: ignore[arg-type]
        ended_at=_time(row[5]),
        outcome=JobOutcome(row[6]),
        status_message=_text(row[7]),  # type: ignore[arg-type]
    )


_UNREADABLE = (ValueError, TypeError, IndexError, AttributeError)
_unreadable_logged: dict[str, float] = {}


def _readable(
    rows: list[tuple[Any, ...]], parse: Callable[[Sequence[Any]], T], what: str
) -> list[T]:
    """Parse rows read from the store (hostile: edited by hand, written by a newer release);
    an unreadable row is skipped and logged once per minute, never an exception."""
    parsed: list[T] = []
    for row in rows:
        try:
            parsed.append(parse(row))
        except _UNREADABLE as exc:
            now = time.monotonic()
            if now >= _unreadable_logged.get(what, 0.0):
                _unreadable_logged[what] = now + 60.0
                log.warning("skipped an unreadable %s row in the job store: %s", what, exc)
    return parsed


class SqlJobStore(abc.ABC):
    """A `JobStore` over one DB-API connection, serialised by a lock (calls are short).

    Every text parameter goes through `storable_text` (NUL removed, length capped) and every
    driver error comes out as `JobStoreError`.
    """

    _driver_errors: tuple[type[Exception], ...] = ()
    """The driver's error classes, wrapped in `JobStoreError`."""

    def __init__(self, schedule_table: str, history_table: str) -> None:
        self._s = schedule_table
        self._h = history_table
        self._lock = threading.Lock()

    @abc.abstractmethod
    def _execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement in autocommit; return (rows, rowcount). Caller holds the lock."""

    def _q(self, sql: str, **params: Any) -> tuple[list[tuple[Any, ...]], int]:
        clean = {k: storable_text(v) if isinstance(v, str) else v for k, v in params.items()}
        with self._lock:
            try:
                return self._execute(sql.format(s=self._s, h=self._h), clean)
            except JobsError:
                raise
            except self._driver_errors as exc:
                raise JobStoreError(redact(f"{self!r}: {type(exc).__name__}: {exc}")) from exc

    def _create_schema(self) -> None:
        for ddl in _DDL:
            self._q(ddl)

    def register(
        self,
        job_id: uuid.UUID,
        *,
        name: str,
        restartable: bool,
        schedule_key: str,
        next_run_at: float | None,
    ) -> None:
        self._q(
            "INSERT INTO {s} (job_id, name, restartable, schedule_key, next_run_at) "
            "VALUES (:id, :name, :restartable, :key, :next) "
            "ON CONFLICT (job_id) DO UPDATE SET name = excluded.name, "
            "restartable = excluded.restartable, "
            "next_run_at = CASE WHEN {s}.schedule_key = excluded.schedule_key "
            "THEN {s}.next_run_at ELSE excluded.next_run_at END, "
            "schedule_key = excluded.schedule_key",
            id=str(job_id),
            name=name,
            restartable=int(restartable),
            key=schedule_key,
            next=next_run_at,
        )

    def states(self) -> list[JobState]:
        rows, _ = self._q(f"SELECT {_STATE_COLUMNS} FROM {{s}} ORDER BY job_id")
        return _readable(rows, _state, "job")

    def state(self, job_id: uuid.UUID) -> JobState:
        rows, _ = self._q(f"SELECT {_STATE_COLUMNS} FROM {{s}} WHERE job_id = :id", id=str(job_id))
        if not rows:
            raise UnknownJobError(f"job {job_id} is not registered in the job store")
        states = _readable(rows, _state, "job")
        if not states:
            raise JobStoreError(f"the job store's row for job {job_id} is unreadable")
        return states[0]

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
        # Compare-and-set: the lease must be free and the fact that made the job due (its
        # schedule slot or its pending request) must be unchanged, so a run happens once.
        if trigger is JobTrigger.SCHEDULED:
            guard, guard_value = "next_run_at = :guard", seen.next_run_at
            clear = "run_requested"
        else:
            guard, guard_value = "run_requested = :guard", trigger.value
            clear = "NULL"
        _, count = self._q(
            "UPDATE {s} SET lease_holder = :holder, lease_run_id = :run, "
            f"lease_expires_at = :until, next_run_at = :next, run_requested = {clear} "
            f"WHERE job_id = :id AND lease_holder IS NULL AND {guard}",
            holder=instance_id,
            run=run_id,
            until=lease_until,
            next=next_run_at,
            id=str(seen.job_id),
            guard=guard_value,
        )
        return count == 1

    def renew(self, job_id: uuid.UUID, run_id: str, lease_until: float) -> bool:
        _, count = self._q(
            "UPDATE {s} SET lease_expires_at = :until WHERE job_id = :id AND lease_run_id = :run",
            until=lease_until,
            id=str(job_id),
            run=run_id,
        )
        return count == 1

    def release(self, job_id: uuid.UUID, run_id: str) -> None:
        self._q(
            "UPDATE {s} SET lease_holder = NULL, lease_run_id = NULL, lease_expires_at = NULL "
            "WHERE job_id = :id AND lease_run_id = :run",
            id=str(job_id),
            run=run_id,
        )

    def reap_expired(self, now: float) -> list[AbortedRun]:
        rows, _ = self._q(
            "SELECT job_id, lease_run_id, lease_holder, restartable, lease_expires_at FROM {s} "
            "WHERE lease_holder IS NOT NULL AND lease_expires_at < :now",
            now=now,
        )
        aborted: list[AbortedRun] = []
        for job_id, run_id, holder, restartable, expired_at in rows:
            try:
                parsed_id = uuid.UUID(_text(job_id))
            except _UNREADABLE:
                continue  # an unreadable row: states() says so
            _, count = self._q(
                "UPDATE {s} SET lease_holder = NULL, lease_run_id = NULL, "
                "lease_expires_at = NULL, run_requested = CASE WHEN restartable = 1 "
                "THEN :restart ELSE run_requested END "
                "WHERE job_id = :id AND lease_run_id = :run",
                restart=JobTrigger.RESTART.value,
                id=job_id,
                run=run_id,
            )
            if count != 1:
                continue  # another scheduler reaped it first
            self._q(
                "UPDATE {h} SET outcome = :aborted, ended_at = :ended, status_message = :msg "
                "WHERE run_id = :run AND outcome = :running",
                aborted=JobOutcome.ABORTED.value,
                ended=expired_at,
                msg=f"aborted: instance {holder} stopped renewing its lease",
                run=run_id,
                running=JobOutcome.RUNNING.value,
            )
            aborted.append(
                AbortedRun(
                    job_id=parsed_id,
                    run_id=run_id,
                    holder=holder,
                    restart_requested=bool(restartable),
                )
            )
        return aborted

    def request_run(self, job_id: uuid.UUID, trigger: JobTrigger) -> None:
        _, count = self._q(
            "UPDATE {s} SET run_requested = :trigger WHERE job_id = :id",
            trigger=trigger.value,
            id=str(job_id),
        )
        if count != 1:
            raise UnknownJobError(f"job {job_id} is not registered in the job store")

    def record_start(self, run: JobRun) -> None:
        self._q(
            f"INSERT INTO {{h}} ({_RUN_COLUMNS}) VALUES "
            "(:run, :job, :instance, :trigger, :started, :ended, :outcome, :msg)",
            run=run.run_id,
            job=str(run.job_id),
            instance=run.instance_id,
            trigger=run.trigger.value,
            started=run.started_at,
            ended=run.ended_at,
            outcome=run.outcome.value,
            msg=run.status_message,
        )

    def record_end(
        self, run_id: str, *, ended_at: float, outcome: JobOutcome, status_message: str
    ) -> None:
        self._q(
            "UPDATE {h} SET ended_at = :ended, outcome = :outcome, status_message = :msg "
            "WHERE run_id = :run AND outcome = :running",
            ended=ended_at,
            outcome=outcome.value,
            msg=status_message,
            run=run_id,
            running=JobOutcome.RUNNING.value,
        )

    def history(self, job_id: uuid.UUID, limit: int = 50) -> list[JobRun]:
        rows, _ = self._q(
            f"SELECT {_RUN_COLUMNS} FROM {{h}} WHERE job_id = :id "
            "ORDER BY started_at DESC, run_id DESC LIMIT :limit",
            id=str(job_id),
            limit=int(limit),
        )
        return _readable(rows, _run, "history")
