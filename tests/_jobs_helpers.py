"""Jobs, stores and store doubles used by the scheduler tests."""

from __future__ import annotations

import collections
import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from jobs import JobContext, JobStore, JobStoreError, Schedule, ScheduledJob, SqliteJobStore


class CountingJob(ScheduledJob):
    """Counts its runs; returns a status message naming the count."""

    id = uuid.UUID("0a2b9c1e-0000-4000-8000-000000000001")
    name = "Counting"

    def __init__(self, schedule: Schedule | None, *, restartable: bool = False) -> None:
        self.schedule = schedule
        self.restartable = restartable
        self.runs = 0
        self._lock = threading.Lock()

    def execute(self, ctx: JobContext) -> str:
        with self._lock:
            self.runs += 1
            return f"run {self.runs}"


class BlockingJob(ScheduledJob):
    """Runs until released or asked to stop (a stoppable long import)."""

    id = uuid.UUID("0a2b9c1e-0000-4000-8000-000000000002")
    name = "Blocking"
    stoppable = True

    def __init__(self) -> None:
        self.schedule = None
        self.started = threading.Event()
        self.release = threading.Event()
        self.runs = 0

    def execute(self, ctx: JobContext) -> str:
        self.runs += 1
        self.started.set()
        done = 0
        while not self.release.wait(0.01):
            if ctx.stop_requested:
                return f"stopped after {done} batches"
            done += 1
        return "finished"


PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def store_factory(kind: str, tmp_path: Path) -> Iterator[Callable[[], JobStore]]:
    """Opens independent connections to one store (as separate instances would): a SQLite
    file in `tmp_path`, or a fresh schema on the local PostgreSQL (dropped afterwards)."""
    opened: list[JobStore] = []
    if kind == "sqlite":

        def factory() -> JobStore:
            opened.append(SqliteJobStore(tmp_path / "farm.sqlite3"))
            return opened[-1]

        yield factory
    else:
        import psycopg

        from jobs import PostgresJobStore

        schema = f"jobs_test_{uuid.uuid4().hex[:10]}"
        try:
            psycopg.connect(PG_URL, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: {exc} (run scripts/services.sh)")

        def pg_factory() -> JobStore:
            opened.append(PostgresJobStore(PG_URL, schema=schema))
            return opened[-1]

        yield pg_factory
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    for store in opened:
        store.close()


class Outage:
    """A switch shared by `FailingStore`s: while `down`, the store cannot be reached.

    `only` limits the outage to some operations (e.g. ``{"record_end"}``); `failures` counts
    the calls refused, by operation.
    """

    SECRET = "s3cret-pw"

    def __init__(self) -> None:
        self.down = False
        self.only: set[str] | None = None
        self.failures: collections.Counter[str] = collections.Counter()

    def check(self, operation: str) -> None:
        if self.down and (self.only is None or operation in self.only):
            self.failures[operation] += 1
            raise JobStoreError(
                f"connection to postgresql://app:{self.SECRET}@db:5432/app failed: "
                "Connection refused"
            )


class FailingStore:
    """The real store behind an `Outage` switch: a store that is down, which cannot be
    produced cheaply with a real server shared by parallel tests."""

    def __init__(self, store: JobStore, outage: Outage) -> None:
        self.store = store
        self.outage = outage

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not callable(attr) or name == "close":
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.outage.check(name)
            return attr(*args, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"FailingStore({self.store!r})"


def failing(store: JobStore, outage: Outage) -> JobStore:
    return cast(JobStore, FailingStore(store, outage))
