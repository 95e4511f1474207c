"""Two schedulers contend for one job on a shared store: exactly one runs each slot."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobs import (
    Interval,
    JobOutcome,
    JobScheduler,
    JobStore,
    ManualClock,
    SchedulerOptions,
)

from ._jobs_helpers import BlockingJob, CountingJob
from ._jobs_helpers import store_factory as open_store_factory

T0 = 1_772_000_000.0

StoreFactory = Callable[[], JobStore]


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens independent connections to one store (as separate instances would)."""
    with open_store_factory(request.param, tmp_path) as factory:
        yield factory


def scheduler(
    store: JobStore, job: CountingJob | BlockingJob, clock: ManualClock, name: str
) -> JobScheduler:
    return JobScheduler(
        [job],
        store=store,
        clock=clock,
        options=SchedulerOptions(instance_id=name, lease_seconds=30),
    )


def test_exactly_one_scheduler_runs_each_slot(store_factory: StoreFactory) -> None:
    clock = ManualClock(T0)
    job_a, job_b = CountingJob(Interval(60)), CountingJob(Interval(60))
    a = scheduler(store_factory(), job_a, clock, "a")
    b = scheduler(store_factory(), job_b, clock, "b")
    for _ in range(5):
        clock.advance(60)
        barrier = threading.Barrier(2)
        results: dict[str, int] = {}

        def poll(
            s: JobScheduler,
            name: str,
            barrier: threading.Barrier = barrier,
            results: dict[str, int] = results,
        ) -> None:
            barrier.wait()
            results[name] = len(s.run_pending())

        threads = [threading.Thread(target=poll, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values()) == [0, 1]
    assert job_a.runs + job_b.runs == 5
    history = a.history(CountingJob.id)
    assert len(history) == 5 and all(h.outcome is JobOutcome.SUCCEEDED for h in history)


def test_lease_is_renewed_while_running_and_blocks_others(store_factory: StoreFactory) -> None:
    clock = ManualClock(T0)
    job_a, job_b = BlockingJob(), BlockingJob()
    a = scheduler(store_factory(), job_a, clock, "a")
    b = scheduler(store_factory(), job_b, clock, "b")
    finished = threading.Event()
    a.on_finished(lambda _: finished.set())
    a.run_now(BlockingJob.id)
    [run] = a.run_pending(wait=False)
    assert job_a.started.wait(10)
    b.run_now(BlockingJob.id)  # a second request while it runs: queued, not run in parallel
    for _ in range(4):  # 60 s pass, the lease (30 s) is renewed every 10 s by a's poll
        clock.advance(15)
        a.run_pending(wait=False)
        assert b.run_pending(wait=False) == []
    job_a.release.set()
    assert finished.wait(10)
    a.stop()
    assert a.history(BlockingJob.id)[0].outcome is JobOutcome.SUCCEEDED
    assert job_b.runs == 0
    job_b.release.set()
    [queued] = b.run_pending()
    assert queued.outcome is JobOutcome.SUCCEEDED and queued.run_id != run.run_id


def test_dead_holder_lease_lapses_and_another_instance_takes_over(
    store_factory: StoreFactory,
) -> None:
    clock = ManualClock(T0)
    job_a, job_b = BlockingJob(), BlockingJob()
    job_a.restartable = job_b.restartable = True
    a = scheduler(store_factory(), job_a, clock, "a")
    b = scheduler(store_factory(), job_b, clock, "b")
    a.run_now(BlockingJob.id)
    a.run_pending(wait=False)
    assert job_a.started.wait(10)
    clock.advance(31)  # a froze: no renewals
    job_b.release.set()
    [run] = b.run_pending()
    assert run.instance_id == "b" and run.outcome is JobOutcome.SUCCEEDED
    outcomes = {h.instance_id: h.outcome for h in b.history(BlockingJob.id)}
    assert outcomes == {"a": JobOutcome.ABORTED, "b": JobOutcome.SUCCEEDED}
    job_a.release.set()
    a.stop()  # a wakes up: its late end does not overwrite the aborted record
    assert {h.instance_id: h.outcome for h in b.history(BlockingJob.id)} == outcomes
