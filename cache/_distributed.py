"""L2: the `DistributedCache` protocol, `MemoryDistributedCache`, and the guard the hybrid cache
puts around any L2 (errors logged, never raised; a circuit breaker skips L2 after an error)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@runtime_checkable
class DistributedCache(Protocol):
    """A shared byte store with per-key time to live (Redis in production). Both faces."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds."""
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
    """Open for `duration` seconds after a failure; then let calls probe again (closed on success)."""

    def __init__(self, duration: float, clock: Clock, name: str = "distributed cache") -> None:
        self._duration = duration
        self._clock = clock
        self._name = name
        self._open_until: float | None = None

    @property
    def is_open(self) -> bool:
        return self._open_until is not None and self._clock() < self._open_until

    def allows(self) -> bool:
        """True when a call may go through (closed, or open long enough to probe)."""
        return not self.is_open

    def record_success(self) -> None:
        if self._open_until is not None:
            self._open_until = None
            logger.info("%s circuit closed: calls go through again", self._name)

    def record_failure(self) -> None:
        if self._duration <= 0:
            return
        was_open = self._open_until is not None
        self._open_until = self._clock() + self._duration
        if not was_open:
            logger.warning("%s circuit opened: skipping it for %.3gs", self._name, self._duration)


class GuardedDistributedCache:
    """Any `DistributedCache` behind a circuit breaker; errors are logged, never raised."""

    def __init__(self, inner: DistributedCache, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    def _failed(self, op: str, key: str, exc: Exception) -> None:
        logger.warning(
            "L2 %s of %r failed (%s: %s); serving without L2", op, key, type(exc).__name__, exc
        )
        self.breaker.record_failure()

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
