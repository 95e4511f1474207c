"""`JobScheduler.health()`: DOWN when it does not run, DEGRADED with reasons an operator can act on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from jobs import (
    Health,
    HealthStatus,
    JobOutcome,
    JobRun,
    JobScheduler,
    JobStoreError,
    ManualClock,
    SchedulerOptions,
    SqliteJobStore,
)

from ._jobs_helpers import BlockingJob, CountingJob, Outage, failing

T0 = 1_772_000_000.0  # 2026-02-25 06:13:20 UTC


def make(store: object, job: object, clock: ManualClock, name: str = "a") -> JobScheduler:
    return JobScheduler(
        [job],  # type: ignore[list-item]
        store=store,  # type: ignore[arg-type]
        clock=clock,
        options=SchedulerOptions(instance_id=name, lease_seconds=30, poll_interval=0.05),
    )


def trouble(s: JobScheduler) -> list[str]:
    """What `health()` reports besides "not started" (these tests poll by hand)."""
    return [r for r in s.health().reasons if "not started" not in r]


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_down_until_started_ok_while_running_down_once_stopped(tmp_path: Path) -> None:
    s = make(SqliteJobStore(tmp_path / "j.sqlite3"), CountingJob(None), ManualClock(T0))
    health = s.health()
    assert isinstance(health, Health) and health.status is HealthStatus.DOWN
    assert health.reasons == (
        "the scheduler is not started: call start() (or use it in a with block) so that due "
        "jobs run on this instance",
    )
    assert health.component == "job scheduler 'a'"
    s.start()
    assert s.health() == Health(HealthStatus.OK, (), "job scheduler 'a'")
    s.stop()
    assert s.health().status is HealthStatus.DOWN
    assert s.health().reasons == ("the scheduler is stopped: no job runs on this instance",)


class Doomed(BaseException):
    """Not an Exception: escapes the poll loop's error handling, like a bug would."""


class DyingClock(ManualClock):
    def __init__(self) -> None:
        super().__init__(T0)
        self.die = False

    def now(self) -> float:
        if self.die and threading.current_thread().name.startswith("JobScheduler["):
            self.die = False
            raise Doomed("clock exploded")
        return super().now()


def test_down_when_the_polling_thread_died(tmp_path: Path) -> None:
    clock = DyingClock()
    s = make(SqliteJobStore(tmp_path / "j.sqlite3"), CountingJob(None), clock)
    s.start()
    clock.die = True
    assert wait_for(lambda: s.health().status is HealthStatus.DOWN)
    [reason] = s.health().reasons
    assert reason.startswith("the scheduler's polling thread died at ")
    assert "Doomed: clock exploded" in reason and "restart the instance" in reason
    s.start()  # a dead thread can be replaced
    assert s.health().is_ok
    s.stop()


def test_degraded_while_the_store_fails_without_naming_its_password(tmp_path: Path) -> None:
    clock, outage = ManualClock(T0), Outage()
    s = make(failing(SqliteJobStore(tmp_path / "j.sqlite3"), outage), CountingJob(None), clock)
    outage.down = True
    clock.advance(1)
    with pytest.raises(JobStoreError):
        s.run_pending()
    clock.advance(60)
    with pytest.raises(JobStoreError):
        s.run_pending()
    [reason] = trouble(s)
    assert reason.startswith("the job store FailingStore(SqliteJobStore(")
    assert "has failed since 2026-02-25 06:13:21 UTC (2 failed call(s)" in reason
    assert "last error: JobStoreError: connection to postgresql://app:***@db:5432/app" in reason
    assert Outage.SECRET not in str(s.health())
    assert "check that the database is up" in reason
    outage.down = False
    s.run_pending()
    assert trouble(s) == []
    s.start()
    assert s.health().is_ok
    s.stop()


def test_degraded_when_a_lease_was_lost_while_the_job_ran(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    job_a, job_b = BlockingJob(), BlockingJob()
    job_b.release.set()
    a = make(SqliteJobStore(tmp_path / "farm.sqlite3"), job_a, clock, "a")
    b = make(SqliteJobStore(tmp_path / "farm.sqlite3"), job_b, clock, "b")
    finished: list[JobRun] = []
    done = threading.Event()
    a.on_finished(lambda run: (finished.append(run), done.set()))
    a.run_now(BlockingJob.id)
    a.run_pending(wait=False)
    assert job_a.started.wait(10)
    clock.advance(31)  # a froze for longer than its lease: b reaps it
    assert b.run_pending() == []
    a.run_pending(wait=False)  # a wakes up: its renewal fails
    assert done.wait(10), "the job was not asked to stop"
    assert finished[0].outcome is JobOutcome.STOPPED
    assert trouble(a) == [
        "lease of job 'Blocking' lost at 2026-02-25 06:13:51 UTC (run "
        f"{finished[0].run_id}): the run was asked to stop and the job may have run on another "
        "instance too; check this instance's clock and its link to the store"
    ]
    clock.advance(3600)
    assert trouble(a) == []  # an hour later: forgotten


def test_degraded_while_the_end_of_a_run_waits_to_be_recorded(tmp_path: Path) -> None:
    clock, outage = ManualClock(T0), Outage()
    job = CountingJob(None)
    s = make(failing(SqliteJobStore(tmp_path / "j.sqlite3"), outage), job, clock)
    s.run_now(job.id)
    outage.down, outage.only = True, {"record_end", "release"}
    [run] = s.run_pending()
    health = s.health()
    assert health.status is HealthStatus.DOWN  # not started; the other reasons still show
    pending = [r for r in health.reasons if "not recorded yet" in r]
    assert pending == [
        f"the end of run {run.run_id} of job 'Counting' (succeeded) is not recorded yet: 1 "
        "attempt(s) failed since 2026-02-25 06:13:20 UTC (last error: JobStoreError: "
        "connection to postgresql://app:***@db:5432/app failed: Connection refused); retrying "
        "at 2026-02-25 06:13:21 UTC; its lease is kept meanwhile"
    ]
    outage.down = False
    clock.advance(1)
    s.run_pending()
    assert trouble(s) == []
    assert s.history(job.id)[0].outcome is JobOutcome.SUCCEEDED
