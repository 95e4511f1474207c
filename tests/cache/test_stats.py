"""`HybridCache.stats` and `HybridCache.events`: what the cache did, counted and announced."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from cache import (
    BackplaneMessage,
    BackplaneMessageAction,
    CacheEventArgs,
    CacheLevel,
    CacheStats,
    EntryOptions,
    FactoryTimeoutError,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
    MemoryDistributedCache,
)

from .conftest import Counter, FakeClock, Gate
from .test_distributed import FlakyDistributedCache

MakeCache = Callable[..., HybridCache]
FAIL_SAFE = EntryOptions(duration=10, is_fail_safe_enabled=True, fail_safe_throttle_duration=3)


class Recorder:
    """Subscribes to every event of a cache and keeps (event name, args) in order."""

    def __init__(self, cache: HybridCache) -> None:
        self.seen: list[tuple[str, object]] = []
        events = cache.events
        for name in (
            "hit",
            "miss",
            "stale_hit",
            "fail_safe_activated",
            "factory_error",
            "factory_timeout",
            "eviction",
            "backplane_message_received",
        ):
            getattr(events, name).subscribe(lambda args, n=name: self.seen.append((n, args)))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]

    def take(self) -> list[tuple[str, object]]:
        seen, self.seen = self.seen, []
        return seen


def test_a_new_cache_counts_nothing(make_cache: MakeCache) -> None:
    assert make_cache().stats == CacheStats()


def test_hits_and_misses_by_level_with_l2(make_cache: MakeCache, clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    writer, reader = make_cache(distributed_cache=l2), make_cache(distributed_cache=l2)
    writer.set("k", "v")
    events = Recorder(reader)

    assert reader.get_or_set("k", Counter("db")) == "v"  # L1 miss, L2 hit
    assert reader.get_or_set("k", Counter("db")) == "v"  # L1 hit (the fast path)
    assert reader.get("nothing") is None  # L1 miss, L2 miss
    assert reader.get_or_set("new", Counter("db")) == "db"  # L1 miss, L2 miss, factory

    stats = reader.stats
    assert (stats.l1_hits, stats.l1_misses, stats.l2_hits, stats.l2_misses) == (1, 3, 1, 2)
    assert (stats.hits, stats.misses) == (2, 2)
    assert stats.factory_calls == 1 and stats.factory_errors == 0
    assert events.take() == [
        ("miss", CacheEventArgs("test", "k", CacheLevel.L1)),
        ("hit", CacheEventArgs("test", "k", CacheLevel.L2)),
        ("hit", CacheEventArgs("test", "k", CacheLevel.L1)),
        ("miss", CacheEventArgs("test", "nothing", CacheLevel.L1)),
        ("miss", CacheEventArgs("test", "nothing", CacheLevel.L2)),
        ("miss", CacheEventArgs("test", "new", CacheLevel.L1)),
        ("miss", CacheEventArgs("test", "new", CacheLevel.L2)),
    ]


async def test_the_async_face_counts_alike(make_cache: MakeCache) -> None:
    cache = make_cache()
    factory = Counter("v")
    assert await cache.get_or_set_async("k", factory) == "v"
    assert await cache.get_or_set_async("k", factory) == "v"
    assert await cache.get_async("k") == "v"
    stats = cache.stats
    assert (stats.l1_hits, stats.l1_misses, stats.factory_calls) == (2, 1, 1)
    assert (stats.l2_hits, stats.l2_misses) == (0, 0)  # no L2: never asked


def test_the_hit_path_counts_with_and_without_handlers(make_cache: MakeCache) -> None:
    cache = make_cache()
    cache.set("k", 1)
    for _ in range(3):
        cache.get_or_set("k", Counter())
    hits: list[CacheEventArgs] = []
    subscription = cache.events.hit.subscribe(hits.append)
    cache.get_or_set("k", Counter())
    subscription.unsubscribe()
    cache.get_or_set("k", Counter())
    assert cache.stats.l1_hits == 5
    assert hits == [CacheEventArgs("test", "k", CacheLevel.L1)]


def test_fail_safe_counts_the_activation_and_every_stale_hit(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(FAIL_SAFE)
    factory = Counter("good")
    cache.get_or_set("k", factory)
    clock.advance(11)
    events = Recorder(cache)
    factory.error = RuntimeError("db down")
    assert cache.get_or_set("k", factory) == "good"  # activation: stale value served
    assert cache.get_or_set("k", factory) == "good"  # throttled: a stale hit on the fast path
    stats = cache.stats
    assert stats.factory_calls == 2 and stats.factory_errors == 1
    assert stats.fail_safe_activations == 1 and stats.stale_hits == 2
    assert stats.l1_hits == 1  # the throttled hit (the first one was an L1 miss)
    seen = events.take()
    assert [name for name, _ in seen] == [
        "miss",
        "factory_error",
        "fail_safe_activated",
        "stale_hit",
        "stale_hit",
    ]
    _, activated = seen[2]
    assert isinstance(activated, CacheEventArgs) and isinstance(activated.error, RuntimeError)


def test_a_factory_error_without_fail_safe_is_counted_and_raised(make_cache: MakeCache) -> None:
    cache = make_cache()
    factory = Counter()
    factory.error = ValueError("bad row")
    events = Recorder(cache)
    with pytest.raises(ValueError):
        cache.get_or_set("k", factory)
    assert cache.stats.factory_errors == 1 and cache.stats.fail_safe_activations == 0
    assert events.names() == ["miss", "factory_error"]


def test_a_factory_timeout_is_counted(make_cache: MakeCache) -> None:
    cache = make_cache(EntryOptions(factory_hard_timeout=0.01))
    events = Recorder(cache)
    gate = Gate("late")
    with pytest.raises(FactoryTimeoutError):
        cache.get_or_set("k", gate)
    gate.release()
    assert cache.stats.factory_timeouts == 1 and cache.stats.factory_errors == 0
    assert events.names() == ["miss", "factory_timeout"]
    _, args = events.seen[1]
    assert isinstance(args, CacheEventArgs) and isinstance(args.error, FactoryTimeoutError)


def test_evictions_are_counted_and_announced(make_cache: MakeCache) -> None:
    cache = make_cache(max_entries=2)
    events = Recorder(cache)
    for key in ("a", "b", "c", "d"):
        cache.set(key, key)
    assert cache.stats.evictions == 2
    assert events.take() == [
        ("eviction", CacheEventArgs("test", "a", CacheLevel.L1)),
        ("eviction", CacheEventArgs("test", "b", CacheLevel.L1)),
    ]


def test_backplane_messages_in_and_out(make_cache: MakeCache, clock: FakeClock) -> None:
    hub = MemoryBackplaneHub()
    a = make_cache(backplane=MemoryBackplane(hub))
    b = make_cache(backplane=MemoryBackplane(hub))
    events = Recorder(b)
    a.set("k", 1)
    a.expire("k")
    assert a.stats.backplane_sent == 2 and a.stats.backplane_received == 0
    assert b.stats.backplane_received == 2 and b.stats.backplane_sent == 0
    received = [args for name, args in events.seen if name == "backplane_message_received"]
    assert [m.action for m in received if isinstance(m, BackplaneMessage)] == [
        BackplaneMessageAction.ENTRY_SET,
        BackplaneMessageAction.ENTRY_EXPIRE,
    ]
    hub.connected = False
    a.set("k", 2)  # fails: queued for auto-recovery
    assert a.stats.backplane_errors == 1 and a.stats.backplane_sent == 2
    hub.connected = True
    a.process_auto_recovery()
    assert a.stats.backplane_sent == 3


def test_l2_errors_are_counted(make_cache: MakeCache, clock: FakeClock) -> None:
    l2 = FlakyDistributedCache(clock)
    cache = make_cache(distributed_cache=l2)
    l2.down = True
    assert cache.get_or_set("k", Counter("db")) == "db"
    stats = cache.stats
    assert stats.l2_errors >= 1 and stats.l2_misses == 1 and stats.factory_calls == 1


def test_a_failing_handler_is_logged_and_never_fails_the_call(
    make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    cache.set("k", 1)

    def broken(_: CacheEventArgs) -> None:
        raise RuntimeError("handler bug")

    cache.events.hit.subscribe(broken)
    with caplog.at_level(logging.ERROR, logger="cache"):
        assert cache.get_or_set("k", Counter()) == 1
    assert any("handler bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    assert cache.stats.l1_hits == 1


async def test_async_handlers_run_on_the_running_loop(make_cache: MakeCache) -> None:
    cache = make_cache()
    seen: list[CacheEventArgs] = []

    async def on_miss(args: CacheEventArgs) -> None:
        seen.append(args)

    cache.events.miss.subscribe(on_miss)
    await cache.get_or_set_async("k", Counter())
    await asyncio.sleep(0)
    assert seen == [CacheEventArgs("test", "k", CacheLevel.L1)]
