"""Rows read back from the job store are hostile (edited by hand, written by a newer release):
an unreadable row is skipped and logged, never an exception that stops the scheduler."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path

import pytest

from jobs import Interval, JobOutcome, JobScheduler, ManualClock, SqliteJobStore

from ._jobs_helpers import CountingJob


def test_tampered_rows_are_skipped_and_the_other_jobs_keep_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.sqlite3"
    clock = ManualClock()
    job = CountingJob(Interval(10))
    scheduler = JobScheduler([job], store=SqliteJobStore(path), clock=clock)
    try:
        scheduler.run_now(job.id)
        scheduler.run_pending()
        assert [r.outcome for r in scheduler.history(job.id)] == [JobOutcome.SUCCEEDED]
        raw = sqlite3.connect(path)
        with raw:
            raw.execute(
                "INSERT INTO scheduled_job_schedule (job_id, name, restartable, schedule_key, "
                "next_run_at, run_requested) VALUES ('not-a-uuid', 'x', 0, 'k', 'soon', 'whenever')"
            )
            raw.execute(
                "INSERT INTO scheduled_job_history (run_id, job_id, instance_id, run_trigger, "
                "started_at, ended_at, outcome, status_message) VALUES "
                "('r-bad', ?, 'i', 'scheduled', 'yesterday', NULL, 'exploded', 'x')",
                (str(job.id),),
            )
        raw.close()
        with caplog.at_level(logging.WARNING, logger="jobs"):
            states = scheduler.store.states()
            history = scheduler.history(job.id)
        assert [s.job_id for s in states] == [job.id]
        assert [r.outcome for r in history] == [JobOutcome.SUCCEEDED]
        assert "skipped an unreadable job row" in caplog.text
        assert "skipped an unreadable history row" in caplog.text
        clock.advance(11)
        scheduler.run_pending()
        assert job.runs == 2  # the scheduler polls on, past the bad rows
        assert scheduler.store.state(job.id).job_id == job.id
        with pytest.raises(Exception, match=r"unreadable|not registered"):
            scheduler.store.state(uuid.UUID(int=0))
    finally:
        scheduler.store.close()
