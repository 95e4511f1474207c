"""The job scheduler of the test site's jobs role (``EVENTBROKER_SCHEDULER``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from eventbroker import EventRegistry
from jobs import JobScheduler


def build_scheduler(registry: EventRegistry) -> JobScheduler:
    folder = os.environ.get("TEST_JOBS_FOLDER") or tempfile.mkdtemp()
    return JobScheduler(store=Path(folder) / "jobs.sqlite3", registry=registry)
