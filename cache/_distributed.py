"""L2: the `DistributedCache` protocol, `MemoryDistributedCache`, and the guard the hybrid cache
puts around any L2 (errors logged, never raised; a circuit breaker skips L2 after an outage)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ._redact import redact_text

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@runtime_checkable
class DistributedCache(Protocol):
    """A shared byte store with per-key time to live (Redis in production). Both faces.

    An outage (server down, timeout) should raise `DistributedCacheError` (or any error that is
    not a `TypeError`/`ValueError`: those mean one key or value could not be sent). Optional:
    a `description` str naming where the data lives (health reasons show it), and `close()` /
    `async close_async()`, called by a `HybridCache` that owns the store when it closes.
    """

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds (`ttl` may be infinity: no expiry)."""
        ...

    def remove(self, key: str) -> None: ...

    async def get_async(self, key: str) -> bytes | None: ...

    async def set_async(self, key: str, value: bytes, ttl: float) -> None: ...

    async def remove_async(self, key: str) -> None: ...


class MemoryDistributedCache:
    """An in-process `DistributedCache`: for tests and single-process development."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._data: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            if item[1] <= self._clock():
                del self._data[key]
                return None
            return item[0]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        with self._lock:
            self._data[key] = (value, self._clock() + ttl)

    def remove(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    async def get_async(self, key: str) -> bytes | None:
        return self.get(key)

    async def set_async(self, key: str, value: bytes, ttl: float) -> None:
        self.set(key, value, ttl)

    async def remove_async(self, key: str) -> None:
        self.remove(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class CircuitBreaker:
    """Open for `duration` seconds after a failure; then let calls probe again (closed on success).

    Also remembers when the current run of failures began and the last error (for `health()`).
    """

    def __init__(self, duration: float, clock: Clock, name: str = "distributed cache") -> None:
        self._duration = duration
        self._clock = clock
        self._name = name
        self._open_until: float | None = None
        self.failing_since: float | None = None
        """When the current run of failures began; `None` once a call succeeds."""
        self.last_error: str | None = None
        """The last failure, in words (credentials redacted)."""

    @property
    def is_open(self) -> bool:
        return self._open_until is not None and self._clock() < self._open_until

    @property
    def open_until(self) -> float | None:
        """When calls go through again, while open; `None` when closed."""
        return self._open_until if self.is_open else None

    def allows(self) -> bool:
        """True when a call may go through (closed, or open long enough to probe)."""
        return not self.is_open

    def record_success(self) -> None:
        if self.failing_since is not None:
            self.failing_since = self.last_error = None
        if self._open_until is not None:
            self._open_until = None
            logger.info("%s circuit closed: calls go through again", self._name)

    def record_failure(self, error: str | None = None) -> None:
        if self.failing_since is None:
            self.failing_since = self._clock()
        self.last_error = error
        if self._duration <= 0:
            return
        was_open = self._open_until is not None
        self._open_until = self._clock() + self._duration
        if not was_open:
            logger.warning("%s circuit opened: skipping it for %.3gs", self._name, self._duration)


CLIENT_SIDE_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError, ArithmeticError)
"""Errors of one call's input (a key or value the client cannot encode), not of the service:
that key is a miss, the circuit stays closed. `UnicodeError` is a `ValueError`."""


def describe(store: object) -> str:
    """A distributed cache's `description` (such as ``Redis 127.0.0.1:6379``), else its class."""
    description = getattr(store, "description", None)
    return description if isinstance(description, str) else type(store).__name__


class GuardedDistributedCache:
    """Any `DistributedCache` behind a circuit breaker; errors are logged, never raised.

    A client-side error (`CLIENT_SIDE_ERRORS`) affects one key only: logged, a miss (or a skipped
    write), the breaker untouched. Any other error (`DistributedCacheError`, a connection error)
    means the service is down: it opens the breaker for every key.
    """

    def __init__(self, inner: DistributedCache, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker
        self.description = describe(inner)
        self.errors = 0
        """Calls that failed (client-side refusals included)."""

    def _failed(self, op: str, key: str, exc: Exception) -> None:
        detail = redact_text(f"{type(exc).__name__}: {exc}")
        self.errors += 1
        if isinstance(exc, CLIENT_SIDE_ERRORS):
            logger.warning(
                "L2 %s of %r refused by the client (%s): a miss for this key only; the "
                "circuit stays closed",
                op,
                key,
                detail,
            )
            return
        logger.warning("L2 %s of %r failed (%s); serving without L2", op, key, detail)
        self.breaker.record_failure(detail)

    def get(self, key: str) -> bytes | None:
        if not self.breaker.allows():
            return None
        try:
            value = self.inner.get(key)
        except Exception as exc:
            self._failed("get", key, exc)
            return None
        self.breaker.record_success()
        return value

    async def get_async(self, key: str) -> bytes | None:
        if not self.breaker.allows():
            return None
        try:
            value = await self.inner.get_async(key)
        except Exception as exc:
            self._failed("get", key, exc)
            return None
        self.breaker.record_success()
        return value

    def set(self, key: str, value: bytes, ttl: float) -> bool:
        return self._write(key, "set", lambda: self.inner.set(key, value, ttl))

    def remove(self, key: str) -> bool:
        return self._write(key, "remove", lambda: self.inner.remove(key))

    def _write(self, key: str, op: str, call: Callable[[], None]) -> bool:
        if not self.breaker.allows():
            return False
        try:
            call()
        except Exception as exc:
            self._failed(op, key, exc)
            return False
        self.breaker.record_success()
        return True

    async def set_async(self, key: str, value: bytes, ttl: float) -> bool:
        if not self.breaker.allows():
            return False
        try:
            await self.inner.set_async(key, value, ttl)
        except Exception as exc:
            self._failed("set", key, exc)
            return False
        self.breaker.record_success()
        return True

    async def remove_async(self, key: str) -> bool:
        if not self.breaker.allows():
            return False
        try:
            await self.inner.remove_async(key)
        except Exception as exc:
            self._failed("remove", key, exc)
            return False
        self.breaker.record_success()
        return True
