"""A run that ended is recorded once and never runs again: odd text, store outages, give-ups."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobs import (
    MAX_TEXT_LENGTH,
    JobContext,
    JobOutcome,
    JobRun,
    JobScheduler,
    JobStore,
    JobStoreError,
    ManualClock,
    ScheduledJob,
    SchedulerOptions,
    SqliteJobStore,
)
from jobs._scheduler import RECORD_ATTEMPTS
from jobs._sql_store import check_identifier
from jobs._text import TRUNCATION_MARK, storable_text

from ._jobs_helpers import BlockingJob, Outage, failing
from ._jobs_helpers import store_factory as open_store_factory

T0 = 1_772_000_000.0
LEASE = 30.0

StoreFactory = Callable[[], JobStore]


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    with open_store_factory(request.param, tmp_path) as factory:
        yield factory


class Returns(ScheduledJob):
    """A restartable manual job that returns (or raises) a given text."""

    id = uuid.UUID("0a2b9c1e-0000-4000-8000-0000000000c1")
    restartable = True

    def __init__(self, text: str, *, name: str = "Returns", fail: bool = False) -> None:
        self.text = text
        self.name = name
        self.fail = fail
        self.runs = 0

    def execute(self, ctx: JobContext) -> str:
        self.runs += 1
        ctx.report_status(self.text)
        if self.fail:
            raise RuntimeError(self.text)
        return self.text


def make(store: JobStore, job: ScheduledJob, clock: ManualClock, name: str = "a") -> JobScheduler:
    return JobScheduler(
        [job],
        store=store,
        clock=clock,
        options=SchedulerOptions(instance_id=name, lease_seconds=LEASE, shutdown_timeout=5),
    )


def trouble(s: JobScheduler) -> list[str]:
    """What `health()` reports besides "not started" (these tests poll by hand)."""
    return [r for r in s.health().reasons if "not started" not in r]


def no_run_for_a_while(*schedulers: JobScheduler, clock: ManualClock, seconds: float) -> None:
    """Poll every scheduler every 5 s for `seconds`: nothing may start."""
    for _ in range(int(seconds // 5)):
        clock.advance(5)
        for s in schedulers:
            assert s.run_pending() == [], f"{s.instance_id} ran the job again"


def test_status_text_with_nul_is_stored_and_the_run_is_not_repeated(
    store_factory: StoreFactory,
) -> None:
    # the bug: PostgreSQL refused the NUL, the lease was never released, and the restartable
    # job ran again every lease period
    clock = ManualClock(T0)
    job = Returns("imported\x00 3 rows")
    s = make(store_factory(), job, clock)
    s.run_now(job.id)
    [run] = s.run_pending()
    no_run_for_a_while(s, clock=clock, seconds=3 * LEASE)
    assert (run.outcome, run.status_message) == (JobOutcome.SUCCEEDED, "imported 3 rows")
    assert s.store.state(job.id).lease_holder is None
    [recorded] = s.history(job.id)
    assert (recorded.outcome, recorded.status_message) == (JobOutcome.SUCCEEDED, "imported 3 rows")
    assert job.runs == 1


def test_job_name_with_nul_is_stored(store_factory: StoreFactory) -> None:
    s = make(store_factory(), Returns("ok", name="Price\x00 import"), ManualClock(T0))
    assert [state.name for state in s.store.states()] == ["Price import"]


def test_failure_text_with_nul_and_lone_surrogates_is_stored(store_factory: StoreFactory) -> None:
    clock = ManualClock(T0)
    job = Returns("feed \ud800down\x00", fail=True)
    s = make(store_factory(), job, clock)
    s.run_now(job.id)
    [run] = s.run_pending()
    assert (run.outcome, run.status_message) == (JobOutcome.FAILED, "RuntimeError: feed \ufffddown")
    assert s.history(job.id) == [run]
    no_run_for_a_while(s, clock=clock, seconds=2 * LEASE)


def test_long_status_text_is_capped(store_factory: StoreFactory) -> None:
    clock = ManualClock(T0)
    job = Returns("é" * (3 * MAX_TEXT_LENGTH))
    s = make(store_factory(), job, clock)
    s.run_now(job.id)
    [run] = s.run_pending()
    [recorded] = s.history(job.id)
    assert recorded.status_message == run.status_message
    assert len(recorded.status_message) == MAX_TEXT_LENGTH
    assert recorded.status_message.endswith(TRUNCATION_MARK)
    assert recorded.status_message.startswith("é" * 100)


def test_storable_text_is_idempotent_and_bounded() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    @given(st.text(), st.integers(min_value=len(TRUNCATION_MARK), max_value=200))
    def check(text: str, limit: int) -> None:
        once = storable_text(text, limit)
        assert storable_text(once, limit) == once
        assert len(once) <= limit and "\x00" not in once
        once.encode("utf-8")  # no lone surrogate left
        if len(text) <= limit and "\x00" not in text:
            assert len(once) == len(text)

    check()


def test_lease_is_released_when_recording_the_end_fails_and_the_record_is_retried(
    tmp_path: Path,
) -> None:
    clock, outage = ManualClock(T0), Outage()
    job = Returns("done")
    s = make(failing(SqliteJobStore(tmp_path / "j.sqlite3"), outage), job, clock)
    outage.down, outage.only = True, {"record_end"}
    s.run_now(job.id)
    [run] = s.run_pending()
    assert run.outcome is JobOutcome.SUCCEEDED
    assert s.store.state(job.id).lease_holder is None  # released although the record failed
    assert outage.failures["record_end"] == 1
    no_run_for_a_while(s, clock=clock, seconds=2 * LEASE)  # retries with backoff meanwhile
    assert outage.failures["record_end"] > 1
    assert s.history(job.id)[0].outcome is JobOutcome.RUNNING
    outage.down = False
    no_run_for_a_while(s, clock=clock, seconds=LEASE)
    [recorded] = s.history(job.id)
    assert (recorded.outcome, recorded.status_message) == (JobOutcome.SUCCEEDED, "done")
    assert recorded.ended_at == T0
    assert job.runs == 1


def test_a_record_that_keeps_failing_is_given_up_after_bounded_attempts(tmp_path: Path) -> None:
    clock, outage = ManualClock(T0), Outage()
    job = Returns("done")
    s = make(failing(SqliteJobStore(tmp_path / "j.sqlite3"), outage), job, clock)
    outage.down, outage.only = True, {"record_end"}
    s.run_now(job.id)
    s.run_pending()
    no_run_for_a_while(s, clock=clock, seconds=20 * LEASE)
    assert outage.failures["record_end"] == RECORD_ATTEMPTS
    assert trouble(s) == []  # nothing left pending: the log keeps the lost record
    assert job.runs == 1


@pytest.mark.parametrize("first_poll_after_outage", ["holder", "other"])
def test_store_outage_while_a_job_runs_does_not_run_it_again(
    tmp_path: Path, first_poll_after_outage: str
) -> None:
    clock, outage = ManualClock(T0), Outage()
    job_a, job_b = BlockingJob(), BlockingJob()
    job_a.restartable = job_b.restartable = True
    job_b.release.set()  # should b ever run it, it finishes at once (and the test fails)
    a = make(failing(SqliteJobStore(tmp_path / "farm.sqlite3"), outage), job_a, clock, "a")
    b = make(failing(SqliteJobStore(tmp_path / "farm.sqlite3"), outage), job_b, clock, "b")
    finished: list[JobRun] = []
    done = threading.Event()
    a.on_finished(lambda run: (finished.append(run), done.set()))
    a.run_now(BlockingJob.id)
    a.run_pending(wait=False)
    assert job_a.started.wait(10)

    outage.down = True  # the database goes away while the job runs
    for _ in range(3):
        clock.advance(5)
        for s in (a, b):
            with pytest.raises(JobStoreError):
                s.run_pending()
    job_a.release.set()  # the job succeeds during the outage: its end cannot be recorded
    assert done.wait(10)
    assert finished[0].outcome is JobOutcome.SUCCEEDED
    for _ in range(int(3 * LEASE // 5)):  # longer than the lease
        clock.advance(5)
        for s in (a, b):
            with pytest.raises(JobStoreError):
                s.run_pending()

    outage.down = False
    order = (a, b) if first_poll_after_outage == "holder" else (b, a)
    for s in order:
        assert s.run_pending() == []
    no_run_for_a_while(*order, clock=clock, seconds=3 * LEASE)

    [run] = a.history(BlockingJob.id)
    assert (run.outcome, run.instance_id, run.status_message) == (
        JobOutcome.SUCCEEDED,
        "a",
        "finished",
    )
    assert (job_a.runs, job_b.runs) == (1, 0)
    assert a.store.state(BlockingJob.id).lease_holder is None
    assert trouble(a) == trouble(b) == []


def test_stop_records_a_pending_end_once_the_store_is_back(tmp_path: Path) -> None:
    clock, outage = ManualClock(T0), Outage()
    job = Returns("done")
    store = SqliteJobStore(tmp_path / "j.sqlite3")
    s = make(failing(store, outage), job, clock)
    s.run_now(job.id)
    outage.down, outage.only = True, {"record_end", "release"}
    s.run_pending()
    assert store.state(job.id).lease_holder == "a"  # kept: the job must not run elsewhere
    outage.down = False
    s.stop()
    assert store.state(job.id).lease_holder is None
    assert store.history(job.id)[0].outcome is JobOutcome.SUCCEEDED


@pytest.mark.parametrize("bad", ["jobs_\n", "jobs;", "1jobs", "", "a" * 42, "jobs_\x00"])
def test_table_prefix_must_be_a_plain_identifier(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        check_identifier("table_prefix", bad)
    with pytest.raises(ValueError, match="table_prefix"):
        SqliteJobStore(tmp_path / "j.sqlite3", table_prefix=bad)
    assert check_identifier("table_prefix", "jobs_v2_") == "jobs_v2_"


def test_postgres_schema_must_be_a_plain_identifier() -> None:
    from jobs import PostgresJobStore

    with pytest.raises(ValueError, match="schema 'public\\\\n'"):
        PostgresJobStore("postgresql://postgres@127.0.0.1:5432/test", schema="public\n")


def test_stop_while_the_store_is_down_logs_the_unrecorded_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, outage = ManualClock(T0), Outage()
    job = Returns("done")
    store = SqliteJobStore(tmp_path / "j.sqlite3")
    s = JobScheduler(
        [job],
        store=failing(store, outage),
        clock=clock,
        options=SchedulerOptions(instance_id="a", shutdown_timeout=0.05),
    )
    s.run_now(job.id)
    outage.down, outage.only = True, {"record_end", "release"}
    [run] = s.run_pending()
    s.stop()
    [line] = [r.getMessage() for r in caplog.records if "stopped before the end" in r.message]
    assert f"run {run.run_id}" in line and "It ended succeeded: done" in line
    assert "Its lease will lapse" in line and "run the job again (restartable)" in line
    assert Outage.SECRET not in caplog.text
    assert store.state(job.id).lease_holder == "a"  # nothing more can be done: it lapses
