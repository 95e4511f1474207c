"""A stop request made on one instance reaches the instance running the job via the broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
)
from jobs import JobOutcome, JobRun, JobScheduler, SchedulerOptions, SqliteJobStore

from ._jobs_helpers import BlockingJob


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[list[tuple[JobScheduler, BlockingJob]]]:
    hub = InMemoryHub()
    brokers = [
        EventBroker(
            InMemoryTransport(hub),
            EventBrokerOptions(secret="test-secret-0123456789", application_name="jobs"),
        )
        for _ in range(2)
    ]
    farm = []
    for broker in brokers:
        broker.start()
        job = BlockingJob()
        scheduler = JobScheduler(
            [job],
            store=SqliteJobStore(tmp_path / "farm.sqlite3"),
            registry=EventRegistry(broker),
            options=SchedulerOptions(poll_interval=0.05),
        )
        farm.append((scheduler, job))
    yield farm
    for (scheduler, job), broker in zip(farm, brokers, strict=True):
        job.release.set()
        scheduler.stop()
        broker.stop()


def test_stop_request_from_another_instance_stops_the_running_job(
    farm: list[tuple[JobScheduler, BlockingJob]],
) -> None:
    (runner, job), (other, _) = farm
    finished: list[JobRun] = []
    done = threading.Event()
    runner.on_finished(lambda run: (finished.append(run), done.set()))
    runner.run_now(BlockingJob.id)
    runner.run_pending(wait=False)
    assert job.started.wait(10)
    assert other.request_stop(BlockingJob.id) is False  # not running there: sent to the farm
    assert done.wait(10), "the running instance never saw the stop request"
    [run] = finished
    assert run.outcome is JobOutcome.STOPPED and run.status_message.startswith("stopped after")
    assert run.instance_id == runner.instance_id
    assert other.history(BlockingJob.id)[0].outcome is JobOutcome.STOPPED


def test_a_run_request_from_an_instance_without_the_job_reaches_the_schedulers(
    tmp_path: Path,
) -> None:
    """A web instance (no scheduler) raises RUN_JOB_EVENT_ID; the job instance's scheduler runs
    the job; requests naming a bad or unknown job are ignored."""
    from eventbroker import EventRaiseOption
    from jobs import JOBS_RAISER_ID, RUN_JOB_EVENT_ID, RunJobRequest

    hub = InMemoryHub()
    options = EventBrokerOptions(secret="test-secret-0123456789", application_name="jobs")
    with (
        EventBroker(InMemoryTransport(hub), options) as web,
        EventBroker(InMemoryTransport(hub), options) as worker,
    ):
        job = BlockingJob()
        scheduler = JobScheduler(
            [job],
            store=SqliteJobStore(tmp_path / "jobs.sqlite3"),
            registry=EventRegistry(worker),
            options=SchedulerOptions(poll_interval=0.05),
        )
        try:
            request = EventRegistry(web).get(RUN_JOB_EVENT_ID, param_type=RunJobRequest)
            for job_id in ("not-a-uuid", "3f0c6a52-7d7e-4a3e-9d1e-2b8f3c4d5e6f"):
                request.raise_(JOBS_RAISER_ID, RunJobRequest(job_id, web.instance_id))
            hub.drain()
            assert scheduler.run_pending(wait=False) == []  # nothing was queued
            request.raise_(
                JOBS_RAISER_ID,
                RunJobRequest(str(BlockingJob.id), web.instance_id),
                EventRaiseOption.RAISE_BROADCAST,
            )
            hub.drain()
            [run] = scheduler.run_pending(wait=False)
            assert job.started.wait(10)
            [progress] = scheduler.running()
            assert (progress.job_id, progress.run_id) == (BlockingJob.id, run.run_id)
            assert progress.started_at == run.started_at
        finally:
            job.release.set()
            scheduler.stop()
        assert scheduler.running() == []
