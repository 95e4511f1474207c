"""Jobs used by the scheduler tests."""

from __future__ import annotations

import threading
import uuid

from jobs import JobContext, Schedule, ScheduledJob


class CountingJob(ScheduledJob):
    """Counts its runs; returns a status message naming the count."""

    id = uuid.UUID("0a2b9c1e-0000-4000-8000-000000000001")
    name = "Counting"

    def __init__(self, schedule: Schedule | None, *, restartable: bool = False) -> None:
        self.schedule = schedule
        self.restartable = restartable
        self.runs = 0
        self._lock = threading.Lock()

    def execute(self, ctx: JobContext) -> str:
        with self._lock:
            self.runs += 1
            return f"run {self.runs}"


class BlockingJob(ScheduledJob):
    """Runs until released or asked to stop (a stoppable long import)."""

    id = uuid.UUID("0a2b9c1e-0000-4000-8000-000000000002")
    name = "Blocking"
    stoppable = True

    def __init__(self) -> None:
        self.schedule = None
        self.started = threading.Event()
        self.release = threading.Event()
        self.runs = 0

    def execute(self, ctx: JobContext) -> str:
        self.runs += 1
        self.started.set()
        done = 0
        while not self.release.wait(0.01):
            if ctx.stop_requested:
                return f"stopped after {done} batches"
            done += 1
        return "finished"
