"""`HybridCache.stats` (a snapshot of its counters) and `HybridCache.events` (FusionCache's
event set as `Signal`s): what a cache did, without OpenTelemetry."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from ._backplane import BackplaneMessage
from ._signal import Signal, Subscription

logger = logging.getLogger("cache")
T = TypeVar("T")


class CacheLevel(enum.Enum):
    """Where a value was looked up."""

    L1 = "l1"
    """This instance's memory."""
    L2 = "l2"
    """The distributed cache (Redis)."""


@attrs.frozen
class CacheStats:
    """A snapshot of a cache's counters since it was built (`HybridCache.stats`)."""

    l1_hits: int = 0
    """Reads answered from memory (fresh, or a stale value served by fail-safe)."""
    l1_misses: int = 0
    """Reads memory could not answer (L2 or the factory was asked, or the caller waited for a
    concurrent load)."""
    l2_hits: int = 0
    """Reads answered from the distributed cache."""
    l2_misses: int = 0
    """Reads the distributed cache could not answer (nothing, stale, or unreachable)."""
    stale_hits: int = 0
    """Stale values served by fail-safe: at its activation and while the value is throttled."""
    fail_safe_activations: int = 0
    """Times a factory failed or timed out and fail-safe served the last good value instead."""
    factory_calls: int = 0
    factory_errors: int = 0
    """Factory calls that raised (the error reached the caller unless fail-safe answered)."""
    factory_timeouts: int = 0
    """Factory calls that ran past their soft or hard timeout."""
    evictions: int = 0
    """Entries dropped from memory to stay within `max_entries`."""
    backplane_sent: int = 0
    """Backplane messages published to the other instances (auto-recovery replays included)."""
    backplane_received: int = 0
    """Backplane messages received from other instances."""
    backplane_errors: int = 0
    """Publishes that failed (the message waits in the auto-recovery queue)."""
    l2_errors: int = 0
    """Distributed cache calls that failed (each logged; a read is then a miss)."""

    @property
    def hits(self) -> int:
        """Reads answered by memory or the distributed cache."""
        return self.l1_hits + self.l2_hits

    @property
    def misses(self) -> int:
        """Reads neither level answered (a factory ran, or a `get` returned its default)."""
        return self.l1_misses - self.l2_hits


@attrs.frozen
class CacheEventArgs:
    """What a cache event is about."""

    cache_name: str
    key: str
    """The cache key (empty for a clear)."""
    level: CacheLevel | None = None
    """For hit and miss: the level that answered or missed."""
    error: BaseException | None = None
    """For factory_error, factory_timeout and fail_safe_activated: what went wrong."""


class _WatchedSignal(Signal[T]):
    """A signal that says when it gains its first handler or loses its last (so a hot path
    reads one flag instead of the handler tuples)."""

    __slots__ = ("_on_change",)

    def __init__(
        self, name: str, on_change: Callable[[bool], None], *, logger: logging.Logger
    ) -> None:
        super().__init__(name, logger=logger)
        self._on_change = on_change

    def subscribe(self, handler: Callable[[T], object]) -> Subscription:
        subscription = super().subscribe(handler)
        self._on_change(True)
        return subscription

    def _remove(self, handler: Callable[[Any], object]) -> None:
        super()._remove(handler)
        self._on_change(bool(self._sync or self._async))


class CacheEvents:
    """The events of one cache (FusionCache's set). Subscribe with `subscribe(handler)`.

    Handlers run inline, on the thread (or loop) of the cache call that caused the event, so
    keep them fast; a failing handler is logged and never fails the call. An `async def`
    handler is scheduled on the running loop (skipped where there is none).
    """

    def __init__(
        self, cache_name: str, on_hit_handlers: Callable[[bool], None] = lambda _: None
    ) -> None:
        named = f"cache {cache_name!r}"
        self.hit: Signal[CacheEventArgs] = _WatchedSignal(
            f"{named} hit", on_hit_handlers, logger=logger
        )
        """A fresh value was found (`level` says where)."""
        self.miss: Signal[CacheEventArgs] = Signal(f"{named} miss", logger=logger)
        """A level had no fresh value (`level` says which)."""
        self.stale_hit: Signal[CacheEventArgs] = Signal(f"{named} stale hit", logger=logger)
        """A stale value was served by fail-safe."""
        self.fail_safe_activated: Signal[CacheEventArgs] = Signal(
            f"{named} fail-safe activated", logger=logger
        )
        """A factory failed or timed out and the last good value is served instead."""
        self.factory_error: Signal[CacheEventArgs] = Signal(f"{named} factory error", logger=logger)
        self.factory_timeout: Signal[CacheEventArgs] = Signal(
            f"{named} factory timeout", logger=logger
        )
        self.eviction: Signal[CacheEventArgs] = Signal(f"{named} eviction", logger=logger)
        """An entry was dropped from memory to stay within `max_entries`."""
        self.backplane_message_received: Signal[BackplaneMessage] = Signal(
            f"{named} backplane message received", logger=logger
        )
        """Another instance's change arrived (before it is applied)."""


_background: set[asyncio.Task[None]] = set()


def emit(signal: Signal[Any], arg: Any) -> None:
    """Run `signal`'s plain handlers now; schedule its async ones on the running loop, if any."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    work = signal.call_sync(arg) if signal._sync else []
    if signal._async:
        if loop is not None:
            work += signal.async_work(arg)
        else:
            logger.debug("%s: async handlers skipped (no running event loop here)", signal.name)
    for coro in work:
        if loop is None:
            coro.close()
            continue
        task = loop.create_task(coro)
        _background.add(task)
        task.add_done_callback(_background.discard)
