"""`HybridCache`: L1 memory + optional L2 + optional backplane, with FusionCache's semantics.

One implementation, two faces. The cache is split along its seams, one module each:

- `_memory.py`: L1 (the memory accessor); `_distributed.py`: L2 behind its guard and circuit
  breaker (the distributed accessor); `_backplane_accessor.py`: publishing, with
  `_auto_recovery.py` (the queue of what could not be published, the retry timer and replay);
- `_core.py`: every operation that may do I/O, written once as a generator that yields
  *steps* (`_steps.py`, plain data) and receives their results;
- `_drivers.py`: `run_sync` executes the steps with blocking calls, `run_async` awaits them;
- `_flights.py`: stampede protection (one load per key, across threads and tasks);
- `_incoming.py`: another instance's backplane messages applied to L1;
- this module: the public faces, the L1 hit path, eager refresh, lifecycle and health.

The L1 hit path of `get_or_set` / `get_or_set_async` runs no generator, takes no lock and
touches no event loop: one dict lookup, one clock read and comparison.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from ._backplane import Backplane, BackplaneConnectionInfo, BackplaneSubscriptionOptions
from ._backplane_accessor import BackplaneAccessor, log_background_failure
from ._context import FactoryContext, normalize_tags
from ._core import NO_DEFAULT, Counts, Load, MaybeValue
from ._decorator import P, R, cached
from ._diagnostics import LogLimiter
from ._distributed import CircuitBreaker, DistributedCache, GuardedDistributedCache, describe
from ._drivers import Driver, is_async_callable
from ._flights import RETRY, Flight, Flights
from ._health import Health
from ._incoming import IncomingMessages
from ._keys import check_key
from ._marks import Marks
from ._memory import MemoryCache
from ._options import CacheOptions, EntryOptions
from ._serialization import JsonSerializer, Serializer
from ._stats import CacheEvents, CacheStats

__all__ = ["HybridCache", "MaybeValue"]

_is_async_callable = is_async_callable  # (eventbroker.contrib.otel reads it here)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MISS: Any = object()
"""`_fresh_hit` found nothing fresh in L1 (a cached value may be None)."""
Clock = Callable[[], float]
Factory = Callable[[], T] | Callable[[FactoryContext[T]], T]
"""A factory: no argument, or the `FactoryContext` of the load."""
AsyncFactory = (
    Callable[[], Awaitable[T]]
    | Callable[[FactoryContext[T]], Awaitable[T]]
    | Callable[[], T]
    | Callable[[FactoryContext[T]], T]
)


class HybridCache(IncomingMessages):
    """A FusionCache-style hybrid cache: L1 memory, optional L2 (`distributed_cache`), optional
    `backplane`, fail-safe, factory timeouts, eager refresh and stampede protection.

    Every operation has a sync and an `_async` form. `clock` (seconds since the epoch) is
    injectable for tests. Use as a (async) context manager, or call `close()` /
    `close_async()`.

    `distributed_cache` is a `DistributedCache` or a Redis URL (the cache then builds its own
    `RedisDistributedCache` and closes it when it closes). `owns_distributed_cache`: whether
    closing the cache closes the distributed cache; by default only one built from a URL.
    """

    def __init__(
        self,
        options: CacheOptions | None = None,
        distributed_cache: DistributedCache | str | None = None,
        backplane: Backplane | None = None,
        *,
        serializer: Serializer | None = None,
        clock: Clock = time.time,
        owns_distributed_cache: bool | None = None,
    ) -> None:
        self.options = options if options is not None else CacheOptions()
        self.instance_id: str = self.options.instance_id or uuid.uuid4().hex
        """This cache's id: the `source_id` of its backplane messages."""
        self._clock = clock
        self._lost_log = LogLimiter(logger, clock)
        self._memory = MemoryCache(self.options.max_entries)
        self._l1 = self._memory.entries
        self._hit_watched = False
        """Whether `events.hit` has handlers (read on the L1 hit path)."""
        self.events = CacheEvents(self.options.name, self._hit_handlers_changed)
        """FusionCache's events: hit, miss, stale_hit, fail_safe_activated, factory_error,
        factory_timeout, eviction, backplane_message_received (`subscribe(handler)`)."""
        self._memory.on_evict = self._evicted
        self._l1_hits = 0  # the L1 hit path's counter; the others are in `_counts`
        self._counts = Counts()
        self._default_options = self.options.default_entry_options
        self._serializer: Serializer = serializer if serializer is not None else JsonSerializer()
        self._l2: GuardedDistributedCache | None = None
        built = isinstance(distributed_cache, str)
        if isinstance(distributed_cache, str):  # (repeated for mypy's narrowing)
            distributed_cache = _redis_from_url(distributed_cache)
        self._owns_l2 = built if owns_distributed_cache is None else owns_distributed_cache
        if distributed_cache is not None:
            breaker = CircuitBreaker(
                self.options.distributed_cache_circuit_breaker_duration,
                clock,
                f"cache {self.options.name!r}: distributed cache",
            )
            self._l2 = GuardedDistributedCache(distributed_cache, breaker)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.options.background_workers, thread_name_prefix=f"cache-{self.options.name}"
        )
        self._factory_executor = concurrent.futures.ThreadPoolExecutor(
            64, thread_name_prefix=f"cache-{self.options.name}-factory"
        )
        self._backplane = backplane
        self._bp = (
            None
            if backplane is None
            else BackplaneAccessor(backplane, self.options, clock, self._executor, self._counts)
        )
        self._flights = Flights()
        self._io = Driver(self._l2, self._bp, self._factory_executor, self._executor, self._flights)
        self._run_sync = self._io.run_sync
        self._run_async = self._io.run_async
        self._marks = Marks(self.options.max_entries, self.options.marker_refresh_interval)
        self._closed = False
        if backplane is not None:
            backplane.subscribe(
                BackplaneSubscriptionOptions(
                    cache_name=self.options.name,
                    cache_instance_id=self.instance_id,
                    incoming_message_handler=self._on_backplane_message,
                    connect_handler=self._on_backplane_connected,
                    messages_lost_handler=self._on_backplane_messages_lost,
                    incoming_messages_handler=self._on_backplane_messages,
                    publish_failed_handler=None if self._bp is None else self._bp.publish_failed,
                )
            )

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Unsubscribe from the backplane, stop the auto-recovery timer and the background
        threads, and close the distributed cache if the cache owns it (idempotent). In asyncio
        code prefer `close_async()`: it also closes the owned Redis client of the running loop."""
        l2 = self._shut_down()
        if l2 is not None:
            _close_quietly(l2, getattr(l2, "close", None))

    async def close_async(self) -> None:
        """`close()` for asyncio code (awaits the owned distributed cache's `close_async()`)."""
        l2 = self._shut_down()
        if l2 is not None:
            closer = getattr(l2, "close_async", None)
            if callable(closer):
                try:
                    await closer()
                except Exception:
                    logger.warning("closing %s failed", describe(l2), exc_info=True)
            else:
                _close_quietly(l2, getattr(l2, "close", None))

    def _shut_down(self) -> DistributedCache | None:
        """What both faces of close do; returns the distributed cache to close, if owned (and
        only the first time)."""
        if self._closed:
            return None
        self._closed = True
        if self._bp is not None:
            self._bp.recovery.close()
            self._bp.backplane.unsubscribe()
        self._executor.shutdown(wait=False)
        self._factory_executor.shutdown(wait=False)
        return self._l2.inner if self._l2 is not None and self._owns_l2 else None

    def __enter__(self) -> HybridCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> HybridCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_async()

    # ---------------------------------------------------------------- introspection

    @property
    def memory_count(self) -> int:
        """How many entries L1 holds (fresh or stale)."""
        return len(self._memory)

    @property
    def auto_recovery_pending(self) -> list[str]:
        """Keys whose backplane message waits in the auto-recovery queue."""
        return [] if self._bp is None else self._bp.recovery.queue.keys()

    @property
    def distributed_cache_circuit_open(self) -> bool:
        """True while L2 is skipped after an outage."""
        return self._l2 is not None and self._l2.breaker.is_open

    @property
    def closed(self) -> bool:
        """True once `close()` or `close_async()` was called."""
        return self._closed

    @property
    def stats(self) -> CacheStats:
        """The counters so far (a snapshot): hits and misses by level, stale values served,
        factory calls, errors and timeouts, evictions, backplane messages, L2 errors."""
        counts = self._counts
        return CacheStats(
            l1_hits=self._l1_hits,
            l1_misses=counts.l1_misses,
            l2_hits=counts.l2_hits,
            l2_misses=counts.l2_misses,
            stale_hits=counts.stale_hits,
            fail_safe_activations=counts.fail_safe_activations,
            factory_calls=counts.factory_calls,
            factory_errors=counts.factory_errors,
            factory_timeouts=counts.factory_timeouts,
            evictions=self._memory.evictions,
            backplane_sent=counts.backplane_sent,
            backplane_received=counts.backplane_received,
            backplane_errors=counts.backplane_errors,
            l2_errors=0 if self._l2 is None else self._l2.errors,
        )

    def health(self) -> Health:
        """OK; DEGRADED while the distributed cache is unreachable, the backplane is
        disconnected or messages wait in the auto-recovery queue; DOWN once closed. Reads
        state only (no I/O): cheap enough for every health-check request."""
        component = f"cache {self.options.name!r}"
        if self._closed:
            return Health.from_reasons(
                component, down=["closed (close() was called): build a new HybridCache"]
            )
        degraded: list[str] = []
        failing_since = None if self._l2 is None else self._l2.breaker.failing_since
        if self._l2 is not None and failing_since is not None:
            breaker = self._l2.breaker
            reason = (
                f"distributed cache ({self._l2.description}) unreachable since "
                f"{_when(failing_since)}"
            )
            until = breaker.open_until
            reason += (
                f", circuit open until {_when(until)}"
                if until is not None
                else ", probed again on the next call"
            )
            if breaker.last_error:
                reason += f" (last error: {breaker.last_error})"
            degraded.append(reason + "; values are served from memory and the factories")
        if self._bp is not None:
            connected = getattr(self._bp.backplane, "is_connected", None)
            since = self._bp.failing_since
            if connected is False or (connected is None and since is not None):
                reason = f"backplane ({type(self._bp.backplane).__name__}) disconnected"
                if since is not None:
                    reason += f" since {_when(since)} (last error: {self._bp.last_error})"
                degraded.append(reason + ": other instances are not told of changes made here")
            pending = 0 if self._bp is None else len(self._bp.recovery)
            if pending:
                degraded.append(
                    f"{pending} backplane message{'s wait' if pending > 1 else ' waits'} in the "
                    f"auto-recovery queue (retried every {self.options.auto_recovery_delay:g}s "
                    "and on reconnect): other instances may serve stale values for those keys"
                )
        return Health.from_reasons(component, degraded=degraded)

    # ---------------------------------------------------------------- get_or_set

    def get_or_set(
        self,
        key: str,
        factory: Factory[T],
        options: EntryOptions | None = None,
        *,
        tags: Iterable[str] | None = None,
        value_type: type[T] | None = None,
        fail_safe_default_value: Any = NO_DEFAULT,
    ) -> T:
        """The cached value of `key`, calling `factory()` (once, across threads and tasks) when
        there is none; a factory that takes one argument gets a `FactoryContext`. `tags` are
        stored with the value (`remove_by_tag`, `expire_by_tag`). `value_type` structures values
        read back from L2 (attrs classes). `fail_safe_default_value`: served (not stored) when
        the factory fails with fail-safe on and no stale value to serve."""
        value = self._fresh_hit(key, options)
        if value is not _MISS:
            return cast(T, value)
        load = Load(factory, normalize_tags(tags), value_type, fail_safe_default_value)
        return cast(T, self._get_or_set_slow(key, load, options))

    async def get_or_set_async(
        self,
        key: str,
        factory: AsyncFactory[T],
        options: EntryOptions | None = None,
        *,
        tags: Iterable[str] | None = None,
        value_type: type[T] | None = None,
        fail_safe_default_value: Any = NO_DEFAULT,
    ) -> T:
        """`get_or_set` for asyncio: `factory` may be `async def` (awaited on this loop) or a
        plain callable (run in a worker thread so the loop never blocks)."""
        value = self._fresh_hit(key, options)
        if value is not _MISS:
            return cast(T, value)
        load = Load(factory, normalize_tags(tags), value_type, fail_safe_default_value)
        return cast(T, await self._get_or_set_slow_async(key, load, options))

    def _fresh_hit(self, key: str, options: EntryOptions | None) -> Any:
        """The L1 hit path of both faces: no lock, no loop; `_MISS` unless fresh in L1.

        Counts the hit (one int increment); events and stale values take `_l1_hit`."""
        try:
            entry = self._l1.get(key)
            if (
                entry is not None
                and self._clock() < entry.refresh_at
                and (options is None or not options.skip_memory_cache)
            ):
                self._l1.move_to_end(key)
                if entry.stale or self._hit_watched:
                    self._l1_hit(key, entry)
                else:
                    self._l1_hits += 1
                return entry.value
        except (TypeError, KeyError):
            pass
        return _MISS

    def _hit_handlers_changed(self, watched: bool) -> None:
        self._hit_watched = watched

    def _admit(
        self, key: str, load: Load, opts: EntryOptions, loop: asyncio.AbstractEventLoop | None
    ) -> tuple[Any, Flight | None, bool]:
        """`(value, None, False)` when L1 answers (starting an eager refresh when due), else
        `(None, flight, is_leader)`: the caller leads or follows the key's flight."""
        now = self._clock()
        entry, fresh = self._peek_fresh(key, opts, now)
        if fresh:
            assert entry is not None
            self._l1_hit(key, entry)
            if now >= entry.refresh_at:
                logger.debug("cache %r: eager refresh of %r", self.options.name, key)
                self._start_eager_refresh(key, load, opts, loop)
            return entry.value, None, False
        self._l1_miss(key)
        flight, leader = self._flights.join(key, loop)
        if not leader:
            logger.debug("cache %r: %r is loading already: waiting for it", self.options.name, key)
        return None, flight, leader

    def _get_or_set_slow(self, key: str, load: Load, options: EntryOptions | None) -> Any:
        opts = self._opts(options)
        while True:
            value, flight, leader = self._admit(key, load, opts, None)
            if flight is None:
                return value
            if leader:
                gen = self._load(key, load, opts)
                return self._flights.lead_sync(key, flight, functools.partial(self._run_sync, gen))
            value = flight.follow_sync(key)
            if value is not RETRY:
                return value

    async def _get_or_set_slow_async(
        self, key: str, load: Load, options: EntryOptions | None
    ) -> Any:
        opts = self._opts(options)
        loop = asyncio.get_running_loop()
        while True:
            value, flight, leader = self._admit(key, load, opts, loop)
            if flight is None:
                return value
            if leader:
                gen = self._load(key, load, opts)
                return await self._flights.lead_async(key, flight, self._run_async(gen))
            value = await flight.wait(loop)
            if value is not RETRY:
                return value

    # ---------------------------------------------------------------- eager refresh

    def _start_eager_refresh(
        self, key: str, load: Load, opts: EntryOptions, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        """Reload `key` in the background (a worker thread, or a task on `loop`)."""
        flight, leader = self._flights.join(key, loop)
        if not leader:
            return
        gen = self._load(key, load, opts, eager=True)
        if loop is None:
            future = self._executor.submit(
                self._flights.lead_sync, key, flight, functools.partial(self._run_sync, gen)
            )
            future.add_done_callback(log_background_failure)
        else:
            self._io.spawn(self._flights.lead_async(key, flight, self._run_async(gen)))

    # ---------------------------------------------------------------- public operations

    def get(
        self,
        key: str,
        default: T | None = None,
        options: EntryOptions | None = None,
        *,
        value_type: type[T] | None = None,
        allow_stale: bool = False,
    ) -> T | None:
        """The fresh value of `key` (L1, then L2), or `default`. Never calls a factory.
        `allow_stale`: with no fresh value, a stale one (kept for fail-safe) rather than
        `default`."""
        read = self._read(key, self._opts(options), value_type, allow_stale)
        found = self._run_sync(read)
        return found.value if found.has_value else default

    async def get_async(
        self,
        key: str,
        default: T | None = None,
        options: EntryOptions | None = None,
        *,
        value_type: type[T] | None = None,
        allow_stale: bool = False,
    ) -> T | None:
        read = self._read(key, self._opts(options), value_type, allow_stale)
        found = await self._run_async(read)
        return found.value if found.has_value else default

    def try_get(
        self,
        key: str,
        options: EntryOptions | None = None,
        *,
        value_type: type[T] | None = None,
        allow_stale: bool = False,
    ) -> MaybeValue[T]:
        """`MaybeValue(has_value, value)` for `key` (L1, then L2; a stale value too with
        `allow_stale`)."""
        return self._run_sync(self._read(key, self._opts(options), value_type, allow_stale))

    async def try_get_async(
        self,
        key: str,
        options: EntryOptions | None = None,
        *,
        value_type: type[T] | None = None,
        allow_stale: bool = False,
    ) -> MaybeValue[T]:
        return await self._run_async(self._read(key, self._opts(options), value_type, allow_stale))

    def set(
        self,
        key: str,
        value: Any,
        options: EntryOptions | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Store `value` (with `tags`) in L1 and L2; other instances mark their copies stale."""
        check_key(key)
        self._run_sync(self._store(key, value, self._opts(options), normalize_tags(tags)))

    async def set_async(
        self,
        key: str,
        value: Any,
        options: EntryOptions | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        check_key(key)
        await self._run_async(self._store(key, value, self._opts(options), normalize_tags(tags)))

    def remove(self, key: str, options: EntryOptions | None = None) -> None:
        """Delete `key` here, in L2 and on every other instance (`skip_memory_cache` leaves this
        instance's memory alone, `skip_distributed_cache` L2)."""
        self._run_sync(self._remove(key, self._opts(options)))

    async def remove_async(self, key: str, options: EntryOptions | None = None) -> None:
        await self._run_async(self._remove(key, self._opts(options)))

    def expire(self, key: str, options: EntryOptions | None = None) -> None:
        """Mark `key` stale here and on every other instance: with fail-safe on (in `options`)
        the value is kept as a fallback, otherwise removed. The L2 copy is removed, so the next
        read calls the factory. This is the call a job uses after changing data."""
        self._run_sync(self._expire(key, self._opts(options)))

    async def expire_async(self, key: str, options: EntryOptions | None = None) -> None:
        await self._run_async(self._expire(key, self._opts(options)))

    def remove_by_tag(self, tag: str, options: EntryOptions | None = None) -> None:
        """Remove every entry carrying `tag`, here, in L2 and on every other instance (also
        those that start later: the mark is kept in L2)."""
        self._run_sync(self._by_tag(tag, True, self._opts(options)))

    async def remove_by_tag_async(self, tag: str, options: EntryOptions | None = None) -> None:
        await self._run_async(self._by_tag(tag, True, self._opts(options)))

    def expire_by_tag(self, tag: str, options: EntryOptions | None = None) -> None:
        """Expire every entry carrying `tag` everywhere, as `remove_by_tag`, but values made
        with fail-safe are kept as fallbacks."""
        self._run_sync(self._by_tag(tag, False, self._opts(options)))

    async def expire_by_tag_async(self, tag: str, options: EntryOptions | None = None) -> None:
        await self._run_async(self._by_tag(tag, False, self._opts(options)))

    def clear(self, allow_fail_safe: bool = True) -> None:
        """Expire (`allow_fail_safe`) or remove every entry, here and on every other instance.
        L2 values written before the clear are no longer served as fresh by any instance, also
        one that starts later (a clear mark is kept in L2)."""
        self._run_sync(self._clear(allow_fail_safe))

    async def clear_async(self, allow_fail_safe: bool = True) -> None:
        await self._run_async(self._clear(allow_fail_safe))

    def cached(
        self,
        key: str | Callable[..., str] | None = None,
        *,
        tags: Iterable[str] | Callable[..., Iterable[str]] | None = None,
        options: EntryOptions | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function (sync or `async def`) so its result is cached: see
        `cache._decorator` for how the key and tags are made from the arguments."""
        return cached(self, key, tags, options)

    # ---------------------------------------------------------------- auto-recovery

    def _on_backplane_connected(self, info: BackplaneConnectionInfo) -> None:
        if self._bp is not None:
            self._bp.connected()

    def process_auto_recovery(self) -> int:
        """Publish what the auto-recovery queue holds; returns how many went out. Runs by
        itself when the backplane reports it is connected again, after a publish succeeds, and
        every `auto_recovery_delay` while the queue is not empty."""
        return 0 if self._bp is None else self._bp.recovery.process()


def _redis_from_url(url: str) -> DistributedCache:
    try:
        from .redis import RedisDistributedCache
    except ImportError as exc:  # pragma: no cover - the redis extra is missing
        raise ImportError(
            f"a Redis URL as distributed_cache needs redis-py: pip install "
            f"'eventbroker-cache[redis]' ({exc})"
        ) from None
    return RedisDistributedCache(url)


def _close_quietly(store: object, close: object) -> None:
    if callable(close):
        try:
            close()
        except Exception:
            logger.warning("closing %s failed", describe(store), exc_info=True)


def _when(timestamp: float) -> str:
    """A clock reading as UTC ISO 8601 (``2025-01-31T12:00:00Z``)."""
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:.0f}s"
