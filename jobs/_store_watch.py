"""What the scheduler has seen of its store: failing since when, and when reaping is safe."""

from __future__ import annotations

import logging
import threading

import attrs

from ._text import describe

log = logging.getLogger("jobs._scheduler")


@attrs.frozen
class StoreTrouble:
    """The store has failed every call since `since` (seconds since the epoch)."""

    since: float
    failures: int
    last_error: str
    """`TypeName: message` of the last failure, secrets removed."""


class StoreWatch:
    """Counts store failures and recoveries for health and for the reaping grace period.

    After the store comes back from an outage, leases may look expired only because nobody
    could renew them. Reaping waits one lease period after the recovery, so that every live
    holder renews its lease (or records the end of its run) before anyone calls it dead.
    """

    def __init__(self, store_name: str, lease_seconds: float) -> None:
        self._store_name = store_name
        self._lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._trouble: StoreTrouble | None = None
        self._recovered_at: float | None = None

    def failed(self, now: float, exc: BaseException) -> None:
        error = describe(exc)
        with self._lock:
            first = self._trouble is None
            since = now if self._trouble is None else self._trouble.since
            failures = 1 if self._trouble is None else self._trouble.failures + 1
            self._trouble = StoreTrouble(since, failures, error)
        if first:
            log.warning("job store %s failed (%s); retrying", self._store_name, error)
        else:
            log.debug("job store %s failed again (%s)", self._store_name, error)

    def ok(self, now: float) -> None:
        with self._lock:
            trouble, self._trouble = self._trouble, None
            if trouble is not None:
                self._recovered_at = now
        if trouble is not None:
            log.info(
                "job store %s answers again after %d failed call(s) in %.0f s; expired leases "
                "are reaped after %.0f s more",
                self._store_name,
                trouble.failures,
                now - trouble.since,
                self._lease_seconds,
            )

    @property
    def trouble(self) -> StoreTrouble | None:
        return self._trouble

    def may_reap(self, now: float) -> bool:
        """False during an outage and for one lease period after it."""
        with self._lock:
            if self._trouble is not None:
                return False
            return self._recovered_at is None or now >= self._recovered_at + self._lease_seconds
