"""The core of `HybridCache`, written once for both faces: each operation that may do I/O is a
generator that yields steps (`_steps.py`: read L2, write L2, publish, call the factory, finish
in the background) and receives their results; the drivers (`_drivers.py`) execute them.
Also the counters and events of those operations."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

import attrs

from ._backplane import BackplaneMessage, BackplaneMessageAction
from ._backplane_accessor import BackplaneAccessor
from ._context import FactoryContext, normalize_tags, takes_context
from ._distributed import GuardedDistributedCache
from ._errors import FactoryTimeoutError
from ._flights import RETRY, Flights
from ._keys import check_key
from ._marks import CLEAR, NEVER, Marks, Verdict, decode_mark, encode_mark, marker_key
from ._memory import Entry, MemoryCache
from ._options import CacheOptions, EntryOptions
from ._serialization import DistributedEntry, Serializer, decode_entry, encode_entry
from ._signal import Signal
from ._stats import CacheEventArgs, CacheEvents, CacheLevel, emit
from ._steps import (
    AwaitPending,
    CallFactory,
    CompleteInBackground,
    Gen,
    InBackground,
    L2Get,
    L2Remove,
    L2Set,
    Outcome,
    Publish,
    Step,
)

logger = logging.getLogger("cache._hybrid")

T = TypeVar("T")

NO_DEFAULT: Any = object()
"""No `fail_safe_default_value` (None is a value); also "no stale value" in `_read`."""


class Counts:
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


class Load(NamedTuple):
    """What one `get_or_set` call asks to load."""

    factory: Callable[..., Any]
    tags: tuple[str, ...]
    value_type: type[Any] | None
    default: Any
    """`fail_safe_default_value` (`NO_DEFAULT`: none)."""


@attrs.frozen
class MaybeValue(Generic[T]):
    """The result of `try_get`: `has_value` tells whether `value` means anything."""

    has_value: bool
    value: T | None = None


class CacheCore:
    """The core operations (a base of `HybridCache`, which sets these attributes)."""

    options: CacheOptions
    instance_id: str
    events: CacheEvents
    _clock: Callable[[], float]
    _memory: MemoryCache
    _l1_hits: int
    _counts: Counts
    _default_options: EntryOptions
    _serializer: Serializer
    _l2: GuardedDistributedCache | None
    _bp: BackplaneAccessor | None
    _marks: Marks
    _flights: Flights

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
            self._memory.put(key, self._entry_from_l2(dist, now, opts, logical))

    def _l2_entry(
        self, key: str, value_type: type[Any] | None, now: float, timeout: float | None
    ) -> Gen[tuple[DistributedEntry | None, Verdict]]:
        """The L2 copy of `key` and what the marks (`_marks.py`) say of it; the marks it
        carries are read from L2 first when due."""
        dist = self._from_l2(key, (yield L2Get(key, timeout)), value_type)
        if dist is None:
            return None, Verdict.GONE
        yield from self._refresh_marks(dist.tags, now, timeout)
        return dist, self._marks.verdict(key, dist.timestamp, dist.tags)

    def _refresh_marks(self, tags: tuple[str, ...], now: float, timeout: float | None) -> Gen[None]:
        """Read the L2 markers of `tags` (and of clear) not read for a while; a newer mark
        invalidates the L1 entries it covers."""
        for tag in self._marks.due(tags, now):
            found = decode_mark((yield L2Get(marker_key(tag), timeout)))
            self._marks.tag(tag).checked_at = now
            if found is not None and self._marks.learn(tag, *found):
                self._apply_mark(tag)

    def _write_mark(self, tag: str, opts: EntryOptions) -> Gen[None]:
        """Store the mark of `tag` in L2 (merged with the one there), for the instances that
        start later or missed the backplane message."""
        if not self._writes_l2(opts):
            return
        key = marker_key(tag)
        timeout = opts.distributed_cache_hard_timeout
        found = decode_mark((yield L2Get(key, timeout)))
        if found is not None and self._marks.learn(tag, *found):
            self._apply_mark(tag)
        mark = self._marks.tag(tag)
        yield L2Set(
            key, encode_mark(mark.expired, mark.removed), self.options.marker_duration, timeout
        )

    def _apply_mark(self, tag: str) -> None:
        """Invalidate the L1 entries the mark of `tag` covers (`CLEAR`: every entry)."""
        mark = self._marks.tag(tag)
        now = self._clock()
        for key, entry in self._memory.items():
            if tag != CLEAR and tag not in entry.tags:
                continue
            if entry.timestamp <= mark.removed:
                self._memory.remove_if(key, entry)
            elif entry.timestamp <= mark.expired and entry.invalidated_at < mark.expired:
                self._invalidate(key, entry, now, mark.expired)

    def _l2_is_fresh(
        self, dist: DistributedEntry, verdict: Verdict, local: Entry | None, now: float
    ) -> bool:
        """An L2 value is served as fresh when it is not expired, not older than the local copy,
        and not older than an invalidation (a message, an expire, a tag, a clear) this cache
        has seen."""
        if verdict is not Verdict.FRESH or dist.logical_expiration <= now:
            return False
        return local is None or (
            dist.timestamp >= local.timestamp and dist.timestamp > local.invalidated_at
        )

    def _load(self, key: str, load: Load, opts: EntryOptions, eager: bool = False) -> Gen[Any]:
        """The miss path of `get_or_set` (the caller leads the key's flight)."""
        factory, tags, value_type, default = load
        now = self._clock()
        entry = None if opts.skip_memory_cache else self._memory.peek(key, now)
        if not eager and entry is not None and now < entry.logical_expiration:
            return entry.value  # loaded by the flight before ours
        older = entry  # the copy the factory context shows (and fail-safe may serve)

        if self._reads_l2(opts, entry):
            dist, verdict = yield from self._l2_entry(
                key, value_type, now, self._l2_read_timeout(opts, entry)
            )
            found = dist is not None and (
                self._l2_is_fresh(dist, verdict, entry, now)
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
                and verdict is not Verdict.GONE
                and (older is None or dist.timestamp > older.timestamp)
            ):
                older = self._entry_from_l2(dist, now, opts, logical_expiration=now)
        fallback = older if opts.is_fail_safe_enabled else None

        timeout = opts.factory_hard_timeout
        if fallback is not None and opts.factory_soft_timeout is not None:
            timeout = opts.factory_soft_timeout
        if eager:
            timeout = None
        running = self._flights.running(key)
        if running is not None:  # a timed-out call still runs: wait for it, call no other
            logger.debug(
                "cache %r: the factory of %r still runs in the background: waiting for it",
                self.options.name,
                key,
            )
            call, ctx = running
            outcome: Outcome = yield AwaitPending(call, timeout)
        else:
            ctx = FactoryContext(key, opts, tags)
            if older is not None:
                ctx.has_stale_value, ctx.stale_value = True, older.value
                ctx.etag, ctx.last_modified = older.etag, older.last_modified
            self._counts.factory_calls += 1
            logger.debug(
                "cache %r: calling the factory of %r (timeout %s)", self.options.name, key, timeout
            )
            bound = functools.partial(factory, ctx) if takes_context(factory) else factory
            outcome = yield CallFactory(bound, timeout)
        error = outcome.error
        if error is None and outcome.pending is None:
            value, error = ctx.resolve(outcome.value)
            if error is None:
                logger.debug("cache %r: the factory of %r returned a value", self.options.name, key)
                if running is None or self._flights.claim(key, running[0]):
                    yield from self._store_from(ctx, value)
                return value

        if outcome.pending is not None:
            if running is None and opts.allow_timed_out_factories_background_completion:
                yield CompleteInBackground(
                    key, outcome.pending, ctx, functools.partial(self._complete, ctx)
                )
            which = (
                "soft" if fallback is not None and timeout == opts.factory_soft_timeout else "hard"
            )
            error = FactoryTimeoutError(
                f"the factory for cache key {key!r} did not finish within the {which} timeout "
                f"({timeout}s)"
            )
            self._counts.factory_timeouts += 1
            logger.debug("cache %r: %s", self.options.name, error)
            self._event(self.events.factory_timeout, key, error=error)
        else:
            assert error is not None
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
            return RETRY  # anyone who joined meanwhile loads the normal way
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
            self._fail_safe_served(key, error)
            return fallback.value
        if default is not NO_DEFAULT and opts.is_fail_safe_enabled:
            logger.warning(
                "fail-safe: serving fail_safe_default_value for %r (%s: %s)",
                key,
                type(error).__name__,
                error,
            )
            self._fail_safe_served(key, error)
            return default
        if isinstance(error, FactoryTimeoutError):
            raise FactoryTimeoutError(
                f"{error} and there is no stale value to serve: raise factory_hard_timeout, or "
                "enable is_fail_safe_enabled so the last good value can be used"
            )
        raise error

    def _fail_safe_served(self, key: str, error: BaseException) -> None:
        self._counts.fail_safe_activations += 1
        self._counts.stale_hits += 1
        self._event(self.events.fail_safe_activated, key, error=error)
        self._event(self.events.stale_hit, key, CacheLevel.L1)

    def _complete(self, ctx: FactoryContext[Any], returned: Any) -> Gen[None]:
        """A timed-out factory finished in the background: store what it returned."""
        value, error = ctx.resolve(returned)
        if error is not None:
            logger.warning("timed-out factory for %r failed in the background: %s", ctx.key, error)
            return
        yield from self._store_from(ctx, value)

    def _store_from(self, ctx: FactoryContext[Any], value: Any) -> Gen[None]:
        """Store a factory's value with what its context says (options, tags, ETag)."""
        yield from self._store(ctx.key, value, ctx.options, ctx.tags, ctx.etag, ctx.last_modified)

    def _reads_l2(self, opts: EntryOptions, stale: Entry | None) -> bool:
        return (
            self._l2 is not None
            and opts.reads_distributed_cache
            and not (stale is not None and opts.skip_distributed_cache_read_when_stale)
        )

    @staticmethod
    def _l2_read_timeout(opts: EntryOptions, stale: Entry | None) -> float | None:
        """The soft timeout when a stale value can be served instead, else the hard one."""
        if (
            stale is not None
            and opts.is_fail_safe_enabled
            and opts.distributed_cache_soft_timeout is not None
        ):
            return opts.distributed_cache_soft_timeout
        return opts.distributed_cache_hard_timeout

    def _entry_from_l2(
        self,
        dist: DistributedEntry,
        now: float,
        opts: EntryOptions,
        logical_expiration: float | None = None,
    ) -> Entry:
        return Entry.create(
            dist.value,
            dist.timestamp,
            now,
            opts,
            logical_expiration=logical_expiration,
            tags=dist.tags,
            etag=dist.etag,
            last_modified=dist.last_modified,
        )

    def _store(
        self,
        key: str,
        value: Any,
        opts: EntryOptions,
        tags: tuple[str, ...] = (),
        etag: str | None = None,
        last_modified: float | None = None,
    ) -> Gen[None]:
        """Set `value` in L1, L2 and tell the other instances."""
        now = self._clock()
        if not opts.skip_memory_cache:
            entry = Entry.create(
                value, now, now, opts, tags=tags, etag=etag, last_modified=last_modified
            )
            self._memory.put(key, entry)
        writes_l2 = self._l2 is not None and opts.writes_distributed_cache
        logger.debug(
            "cache %r: storing %r (L1%s)",
            self.options.name,
            key,
            " and L2" if writes_l2 else "",
        )
        if not writes_l2:
            yield from self._notify(key, BackplaneMessageAction.ENTRY_SET, now, opts)
            return
        duration = opts.distributed_cache_duration
        logical = opts.duration if duration is None else duration
        ttl = max(logical, opts.fail_safe_max_duration) if opts.is_fail_safe_enabled else logical
        timeout = opts.distributed_cache_hard_timeout
        try:
            data = encode_entry(
                self._serializer,
                DistributedEntry(value, now, now + logical, tags, etag, last_modified),
            )
        except Exception as exc:
            logger.warning(
                "the value of %r cannot be serialized for the distributed cache (%s: %s): "
                "kept in memory only, and the older L2 copy is removed",
                key,
                type(exc).__name__,
                exc,
            )
            write: Step = L2Remove(key, timeout)
        else:
            write = L2Set(key, data, ttl, timeout)
        yield from self._then_notify(write, key, BackplaneMessageAction.ENTRY_SET, now, opts)

    def _then_notify(
        self,
        write: Step | None,
        key: str,
        action: BackplaneMessageAction,
        now: float,
        opts: EntryOptions,
    ) -> Gen[None]:
        """`write` to L2, then tell the other instances; both in the background with
        `allow_background_distributed_cache_operations`."""

        def operation() -> Gen[None]:
            if write is not None:
                yield write
            yield from self._notify(key, action, now, opts)

        if write is not None and opts.allow_background_distributed_cache_operations:
            yield InBackground(operation())
        else:
            yield from operation()

    def _notify(
        self, key: str, action: BackplaneMessageAction, now: float, opts: EntryOptions
    ) -> Gen[None]:
        if self._bp is not None and not opts.skip_backplane_notifications:
            message = BackplaneMessage(
                cache_key=key, action=action, source_id=self.instance_id, timestamp=now
            )
            yield Publish(message, opts)

    def _read(
        self, key: str, opts: EntryOptions, value_type: type[Any] | None, allow_stale: bool = False
    ) -> Gen[MaybeValue[Any]]:
        now = self._clock()
        entry, fresh = self._peek_fresh(key, opts, now)
        if fresh:
            assert entry is not None
            self._l1_hit(key, entry)
            return MaybeValue(True, entry.value)
        self._l1_miss(key)
        stale: Any = entry.value if entry is not None else NO_DEFAULT
        stale_at = entry.timestamp if entry is not None else NEVER
        if self._reads_l2(opts, entry):
            dist, verdict = yield from self._l2_entry(
                key, value_type, now, self._l2_read_timeout(opts, entry)
            )
            if dist is not None and self._l2_is_fresh(dist, verdict, entry, now):
                self._l2_result(key, True)
                self._keep_from_l2(key, dist, now, opts)
                return MaybeValue(True, dist.value)
            self._l2_result(key, False)
            if dist is not None and verdict is not Verdict.GONE and dist.timestamp > stale_at:
                stale = dist.value
        if allow_stale and stale is not NO_DEFAULT:
            self._counts.stale_hits += 1
            self._event(self.events.stale_hit, key, CacheLevel.L1)
            return MaybeValue(True, stale)
        return MaybeValue(False)

    def _remove(self, key: str, opts: EntryOptions) -> Gen[None]:
        check_key(key)
        now = self._clock()
        if not opts.skip_memory_cache:
            self._memory.remove(key)
        write = (
            L2Remove(key, opts.distributed_cache_hard_timeout) if self._writes_l2(opts) else None
        )
        yield from self._then_notify(write, key, BackplaneMessageAction.ENTRY_REMOVE, now, opts)

    def _expire(self, key: str, opts: EntryOptions) -> Gen[None]:
        check_key(key)
        now = self._clock()
        self._marks.expire_key(key, now)  # an older L2 copy must not come back
        entry = None if opts.skip_memory_cache else self._memory.entries.get(key)
        if entry is not None:
            if opts.is_fail_safe_enabled:
                self._memory.replace_if(key, entry, entry.expired(now, now))
            else:
                self._memory.remove_if(key, entry)
        write = (
            L2Remove(key, opts.distributed_cache_hard_timeout) if self._writes_l2(opts) else None
        )
        yield from self._then_notify(write, key, BackplaneMessageAction.ENTRY_EXPIRE, now, opts)

    def _writes_l2(self, opts: EntryOptions) -> bool:
        return self._l2 is not None and opts.writes_distributed_cache

    def _by_tag(self, tag: str, remove: bool, opts: EntryOptions) -> Gen[None]:
        """`remove_by_tag` / `expire_by_tag`: a mark here, in L2, and on every instance."""
        (tag,) = normalize_tags([tag])
        now = self._clock()
        if remove:
            self._marks.learn(tag, NEVER, now)
        else:
            self._marks.learn(tag, now, NEVER)
        self._apply_mark(tag)
        action = BackplaneMessageAction.TAG_REMOVE if remove else BackplaneMessageAction.TAG_EXPIRE
        yield from self._mark_then_notify(tag, action, now, opts)

    def _clear(self, allow_fail_safe: bool) -> Gen[None]:
        now = self._clock()
        if allow_fail_safe:
            self._marks.learn(CLEAR, now, NEVER)
            self._expire_all_local(float("inf"), now)
        else:
            self._marks.learn(CLEAR, NEVER, now)
            self._memory.clear()
        opts = self._default_options
        yield from self._mark_then_notify(CLEAR, BackplaneMessageAction.CLEAR, now, opts)

    def _mark_then_notify(
        self, tag: str, action: BackplaneMessageAction, now: float, opts: EntryOptions
    ) -> Gen[None]:
        def operation() -> Gen[None]:
            yield from self._write_mark(tag, opts)
            yield from self._notify(tag, action, now, opts)

        if self._writes_l2(opts) and opts.allow_background_distributed_cache_operations:
            yield InBackground(operation())
        else:
            yield from operation()

    def _opts(self, options: EntryOptions | None) -> EntryOptions:
        return options if options is not None else self._default_options

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
