"""The errors the jobs package raises on purpose, all under `JobsError`."""

from __future__ import annotations


class JobsError(Exception):
    """Base class of every error the jobs package raises on purpose.

    Bad arguments (a negative interval, a malformed cron expression) raise `ValueError` or
    `TypeError` as usual: they are programming mistakes, not run-time conditions.
    """


class UnknownJobError(JobsError, KeyError):
    """The job id is not registered (with this scheduler, or in the store).

    A `KeyError` (so a `LookupError`) as well, for code that caught those before.
    """

    def __str__(self) -> str:
        # KeyError quotes its argument; this is a sentence
        return str(self.args[0]) if self.args else ""


class JobStoreError(JobsError):
    """A job store statement failed (the driver's error is the `__cause__`)."""


class JobStoreUnavailableError(JobStoreError, ConnectionError):
    """The job store cannot be opened or reached."""
