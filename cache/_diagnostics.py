"""Bounded bookkeeping for operators: rate-limited log lines and last-minute counts.

Shared by `cache` and `eventbroker` (which imports it from here): it lives in the lower layer,
like `Signal` and `Health`."""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Hashable

PERIOD = 60.0
"""Each cause is logged at most once per this many seconds; counts cover this window."""
_MAX_KEYS = 1024


class LogLimiter:
    """Logs each key (a cause) at most once per `PERIOD`, saying how many were suppressed.

    ``exc_info`` goes with the first line of a key only: one traceback is enough to find a bug,
    the counts show it goes on. The number of keys remembered is bounded (a flood of distinct
    keys cannot grow memory).
    """

    def __init__(self, logger: logging.Logger, clock: Callable[[], float]) -> None:
        self._logger = logger
        self._clock = clock
        self._next: dict[Hashable, float] = {}
        self._suppressed: Counter[Hashable] = Counter()

    def log(
        self,
        level: int,
        key: Hashable,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log `message % args` unless `key` was logged less than `PERIOD` ago; True if logged."""
        now = self._clock()
        until = self._next.get(key)
        if until is not None and now < until:
            self._suppressed[key] += 1
            return False
        if until is None and len(self._next) >= _MAX_KEYS:
            self._prune(now)
        self._next[key] = now + PERIOD
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} more of this cause in the last minute)"
        self._logger.log(level, message, *args, exc_info=exc_info if until is None else None)
        return True

    def warn(self, key: Hashable, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, message, *args)

    def _prune(self, now: float) -> None:
        for key in [k for k, until in self._next.items() if until <= now]:
            del self._next[key]
            self._suppressed.pop(key, None)
        while len(self._next) >= _MAX_KEYS:  # all still quiet: forget the oldest
            key = next(iter(self._next))
            del self._next[key]
            self._suppressed.pop(key, None)


class RecentCounts:
    """Counts by cause over the last `PERIOD` seconds, in one-second buckets (bounded).

    Thread-safe: the broker loop adds, any thread (a health check) reads.
    """

    def __init__(self) -> None:
        self._buckets: deque[tuple[int, Counter[str]]] = deque()
        self._lock = threading.Lock()

    def add(self, cause: str, now: float, count: int = 1) -> None:
        second = int(now)
        with self._lock:
            buckets = self._buckets
            if not buckets or buckets[-1][0] != second:
                self._expire(now)
                buckets.append((second, Counter()))
            buckets[-1][1][cause] += count

    def last_minute(self, now: float) -> Counter[str]:
        """Counts by cause over the last `PERIOD` seconds."""
        total: Counter[str] = Counter()
        with self._lock:
            self._expire(now)
            for _, counts in self._buckets:
                total.update(counts)
        return total

    def _expire(self, now: float) -> None:
        buckets = self._buckets
        while buckets and buckets[0][0] <= now - PERIOD:
            buckets.popleft()
