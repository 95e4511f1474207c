"""`HybridCache`: L1 memory + optional L2 + optional backplane, with FusionCache's semantics.

One implementation, two faces. Every operation that may do I/O is written once as a generator
that *yields steps* (read L2, write L2, publish, call the factory, finish in the background)
and receives their results; `_run_sync` executes the steps with blocking calls, `_run_async`
awaits them. The L1 hit path of `get_or_set` / `get_or_set_async` runs no generator, takes no
lock and touches no event loop: one dict lookup, one clock read and comparison.

Stampede protection: one "flight" per key, a `concurrent.futures.Future` in a dict guarded by a
lock (taken only on a miss). The first caller leads (runs the load); every later caller of the
same key, sync thread or async task, waits for the leader's result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

import attrs

from ._backplane import (
    AutoRecoveryQueue,
    Backplane,
    BackplaneConnectionInfo,
    BackplaneMessage,
    BackplaneMessageAction,
    BackplaneSubscriptionOptions,
)
from ._distributed import CircuitBreaker, DistributedCache, GuardedDistributedCache, describe
from ._errors import FactoryTimeoutError
from ._health import Health
from ._keys import check_key
from ._memory import NEVER, Entry, MemoryCache
from ._options import CacheOptions, EntryOptions
from ._redact import redact_text
from ._serialization import DistributedEntry, JsonSerializer, Serializer, decode_entry, encode_entry
from ._signal import Signal
from ._stats import CacheEventArgs, CacheEvents, CacheLevel, CacheStats, emit

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MISS: Any = object()
"""`_fresh_hit` found nothing fresh in L1 (a cached value may be None)."""
Clock = Callable[[], float]

# --------------------------------------------------------------------------------------------
# Steps: what the core generators ask their driver to do. Each knows its sync and async form.


class _Step:
    __slots__ = ()

    def run_sync(self, cache: HybridCache) -> Any:
        raise NotImplementedError

    async def run_async(self, cache: HybridCache) -> Any:
        raise NotImplementedError


class _L2Get(_Step):
    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def run_sync(self, cache: HybridCache) -> bytes | None:
        assert cache._l2 is not None
        return cache._l2.get(self.key)

    async def run_async(self, cache: HybridCache) -> bytes | None:
        assert cache._l2 is not None
        return await cache._l2.get_async(self.key)


class _L2Set(_Step):
    __slots__ = ("data", "key", "ttl")

    def __init__(self, key: str, data: bytes, ttl: float) -> None:
        self.key, self.data, self.ttl = key, data, ttl

    def run_sync(self, cache: HybridCache) -> bool:
        assert cache._l2 is not None
        return cache._l2.set(self.key, self.data, self.ttl)

    async def run_async(self, cache: HybridCache) -> bool:
        assert cache._l2 is not None
        return await cache._l2.set_async(self.key, self.data, self.ttl)


class _L2Remove(_Step):
    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def run_sync(self, cache: HybridCache) -> bool:
        assert cache._l2 is not None
        return cache._l2.remove(self.key)

    async def run_async(self, cache: HybridCache) -> bool:
        assert cache._l2 is not None
        return await cache._l2.remove_async(self.key)


class _Publish(_Step):
    __slots__ = ("message", "options")

    def __init__(self, message: BackplaneMessage, options: EntryOptions) -> None:
        self.message, self.options = message, options

    def run_sync(self, cache: HybridCache) -> None:
        assert cache._backplane is not None
        try:
            cache._backplane.publish(self.message, self.options)
        except Exception as exc:
            cache._publish_failed(self.message, self.options, exc)
        else:
            cache._publish_succeeded(self.message)

    async def run_async(self, cache: HybridCache) -> None:
        assert cache._backplane is not None
        try:
            await cache._backplane.publish_async(self.message, self.options)
        except Exception as exc:
            cache._publish_failed(self.message, self.options, exc)
        else:
            cache._publish_succeeded(self.message)


@attrs.frozen
class _Outcome:
    """How a factory call ended: a value, an error, or still running after the timeout."""

    value: Any = None
    error: BaseException | None = None
    pending: concurrent.futures.Future[Any] | asyncio.Future[Any] | None = None


class _CallFactory(_Step):
    __slots__ = ("factory", "timeout")

    def __init__(self, factory: Callable[[], Any], timeout: float | None) -> None:
        self.factory, self.timeout = factory, timeout

    def run_sync(self, cache: HybridCache) -> _Outcome:
        if self.timeout is None:
            try:
                return _Outcome(value=self.factory())
            except Exception as exc:
                return _Outcome(error=exc)
        future = cache._factory_executor.submit(self.factory)
        try:
            return _Outcome(value=future.result(self.timeout))
        except Exception:
            if not future.done():  # timed out: the factory keeps running
                return _Outcome(pending=future)
            error = future.exception()
            return _Outcome(error=error) if error is not None else _Outcome(value=future.result())

    async def run_async(self, cache: HybridCache) -> _Outcome:
        if self.timeout is None:
            try:
                return _Outcome(value=await cache._invoke_async(self.factory))
            except Exception as exc:
                return _Outcome(error=exc)
        task = asyncio.ensure_future(cache._invoke_async(self.factory))
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
            return _Outcome(pending=task)
        error = task.exception()
        return _Outcome(error=error) if error is not None else _Outcome(value=task.result())


class _CompleteInBackground(_Step):
    """A timed-out factory keeps running; when it succeeds its value is stored."""

    __slots__ = ("key", "options", "pending")

    def __init__(self, key: str, pending: Any, options: EntryOptions) -> None:
        self.key, self.pending, self.options = key, pending, options

    def run_sync(self, cache: HybridCache) -> None:
        def done(future: concurrent.futures.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                logger.warning("timed-out factory for %r failed in the background", self.key)
                return
            logger.debug("timed-out factory for %r completed in the background", self.key)
            cache._run_sync(cache._store(self.key, future.result(), self.options))

        self.pending.add_done_callback(done)

    async def run_async(self, cache: HybridCache) -> None:
        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                logger.warning("timed-out factory for %r failed in the background", self.key)
                return
            logger.debug("timed-out factory for %r completed in the background", self.key)
            cache._spawn(cache._run_async(cache._store(self.key, future.result(), self.options)))

        self.pending.add_done_callback(done)


_Gen = Generator[_Step, Any, T]

# --------------------------------------------------------------------------------------------


class _Flight:
    """One in-progress load of a key, shared by every caller of that key."""

    __slots__ = ("future", "loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        """The outcome, for followers on any thread or loop."""
        self.loop = loop
        """The async leader's loop (None for a sync leader)."""
        self.waiter: asyncio.Future[None] | None = None
        """A cheap wake-up for followers on the leader's own loop (made by the first of them)."""

    async def wait(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The leader's value (or error) for an async follower on `loop`."""
        if not self.future.done():
            if self.loop is loop:
                if self.waiter is None:
                    self.waiter = loop.create_future()
                # shield: a cancelled follower must not cancel the shared flight
                await asyncio.shield(self.waiter)
            else:
                await asyncio.shield(asyncio.wrap_future(self.future))
        return self.future.result()


class _Counts:
    """The counters of `HybridCache.stats` but the L1 hits (kept apart so the cache object keeps
    few attributes: CPython reads an object's first 30 attributes fastest)."""

    __slots__ = (
        "backplane_errors",
        "backplane_received",
        "backplane_sent",
        "factory_calls",
        "factory_errors",
        "factory_timeouts",
        "fail_safe_activations",
        "l1_misses",
        "l2_hits",
        "l2_misses",
        "stale_hits",
    )

    def __init__(self) -> None:
        self.l1_misses = self.l2_hits = self.l2_misses = self.stale_hits = 0
        self.fail_safe_activations = self.factory_calls = self.factory_errors = 0
        self.factory_timeouts = self.backplane_sent = self.backplane_received = 0
        self.backplane_errors = 0


class _Retry:
    """The leader was cancelled: followers try again (one of them leads)."""


_RETRY = _Retry()


@attrs.frozen
class MaybeValue(Generic[T]):
    """The result of `try_get`: `has_value` tells whether `value` means anything."""

    has_value: bool
    value: T | None = None


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


class HybridCache:
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
        self._memory = MemoryCache(self.options.max_entries)
        self._l1 = self._memory.entries
        self._hit_watched = False
        """Whether `events.hit` has handlers (read on the L1 hit path)."""
        self.events = CacheEvents(self.options.name, self._hit_handlers_changed)
        """FusionCache's events: hit, miss, stale_hit, fail_safe_activated, factory_error,
        factory_timeout, eviction, backplane_message_received (`subscribe(handler)`)."""
        self._memory.on_evict = self._evicted
        self._l1_hits = 0  # the L1 hit path's counter; the others are in `_counts`
        self._counts = _Counts()
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
        self._backplane = backplane
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.options.background_workers, thread_name_prefix=f"cache-{self.options.name}"
        )
        self._factory_executor = concurrent.futures.ThreadPoolExecutor(
            64, thread_name_prefix=f"cache-{self.options.name}-factory"
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recovery = AutoRecoveryQueue(self.options.auto_recovery_max_items, clock)
        self._replay_lock = threading.Lock()
        self._retry_lock = threading.Lock()
        self._retry_timer: threading.Timer | None = None
        self._cleared_at = NEVER
        self._closed = False
        self._backplane_failing_since: float | None = None
        self._backplane_last_error = ""
        if backplane is not None:
            backplane.subscribe(
                BackplaneSubscriptionOptions(
                    cache_name=self.options.name,
                    cache_instance_id=self.instance_id,
                    incoming_message_handler=self._on_backplane_message,
                    connect_handler=self._on_backplane_connected,
                    messages_lost_handler=self._on_backplane_messages_lost,
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
        with self._retry_lock:
            if self._closed:
                return None
            self._closed = True
            timer, self._retry_timer = self._retry_timer, None
        if timer is not None:
            timer.cancel()
        if self._backplane is not None:
            self._backplane.unsubscribe()
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
        return self._recovery.keys()

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
        if self._backplane is not None:
            connected = getattr(self._backplane, "is_connected", None)
            since = self._backplane_failing_since
            if connected is False or (connected is None and since is not None):
                reason = f"backplane ({type(self._backplane).__name__}) disconnected"
                if since is not None:
                    reason += f" since {_when(since)} (last error: {self._backplane_last_error})"
                degraded.append(reason + ": other instances are not told of changes made here")
            pending = len(self._recovery)
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
        factory: Callable[[], T],
        options: EntryOptions | None = None,
        *,
        value_type: type[T] | None = None,
    ) -> T:
        """The cached value of `key`, calling `factory()` (once, across threads and tasks) when
        there is none. `value_type` structures values read back from L2 (attrs classes)."""
        value = self._fresh_hit(key, options)
        if value is not _MISS:
            return cast(T, value)
        return cast(T, self._get_or_set_slow(key, factory, options, value_type))

    async def get_or_set_async(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]] | Callable[[], T],
        options: EntryOptions | None = None,
        *,
        value_type: type[T] | None = None,
    ) -> T:
        """`get_or_set` for asyncio: `factory` may be `async def` (awaited on this loop) or a
        plain callable (run in a worker thread so the loop never blocks)."""
        value = self._fresh_hit(key, options)
        if value is not _MISS:
            return cast(T, value)
        return cast(T, await self._get_or_set_slow_async(key, factory, options, value_type))

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

    # ---------------------------------------------------------------- counting and events

    def _hit_handlers_changed(self, watched: bool) -> None:
        self._hit_watched = watched

    def _l1_hit(self, key: str, entry: Entry) -> None:
        self._l1_hits += 1
        if entry.stale:
            self._counts.stale_hits += 1
            self._event(self.events.stale_hit, key, CacheLevel.L1)
        else:
            self._event(self.events.hit, key, CacheLevel.L1)

    def _l1_miss(self, key: str) -> None:
        self._counts.l1_misses += 1
        logger.debug("cache %r: %r not fresh in L1", self.options.name, key)
        self._event(self.events.miss, key, CacheLevel.L1)

    def _l2_result(self, key: str, hit: bool) -> None:
        if hit:
            self._counts.l2_hits += 1
        else:
            self._counts.l2_misses += 1
        logger.debug(
            "cache %r: %r %s in L2", self.options.name, key, "found" if hit else "not fresh"
        )
        self._event(self.events.hit if hit else self.events.miss, key, CacheLevel.L2)

    def _event(
        self,
        signal: Signal[CacheEventArgs],
        key: str,
        level: CacheLevel | None = None,
        error: BaseException | None = None,
    ) -> None:
        if signal._sync or signal._async:
            emit(signal, CacheEventArgs(self.options.name, key, level, error))

    def _evicted(self, key: str) -> None:
        logger.debug("cache %r: evicted %r from L1 (max_entries)", self.options.name, key)
        self._event(self.events.eviction, key, CacheLevel.L1)

    def _peek_fresh(self, key: str, options: EntryOptions, now: float) -> tuple[Entry | None, bool]:
        """(entry, True) when L1 can answer now (eager refresh is due once `now >= refresh_at`);
        (stale entry or None, False) otherwise, once the key is known to be valid: only valid
        keys are ever stored, so a hit needs no check."""
        try:
            entry = None if options.skip_memory_cache else self._memory.peek(key, now)
        except TypeError:  # unhashable: check_key says what is wrong
            entry = None
        if entry is not None and now < entry.logical_expiration:
            return entry, True
        check_key(key)
        return entry, False

    def _admit(
        self,
        key: str,
        factory: Callable[[], Any],
        opts: EntryOptions,
        value_type: type[Any] | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> tuple[Any, _Flight | None, bool]:
        """`(value, None, False)` when L1 answers (starting an eager refresh when due), else
        `(None, flight, is_leader)`: the caller leads or follows the key's flight."""
        now = self._clock()
        entry, fresh = self._peek_fresh(key, opts, now)
        if fresh:
            assert entry is not None
            self._l1_hit(key, entry)
            if now >= entry.refresh_at:
                logger.debug("cache %r: eager refresh of %r", self.options.name, key)
                self._start_eager_refresh(key, factory, opts, value_type, loop)
            return entry.value, None, False
        self._l1_miss(key)
        flight, leader = self._join_flight(key, loop)
        if not leader:
            logger.debug("cache %r: %r is loading already: waiting for it", self.options.name, key)
        return None, flight, leader

    def _get_or_set_slow(
        self,
        key: str,
        factory: Callable[[], Any],
        options: EntryOptions | None,
        value_type: type[Any] | None,
    ) -> Any:
        opts = self._opts(options)
        while True:
            value, flight, leader = self._admit(key, factory, opts, value_type, None)
            if flight is None:
                return value
            if leader:
                return self._lead_sync(key, flight, self._load(key, factory, opts, value_type))
            value = self._follow_sync(key, flight)
            if value is not _RETRY:
                return value

    async def _get_or_set_slow_async(
        self,
        key: str,
        factory: Callable[[], Any],
        options: EntryOptions | None,
        value_type: type[Any] | None,
    ) -> Any:
        opts = self._opts(options)
        loop = asyncio.get_running_loop()
        while True:
            value, flight, leader = self._admit(key, factory, opts, value_type, loop)
            if flight is None:
                return value
            if leader:
                return await self._lead_async(
                    key, flight, self._load(key, factory, opts, value_type)
                )
            value = await flight.wait(loop)
            if value is not _RETRY:
                return value

    # ---------------------------------------------------------------- flights (stampede)

    def _join_flight(
        self, key: str, loop: asyncio.AbstractEventLoop | None
    ) -> tuple[_Flight, bool]:
        with self._flights_lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = _Flight(loop)
            return flight, True

    def _land(
        self, key: str, flight: _Flight, error: BaseException | None, value: Any = None
    ) -> None:
        """End the flight: followers get the value, the error, or (leader cancelled) a retry."""
        with self._flights_lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        if error is None:
            flight.future.set_result(value)
        elif isinstance(error, Exception):
            flight.future.set_exception(error)
        else:
            flight.future.set_result(_RETRY)
        if flight.waiter is not None:  # async leader: we are on its loop
            flight.waiter.set_result(None)

    def _lead_sync(self, key: str, flight: _Flight, gen: _Gen[Any]) -> Any:
        try:
            value = self._run_sync(gen)
        except BaseException as exc:
            self._land(key, flight, exc)
            raise
        self._land(key, flight, None, value)
        return value

    async def _lead_async(self, key: str, flight: _Flight, gen: _Gen[Any]) -> Any:
        try:
            value = await self._run_async(gen)
        except BaseException as exc:
            self._land(key, flight, exc)
            raise
        self._land(key, flight, None, value)
        return value

    def _follow_sync(self, key: str, flight: _Flight) -> Any:
        if flight.loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is flight.loop:
                raise RuntimeError(
                    f"get_or_set({key!r}) was called from inside the event loop while "
                    "get_or_set_async loads the same key on it: this would deadlock; "
                    "use get_or_set_async in async code"
                )
        return flight.future.result()

    # ---------------------------------------------------------------- eager refresh

    def _start_eager_refresh(
        self,
        key: str,
        factory: Callable[[], Any],
        opts: EntryOptions,
        value_type: type[Any] | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """Reload `key` in the background (a worker thread, or a task on `loop`)."""
        flight, leader = self._join_flight(key, loop)
        if not leader:
            return
        gen = self._load(key, factory, opts, value_type, eager=True)
        if loop is None:
            future = self._executor.submit(self._lead_sync, key, flight, gen)
            future.add_done_callback(_log_background_failure)
        else:
            self._spawn(self._lead_async(key, flight, gen))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                logger.exception("background cache work failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- drivers

    def _run_sync(self, gen: _Gen[T]) -> T:
        sent: Any = None
        try:
            while True:
                sent = gen.send(sent).run_sync(self)
        except StopIteration as stop:
            return cast(T, stop.value)

    async def _run_async(self, gen: _Gen[T]) -> T:
        sent: Any = None
        try:
            while True:
                sent = await gen.send(sent).run_async(self)
        except StopIteration as stop:
            return cast(T, stop.value)

    async def _invoke_async(self, factory: Callable[[], Any]) -> Any:
        if _is_async_callable(factory):
            return await factory()
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(self._factory_executor, factory)
        if inspect.isawaitable(value):
            value = await value
        return value

    # ---------------------------------------------------------------- the core (written once)

    def _from_l2(
        self, key: str, data: bytes | None, value_type: type[Any] | None
    ) -> DistributedEntry | None:
        if data is None:
            return None
        return decode_entry(self._serializer, data, value_type, key)

    def _keep_from_l2(
        self, key: str, dist: DistributedEntry, now: float, opts: EntryOptions
    ) -> None:
        """Put a fresh L2 value into L1 (fresh no longer than `duration` from now)."""
        if not opts.skip_memory_cache:
            logical = min(dist.logical_expiration, now + opts.duration)
            entry = Entry.create(dist.value, dist.timestamp, now, opts, logical_expiration=logical)
            self._memory.put(key, entry)

    def _l2_is_fresh(self, dist: DistributedEntry, local: Entry | None, now: float) -> bool:
        """An L2 value is served as fresh when it is not expired, not older than the local copy,
        and not older than an invalidation (a message, a clear) this cache has seen."""
        if dist.logical_expiration <= now or dist.timestamp <= self._cleared_at:
            return False
        return local is None or (
            dist.timestamp >= local.timestamp and dist.timestamp > local.invalidated_at
        )

    def _load(
        self,
        key: str,
        factory: Callable[[], Any],
        opts: EntryOptions,
        value_type: type[Any] | None,
        eager: bool = False,
    ) -> _Gen[Any]:
        """The miss path of `get_or_set` (the caller leads the key's flight)."""
        now = self._clock()
        entry = None if opts.skip_memory_cache else self._memory.peek(key, now)
        if not eager and entry is not None and now < entry.logical_expiration:
            return entry.value  # loaded by the flight before ours
        fallback = entry if opts.is_fail_safe_enabled else None

        if self._l2 is not None and not opts.skip_distributed_cache:
            dist = self._from_l2(key, (yield _L2Get(key)), value_type)
            found = dist is not None and (
                self._l2_is_fresh(dist, entry, now)
                and not (eager and entry is not None and dist.timestamp <= entry.timestamp)
            )
            if not eager:  # an eager refresh is no caller's read
                self._l2_result(key, found)
            if found:
                assert dist is not None
                self._keep_from_l2(key, dist, now, opts)
                return dist.value
            if (
                dist is not None
                and opts.is_fail_safe_enabled
                and (fallback is None or dist.timestamp > fallback.timestamp)
            ):
                fallback = Entry.create(
                    dist.value, dist.timestamp, now, opts, logical_expiration=now
                )

        timeout = opts.factory_hard_timeout
        if fallback is not None and opts.factory_soft_timeout is not None:
            timeout = opts.factory_soft_timeout
        self._counts.factory_calls += 1
        logger.debug(
            "cache %r: calling the factory of %r (timeout %s)",
            self.options.name,
            key,
            None if eager else timeout,
        )
        outcome: _Outcome = yield _CallFactory(factory, None if eager else timeout)
        if outcome.error is None and outcome.pending is None:
            logger.debug("cache %r: the factory of %r returned a value", self.options.name, key)
            yield from self._store(key, outcome.value, opts)
            return outcome.value

        if outcome.pending is not None:
            if opts.allow_timed_out_factories_background_completion:
                yield _CompleteInBackground(key, outcome.pending, opts)
            which = (
                "soft" if fallback is not None and timeout == opts.factory_soft_timeout else "hard"
            )
            error: BaseException = FactoryTimeoutError(
                f"the factory for cache key {key!r} did not finish within the {which} timeout "
                f"({timeout}s)"
            )
            self._counts.factory_timeouts += 1
            logger.debug("cache %r: %s", self.options.name, error)
            self._event(self.events.factory_timeout, key, error=error)
        else:
            assert outcome.error is not None
            error = outcome.error
            self._counts.factory_errors += 1
            logger.debug(
                "cache %r: the factory of %r raised %s: %s",
                self.options.name,
                key,
                type(error).__name__,
                error,
            )
            self._event(self.events.factory_error, key, error=error)
        if eager:
            logger.warning("eager refresh of %r failed (%s); keeping the current value", key, error)
            return _RETRY  # anyone who joined meanwhile loads the normal way
        if fallback is not None:
            logger.warning(
                "fail-safe: serving the stale value of %r for %.3gs (%s: %s)",
                key,
                opts.fail_safe_throttle_duration,
                type(error).__name__,
                error,
            )
            if not opts.skip_memory_cache:
                self._memory.put(key, fallback.throttled(self._clock(), opts))
            self._counts.fail_safe_activations += 1
            self._counts.stale_hits += 1
            self._event(self.events.fail_safe_activated, key, error=error)
            self._event(self.events.stale_hit, key, CacheLevel.L1)
            return fallback.value
        if isinstance(error, FactoryTimeoutError):
            raise FactoryTimeoutError(
                f"{error} and there is no stale value to serve: raise factory_hard_timeout, or "
                "enable is_fail_safe_enabled so the last good value can be used"
            )
        raise error

    def _store(self, key: str, value: Any, opts: EntryOptions) -> _Gen[None]:
        """Set `value` in L1, L2 and tell the other instances."""
        now = self._clock()
        if not opts.skip_memory_cache:
            self._memory.put(key, Entry.create(value, now, now, opts))
        writes_l2 = self._l2 is not None and not opts.skip_distributed_cache
        logger.debug(
            "cache %r: storing %r (L1%s)",
            self.options.name,
            key,
            " and L2" if writes_l2 else "",
        )
        if self._l2 is not None and not opts.skip_distributed_cache:
            duration = opts.distributed_cache_duration
            logical = opts.duration if duration is None else duration
            ttl = (
                max(logical, opts.fail_safe_max_duration) if opts.is_fail_safe_enabled else logical
            )
            try:
                data = encode_entry(self._serializer, DistributedEntry(value, now, now + logical))
            except Exception as exc:
                logger.warning(
                    "the value of %r cannot be serialized for the distributed cache (%s: %s): "
                    "kept in memory only, and the older L2 copy is removed",
                    key,
                    type(exc).__name__,
                    exc,
                )
                yield _L2Remove(key)
            else:
                yield _L2Set(key, data, ttl)
        yield from self._notify(key, BackplaneMessageAction.ENTRY_SET, now, opts)

    def _notify(
        self, key: str, action: BackplaneMessageAction, now: float, opts: EntryOptions
    ) -> _Gen[None]:
        if self._backplane is not None and not opts.skip_backplane_notifications:
            message = BackplaneMessage(
                cache_key=key, action=action, source_id=self.instance_id, timestamp=now
            )
            yield _Publish(message, opts)

    def _read(
        self, key: str, opts: EntryOptions, value_type: type[Any] | None
    ) -> _Gen[MaybeValue[Any]]:
        now = self._clock()
        entry, fresh = self._peek_fresh(key, opts, now)
        if fresh:
            assert entry is not None
            self._l1_hit(key, entry)
            return MaybeValue(True, entry.value)
        self._l1_miss(key)
        if self._l2 is not None and not opts.skip_distributed_cache:
            dist = self._from_l2(key, (yield _L2Get(key)), value_type)
            if dist is not None and self._l2_is_fresh(dist, entry, now):
                self._l2_result(key, True)
                self._keep_from_l2(key, dist, now, opts)
                return MaybeValue(True, dist.value)
            self._l2_result(key, False)
        return MaybeValue(False)

    def _remove(self, key: str, opts: EntryOptions) -> _Gen[None]:
        check_key(key)
        now = self._clock()
        self._memory.remove(key)
        if self._l2 is not None and not opts.skip_distributed_cache:
            yield _L2Remove(key)
        yield from self._notify(key, BackplaneMessageAction.ENTRY_REMOVE, now, opts)

    def _expire(self, key: str, opts: EntryOptions) -> _Gen[None]:
        check_key(key)
        now = self._clock()
        entry = self._memory.entries.get(key)
        if entry is not None:
            if opts.is_fail_safe_enabled:
                self._memory.replace_if(key, entry, entry.expired(now, now))
            else:
                self._memory.remove_if(key, entry)
        if self._l2 is not None and not opts.skip_distributed_cache:
            yield _L2Remove(key)
        yield from self._notify(key, BackplaneMessageAction.ENTRY_EXPIRE, now, opts)

    def _clear(self, allow_fail_safe: bool) -> _Gen[None]:
        now = self._clock()
        self._cleared_at = max(self._cleared_at, now)
        if allow_fail_safe:
            self._expire_all_local(float("inf"), now)
        else:
            self._memory.clear()
        yield from self._notify("", BackplaneMessageAction.CLEAR, now, self._default_options)

    def _opts(self, options: EntryOptions | None) -> EntryOptions:
        return options if options is not None else self._default_options

    # ---------------------------------------------------------------- public operations

    def get(
        self,
        key: str,
        default: T | None = None,
        options: EntryOptions | None = None,
        *,
        value_type: type[T] | None = None,
    ) -> T | None:
        """The fresh value of `key` (L1, then L2), or `default`. Never calls a factory."""
        found = self._run_sync(self._read(key, self._opts(options), value_type))
        return found.value if found.has_value else default

    async def get_async(
        self,
        key: str,
        default: T | None = None,
        options: EntryOptions | None = None,
        *,
        value_type: type[T] | None = None,
    ) -> T | None:
        found = await self._run_async(self._read(key, self._opts(options), value_type))
        return found.value if found.has_value else default

    def try_get(
        self, key: str, options: EntryOptions | None = None, *, value_type: type[T] | None = None
    ) -> MaybeValue[T]:
        """`MaybeValue(has_value, value)` for `key` (L1, then L2)."""
        return self._run_sync(self._read(key, self._opts(options), value_type))

    async def try_get_async(
        self, key: str, options: EntryOptions | None = None, *, value_type: type[T] | None = None
    ) -> MaybeValue[T]:
        return await self._run_async(self._read(key, self._opts(options), value_type))

    def set(self, key: str, value: Any, options: EntryOptions | None = None) -> None:
        """Store `value` in L1 and L2; other instances mark their copies stale."""
        check_key(key)
        self._run_sync(self._store(key, value, self._opts(options)))

    async def set_async(self, key: str, value: Any, options: EntryOptions | None = None) -> None:
        check_key(key)
        await self._run_async(self._store(key, value, self._opts(options)))

    def remove(self, key: str, options: EntryOptions | None = None) -> None:
        """Delete `key` here, in L2 and on every other instance."""
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

    def clear(self, allow_fail_safe: bool = True) -> None:
        """Expire (`allow_fail_safe`) or remove every entry, here and on every other instance.
        L2 values written before the clear are no longer served as fresh by this cache."""
        self._run_sync(self._clear(allow_fail_safe))

    async def clear_async(self, allow_fail_safe: bool = True) -> None:
        await self._run_async(self._clear(allow_fail_safe))

    # ---------------------------------------------------------------- backplane, incoming

    def _expire_all_local(self, older_than: float, invalidated_at: float | None) -> None:
        """Expire every entry made before `older_than`. `invalidated_at`: L2 values up to that
        time are stale too; `None`: only L2 values newer than each entry's own are fresh."""
        now = self._clock()
        for key, entry in self._memory.items():
            if entry.timestamp < older_than:
                at = entry.timestamp if invalidated_at is None else invalidated_at
                self._invalidate(key, entry, now, at)

    def _invalidate(self, key: str, entry: Entry, now: float, invalidated_at: float) -> None:
        if entry.keeps_stale_value:
            self._memory.replace_if(key, entry, entry.expired(now, invalidated_at))
        else:
            self._memory.remove_if(key, entry)

    def _on_backplane_message(self, message: BackplaneMessage) -> None:
        """Apply another instance's change to L1 (called from the backplane's thread)."""
        if message.source_id == self.instance_id:
            return
        self._counts.backplane_received += 1
        logger.debug(
            "cache %r: backplane message %s for %r from %s",
            self.options.name,
            message.action.name,
            message.cache_key,
            message.source_id or "a publisher without a cache",
        )
        signal = self.events.backplane_message_received
        if signal._sync or signal._async:
            emit(signal, message)
        if not self._recovery.accept_incoming(message):
            logger.debug(
                "ignored %s for %r: a newer local one is queued", message.action, message.cache_key
            )
            return
        if message.action is BackplaneMessageAction.CLEAR:
            self._cleared_at = max(self._cleared_at, message.timestamp)
            self._expire_all_local(message.timestamp, message.timestamp)
            return
        entry = self._memory.entries.get(message.cache_key)
        if entry is None or entry.timestamp >= message.timestamp:
            return
        if message.action is BackplaneMessageAction.ENTRY_REMOVE:
            self._memory.remove_if(message.cache_key, entry)
        elif message.action is BackplaneMessageAction.ENTRY_SET:
            # a newer value is in L2: anything newer than our copy may be served
            self._invalidate(message.cache_key, entry, self._clock(), entry.timestamp)
        else:  # ENTRY_EXPIRE: L2 values up to the message's time are stale too
            self._invalidate(message.cache_key, entry, self._clock(), message.timestamp)

    def _on_backplane_messages_lost(self) -> None:
        """An invalidation may have been lost: expire every local entry (values kept for
        fail-safe); the next read takes a newer L2 value if there is one, else calls the factory."""
        logger.warning(
            "cache %r: backplane messages may have been lost; expiring every local entry "
            "(values kept for fail-safe)",
            self.options.name,
        )
        self._expire_all_local(float("inf"), None)

    # ---------------------------------------------------------------- auto-recovery

    def _publish_failed(
        self, message: BackplaneMessage, options: EntryOptions, exc: Exception
    ) -> None:
        self._counts.backplane_errors += 1
        if isinstance(exc, TypeError | ValueError):  # the message itself is bad: retry won't help
            logger.error(
                "backplane refused %s for %r (%s); not queued",
                message.action.name,
                message.cache_key,
                _describe_error(exc),
            )
            return
        first = self._backplane_failing_since is None
        self._backplane_failed(exc)
        # one warning per outage, not one per write: the rest wait in the queue quietly (the
        # replay logs how many it published; health() shows the backlog meanwhile)
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "backplane publish of %s for %r failed (%s); queued for auto-recovery",
            message.action.name,
            message.cache_key,
            self._backplane_last_error,
        )
        self._recovery.enqueue(message, options)
        self._schedule_retry()

    def _backplane_failed(self, exc: Exception) -> None:
        if self._backplane_failing_since is None:
            self._backplane_failing_since = self._clock()
        self._backplane_last_error = _describe_error(exc)

    def _schedule_retry(self) -> None:
        """Retry the queue after `auto_recovery_delay` (one timer at a time; real time)."""
        with self._retry_lock:
            if self._retry_timer is not None or self._closed:
                return
            timer = threading.Timer(self.options.auto_recovery_delay, self._retry_due)
            timer.name = f"cache-{self.options.name}-auto-recovery"
            timer.daemon = True
            self._retry_timer = timer
        timer.start()

    def _retry_due(self) -> None:
        with self._retry_lock:
            self._retry_timer = None
            if self._closed:
                return
        self.process_auto_recovery()
        if len(self._recovery):
            self._schedule_retry()

    def _publish_succeeded(self, message: BackplaneMessage) -> None:
        self._counts.backplane_sent += 1
        logger.debug(
            "cache %r: told the other instances %s for %r (backplane)",
            self.options.name,
            message.action.name,
            message.cache_key,
        )
        self._backplane_failing_since = None
        if len(self._recovery) and not self._replay_lock.locked():
            self._submit_replay()

    def _on_backplane_connected(self, info: BackplaneConnectionInfo) -> None:
        self._backplane_failing_since = None
        if len(self._recovery):
            self._submit_replay()

    def _submit_replay(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # shut down meanwhile
            self._executor.submit(self.process_auto_recovery).add_done_callback(
                _log_background_failure
            )

    def process_auto_recovery(self) -> int:
        """Publish what the auto-recovery queue holds; returns how many went out. Runs by
        itself when the backplane reports it is connected again, after a publish succeeds, and
        every `auto_recovery_delay` while the queue is not empty."""
        backplane = self._backplane
        if backplane is None or not self._replay_lock.acquire(blocking=False):
            return 0
        try:
            items = self._recovery.take()
            for index, item in enumerate(items):
                try:
                    backplane.publish(item.message, item.options)
                except Exception as exc:
                    self._counts.backplane_errors += 1
                    self._recovery.put_back(items[index:])
                    self._backplane_failed(exc)
                    logger.info(
                        "auto-recovery paused after %d item(s): %s", index, _describe_error(exc)
                    )
                    return index
                self._counts.backplane_sent += 1
            if items:
                self._backplane_failing_since = None
                logger.info("auto-recovery published %d queued message(s)", len(items))
            return len(items)
        finally:
            self._replay_lock.release()


def _redis_from_url(url: str) -> DistributedCache:
    try:
        from .redis import RedisDistributedCache
    except ImportError as exc:  # pragma: no cover - the redis extra is missing
        raise ImportError(
            f"a Redis URL as distributed_cache needs redis-py: pip install "
            f"'eventbroker-cache[redis]' ({exc})"
        ) from None
    return RedisDistributedCache(url)


def _describe_error(exc: BaseException) -> str:
    return redact_text(f"{type(exc).__name__}: {exc}")


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


def _log_background_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("background cache work failed", exc_info=future.exception())
