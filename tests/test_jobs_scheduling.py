"""Scheduling with an injected clock: interval, cron, missed runs, restart after a crash."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from jobs import (
    Cron,
    Interval,
    JobContext,
    JobOutcome,
    JobProgress,
    JobRun,
    JobScheduler,
    JobStore,
    JobTrigger,
    ManualClock,
    ScheduledJob,
    SchedulerOptions,
    SqliteJobStore,
)

from ._jobs_helpers import CountingJob

T0 = dt.datetime(2026, 3, 2, 10, 0, 30, tzinfo=dt.UTC).timestamp()


def make(
    tmp_path: Path, job: ScheduledJob, clock: ManualClock, name: str = "a", **opts: float
) -> JobScheduler:
    return JobScheduler(
        [job],
        store=SqliteJobStore(tmp_path / "jobs.sqlite3"),
        clock=clock,
        options=SchedulerOptions(instance_id=name, **opts),
    )


def test_interval_job_runs_when_due_and_records_history(tmp_path: Path) -> None:
    clock, job = ManualClock(T0), CountingJob(Interval(60))
    s = make(tmp_path, job, clock)
    assert s.run_pending() == []  # first slot is one interval after registration
    clock.advance(59)
    assert s.run_pending() == []
    clock.advance(1)
    [run] = s.run_pending()
    assert (run.outcome, run.status_message, run.trigger) == (
        JobOutcome.SUCCEEDED,
        "run 1",
        JobTrigger.SCHEDULED,
    )
    assert s.run_pending() == []  # not due again until the next slot
    clock.advance(60)
    assert [r.status_message for r in s.run_pending()] == ["run 2"]
    history = s.history(job.id)
    assert [h.status_message for h in history] == ["run 2", "run 1"]
    assert history[0].instance_id == "a" and history[0].duration == 0.0
    assert history[1].started_at == T0 + 60


def test_cron_job_runs_on_its_slots(tmp_path: Path) -> None:
    clock, job = ManualClock(T0), CountingJob(Cron("*/15 * * * *"))  # T0 is 10:00:30
    s = make(tmp_path, job, clock)
    clock.set(dt.datetime(2026, 3, 2, 10, 14, 59, tzinfo=dt.UTC).timestamp())
    assert s.run_pending() == []
    clock.set(dt.datetime(2026, 3, 2, 10, 15, 0, tzinfo=dt.UTC).timestamp())
    assert len(s.run_pending()) == 1
    clock.advance(14 * 60)
    assert s.run_pending() == []
    clock.advance(60)
    assert len(s.run_pending()) == 1
    assert job.runs == 2


def test_missed_slots_run_once_at_start_then_schedule_resumes(tmp_path: Path) -> None:
    clock, job = ManualClock(T0), CountingJob(Interval(60))
    make(tmp_path, job, clock).store.close()  # registered, then every instance went down
    clock.advance(10 * 60 + 5)  # ten slots missed
    s = make(tmp_path, CountingJob(Interval(60)), clock, name="b")
    assert len(s.run_pending()) == 1  # one catch-up run, not ten
    assert s.run_pending() == []
    clock.advance(59)  # the next slot is one interval after the catch-up run
    assert s.run_pending() == []
    clock.advance(1)
    assert len(s.run_pending()) == 1


def test_changed_schedule_is_rescheduled(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    make(tmp_path, CountingJob(Interval(3600)), clock).store.close()
    s = make(tmp_path, CountingJob(Interval(60)), clock)
    clock.advance(60)
    assert len(s.run_pending()) == 1


def crash_mid_run(store: JobStore, job_id: uuid.UUID) -> None:
    """Simulate an instance that took the lease for a manual run and died (no renewals, no end)."""
    store.request_run(job_id, JobTrigger.MANUAL)
    assert store.try_acquire(
        store.state(job_id),
        instance_id="dead",
        run_id="r-dead",
        lease_until=T0 + 30,
        trigger=JobTrigger.MANUAL,
        next_run_at=None,
    )
    store.record_start(
        JobRun("r-dead", job_id, "dead", JobTrigger.MANUAL, T0, None, JobOutcome.RUNNING, "")
    )


@pytest.mark.parametrize("restartable", [True, False])
def test_run_of_a_dead_instance_is_aborted_and_restarted_if_restartable(
    tmp_path: Path, restartable: bool
) -> None:
    clock = ManualClock(T0)
    job = CountingJob(Interval(3600), restartable=restartable)
    s = make(tmp_path, job, clock, name="b", lease_seconds=30)
    crash_mid_run(s.store, job.id)
    clock.advance(29)
    assert s.run_pending() == []  # lease still held
    clock.advance(2)
    runs = s.run_pending()
    if restartable:
        [run] = runs
        assert run.trigger is JobTrigger.RESTART and run.outcome is JobOutcome.SUCCEEDED
    else:
        assert runs == []
    dead = next(h for h in s.history(job.id) if h.run_id == "r-dead")
    assert dead.outcome is JobOutcome.ABORTED and "dead" in dead.status_message
    assert dead.ended_at == T0 + 30
    assert s.store.state(job.id).lease_holder is None


def test_run_now_and_failures_and_progress(tmp_path: Path) -> None:
    class Flaky(ScheduledJob):
        id = uuid.UUID("0a2b9c1e-0000-4000-8000-0000000000ff")

        async def execute(self, ctx: JobContext) -> str:
            ctx.report_status("fetching")
            ctx.report_progress(1, 2)
            raise RuntimeError("feed down")

    clock = ManualClock(T0)
    s = make(tmp_path, Flaky(), clock)
    reports: list[JobProgress] = []
    s.on_progress(reports.append)
    assert s.run_pending() == []  # manual-only job
    s.run_now(Flaky.id)
    [run] = s.run_pending()
    assert run.trigger is JobTrigger.MANUAL
    assert run.outcome is JobOutcome.FAILED and run.status_message == "RuntimeError: feed down"
    assert [(p.status, p.done, p.total) for p in reports] == [
        ("fetching", None, None),
        ("fetching", 1, 2),
    ]
    assert s.store.state(Flaky.id).lease_holder is None


def test_bad_job_definitions_are_named(tmp_path: Path) -> None:
    class NoId(ScheduledJob):
        pass

    with pytest.raises(TypeError, match=r"NoId\.id must be a fixed uuid\.UUID"):
        JobScheduler([NoId()], store=tmp_path / "j.sqlite3")
    with pytest.raises(ValueError, match="not a valid cron expression"):
        Cron("every five minutes")
    with pytest.raises(ValueError, match="positive number of seconds"):
        Interval(0)
    s = JobScheduler([CountingJob(None)], store=tmp_path / "j.sqlite3")
    with pytest.raises(ValueError, match="not stoppable"):
        s.request_stop(CountingJob.id)
    with pytest.raises(KeyError, match="no job with id"):
        s.run_now(uuid.uuid4())
    s.stop()


def test_background_loop_runs_manual_request(tmp_path: Path) -> None:
    job = CountingJob(None)
    finished = []
    import threading

    done = threading.Event()
    with JobScheduler(
        [job], store=tmp_path / "j.sqlite3", options=SchedulerOptions(poll_interval=0.05)
    ) as s:
        s.on_finished(lambda run: (finished.append(run), done.set()))
        s.run_now(job.id)
        assert done.wait(10)
    assert finished[0].outcome is JobOutcome.SUCCEEDED and job.runs == 1


def test_manual_run_when_the_slot_is_due_also_takes_the_slot(tmp_path: Path) -> None:
    clock, job = ManualClock(T0), CountingJob(Interval(60))
    s = make(tmp_path, job, clock)
    clock.advance(60)
    s.run_now(job.id)
    [run] = s.run_pending()
    assert run.trigger is JobTrigger.MANUAL
    assert s.run_pending() == []  # no second run for the same slot
    assert s.store.state(job.id).next_run_at == T0 + 120


async def test_async_faces_run_a_job_without_blocking_the_loop(tmp_path: Path) -> None:
    import asyncio

    finished = asyncio.Event()
    loop = asyncio.get_running_loop()

    class AsyncJob(ScheduledJob):
        id = uuid.UUID("0a2b9c1e-0000-4000-8000-0000000000aa")

        async def execute(self, ctx: JobContext) -> str:
            await asyncio.sleep(0)
            return "async done"

    async with JobScheduler(
        [AsyncJob()], store=tmp_path / "j.sqlite3", options=SchedulerOptions(poll_interval=0.05)
    ) as s:
        s.on_finished(lambda run: loop.call_soon_threadsafe(finished.set))
        await s.run_now_async(AsyncJob.id)
        await asyncio.wait_for(finished.wait(), 10)
        [run] = await s.history_async(AsyncJob.id)
    assert (run.outcome, run.status_message) == (JobOutcome.SUCCEEDED, "async done")
