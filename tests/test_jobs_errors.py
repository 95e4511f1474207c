"""One root for the jobs package's errors, and missing extras that say which to install."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import jobs
from jobs import (
    Cron,
    InvalidationError,
    JobScheduler,
    JobsError,
    JobStopped,
    JobStoreError,
    JobStoreUnavailableError,
    SqliteJobStore,
    UnknownJobError,
)

from ._jobs_helpers import CountingJob


def test_every_error_raised_on_purpose_is_a_jobs_error_and_keeps_its_builtin_base() -> None:
    assert issubclass(UnknownJobError, JobsError) and issubclass(UnknownJobError, LookupError)
    assert issubclass(UnknownJobError, KeyError)  # what run_now raised before
    assert issubclass(InvalidationError, JobsError)
    assert issubclass(JobStopped, JobsError)
    assert issubclass(JobStoreError, JobsError)
    assert issubclass(JobStoreUnavailableError, JobStoreError)
    assert issubclass(JobStoreUnavailableError, ConnectionError)  # and so an OSError
    assert "JobsError" in jobs.__all__


def test_unknown_job_ids_raise_unknown_job_error(tmp_path: Path) -> None:
    s = JobScheduler([CountingJob(None)], store=tmp_path / "j.sqlite3")
    stranger = uuid.uuid4()
    with pytest.raises(UnknownJobError, match=f"no job with id {stranger}") as info:
        s.run_now(stranger)
    assert str(info.value).startswith("no job with id")  # a sentence, not a quoted KeyError
    with pytest.raises(UnknownJobError, match="not registered in the job store"):
        s.store.state(stranger)
    with pytest.raises(JobsError):
        s.store.request_run(stranger, jobs.JobTrigger.MANUAL)
    s.stop()


def test_store_failures_are_job_store_errors(tmp_path: Path) -> None:
    with pytest.raises(JobStoreUnavailableError, match="pass a writable file path"):
        SqliteJobStore(tmp_path / "missing-dir" / "j.sqlite3")
    store = SqliteJobStore(tmp_path / "j.sqlite3")
    store.close()
    with pytest.raises(JobStoreError, match="SqliteJobStore") as info:
        store.states()
    assert info.value.__cause__ is not None


def test_postgres_connection_errors_name_no_password() -> None:
    from jobs import PostgresJobStore

    url = "postgresql://app:s3cret-pw@127.0.0.1:1/test"
    with pytest.raises(JobStoreUnavailableError) as info:
        PostgresJobStore(url)
    assert "s3cret-pw" not in str(info.value) and "app:***@127.0.0.1:1" in str(info.value)


def test_cron_without_croniter_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)  # a core install
    with pytest.raises(ModuleNotFoundError, match=r'pip install "eventbroker-cache\[jobs\]"'):
        Cron("*/15 * * * *")


def test_postgres_store_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "jobs._postgres_store", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r'pip install "eventbroker-cache\[postgres\]"'):
        jobs.open_store("postgresql://postgres@127.0.0.1:5432/test")
    with pytest.raises(ModuleNotFoundError, match=r"eventbroker-cache\[postgres\]"):
        _ = jobs.PostgresJobStore


def test_import_jobs_works_on_a_core_install(tmp_path: Path) -> None:
    script = """
import sys
sys.modules["croniter"] = None   # neither extra installed
sys.modules["psycopg"] = None
import uuid
import jobs

class Job(jobs.ScheduledJob):
    id = uuid.uuid4()
    schedule = jobs.Interval(60)
    def execute(self, ctx):
        return "ok"

s = jobs.JobScheduler([Job()], store=sys.argv[1])
s.run_now(Job.id)
[run] = s.run_pending()
assert run.outcome is jobs.JobOutcome.SUCCEEDED
s.stop()
try:
    jobs.Cron("* * * * *")
except ModuleNotFoundError as exc:
    print(exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "j.sqlite3")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "eventbroker-cache[jobs]"' in result.stdout
