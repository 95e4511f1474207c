"""The hook an instrumentation plugs into a `JobScheduler` (``eventbroker.contrib.otel`` does).

Called once per run (and per lost lease) only while set (`JobScheduler._telemetry`). Nothing
here imports OpenTelemetry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ._job import JobContext, JobOutcome, ScheduledJob


class RunTelemetry(Protocol):
    """Per-run hooks; each must never raise."""

    def run(
        self,
        job: ScheduledJob,
        ctx: JobContext,
        execute: Callable[[], tuple[JobOutcome, str]],
    ) -> tuple[JobOutcome, str]:
        """Call ``execute()`` once (on the job's thread) and return what it returns: the run's
        outcome and status message (it never raises)."""
        ...

    def lease_lost(self, job: ScheduledJob) -> None:
        """Another instance reaped the lease of `job`'s run here."""
        ...
