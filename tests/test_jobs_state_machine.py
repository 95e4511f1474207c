"""Two schedulers, one store, a clock moved by hand: the runs match a simple model."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from jobs import (
    Interval,
    JobOutcome,
    JobRun,
    JobScheduler,
    JobTrigger,
    ManualClock,
    SchedulerOptions,
    SqliteJobStore,
)

from ._jobs_helpers import CountingJob

T0 = 1_772_000_000.0
EVERY, LEASE = 60.0, 30.0


class Farm(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = ManualClock(T0)
        self.schedulers = [
            JobScheduler(
                [CountingJob(Interval(EVERY), restartable=True)],
                store=SqliteJobStore(Path(self.dir.name) / "jobs.sqlite3"),
                clock=self.clock,
                options=SchedulerOptions(instance_id=name, lease_seconds=LEASE),
            )
            for name in ("a", "b")
        ]
        self.store = self.schedulers[0].store
        # the model
        self.next_due = T0 + EVERY
        self.requested: JobTrigger | None = None
        self.dead_lease_until: float | None = None
        self.runs = 0
        self.aborted = 0

    @rule(seconds=st.sampled_from([1.0, 15.0, 29.0, 31.0, 59.0, 60.0, 61.0, 200.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(who=st.sampled_from([0, 1]))
    def run_now(self, who: int) -> None:
        self.schedulers[who].run_now(CountingJob.id)
        self.requested = JobTrigger.MANUAL

    @precondition(lambda self: self.dead_lease_until is None)
    @rule()
    def an_instance_takes_the_job_and_dies(self) -> None:
        now = self.clock.now()
        state = self.store.state(CountingJob.id)
        assert state.lease_holder is None
        trigger = state.run_requested or JobTrigger.SCHEDULED
        taken = self.store.try_acquire(
            state,
            instance_id="dead",
            run_id=f"dead-{self.aborted}",
            lease_until=now + LEASE,
            trigger=trigger,
            next_run_at=state.next_run_at,
        )
        assert taken
        self.store.record_start(
            JobRun(
                f"dead-{self.aborted}",
                CountingJob.id,
                "dead",
                trigger,
                now,
                None,
                JobOutcome.RUNNING,
                "",
            )
        )
        if trigger is not JobTrigger.SCHEDULED:
            self.requested = None
        self.dead_lease_until = now + LEASE

    @rule(who=st.sampled_from([0, 1]))
    def poll(self, who: int) -> None:
        now = self.clock.now()
        if self.dead_lease_until is not None:
            if now <= self.dead_lease_until:
                assert self.schedulers[who].run_pending() == []
                return
            self.dead_lease_until = None
            self.aborted += 1
            self.requested = JobTrigger.RESTART
        due = now >= self.next_due
        expected = self.requested or (JobTrigger.SCHEDULED if due else None)
        runs = self.schedulers[who].run_pending()
        if expected is None:
            assert runs == []
            return
        [run] = runs
        assert run.trigger is expected and run.outcome is JobOutcome.SUCCEEDED
        self.runs += 1
        self.requested = None
        if due:
            nxt = self.next_due + EVERY
            self.next_due = nxt if nxt > now else now + EVERY

    @invariant()
    def history_matches_the_model(self) -> None:
        history = self.schedulers[0].history(CountingJob.id, limit=1000)
        outcomes = [h.outcome for h in history]
        assert outcomes.count(JobOutcome.SUCCEEDED) == self.runs
        assert outcomes.count(JobOutcome.ABORTED) == self.aborted

    def teardown(self) -> None:
        for s in self.schedulers:
            s.stop()
        self.dir.cleanup()


Farm.TestCase.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)
TestFarm = Farm.TestCase
