"""``manage.py eventbroker_run``: the process of an instance that serves no request."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand

from ... import _runtime


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Run the event broker, and the job scheduler on an instance with the jobs role "
        "(EVENTBROKER['RUN_JOBS']), until SIGTERM or Ctrl+C; then stop them in order."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        done = threading.Event()

        def finish(signum: int, frame: FrameType | None) -> None:
            done.set()

        previous = {sig: signal.signal(sig, finish) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            runtime = _runtime.start()
            jobs = " with the job scheduler" if runtime.scheduler is not None else ""
            self.stdout.write(
                f"event broker running{jobs} (pid {os.getpid()}); SIGTERM or Ctrl+C stops it",
            )
            self.stdout.flush()
            while not done.wait(0.5):
                pass
        finally:
            _runtime.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("event broker stopped")
