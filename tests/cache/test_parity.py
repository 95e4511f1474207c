"""Behaviours where the cache follows FusionCache (each failed before it was fixed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cache import (
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
    MemoryDistributedCache,
)

from .conftest import Counter, FakeClock, Gate, wait_until

MakeCache = Callable[..., HybridCache]
SOFT = EntryOptions(
    duration=10,
    is_fail_safe_enabled=True,
    fail_safe_throttle_duration=3,
    factory_soft_timeout=0.02,
    factory_hard_timeout=5,
)


def test_soft_timed_out_factory_keeps_stampede_protection_across_bursts(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(SOFT)
    cache.get_or_set("k", Counter("old"))
    clock.advance(11)
    gate = Gate("new")
    assert cache.get_or_set("k", gate) == "old"  # soft timeout: stale value, throttled
    clock.advance(4)  # the throttle has passed; the first call still runs
    assert cache.get_or_set("k", gate) == "old"
    assert gate.calls == 1  # one factory call across both bursts
    gate.release()
    wait_until(lambda: cache.get("k") == "new")
    assert gate.calls == 1


async def test_soft_timed_out_async_factory_keeps_stampede_protection_across_bursts(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(SOFT)
    await cache.get_or_set_async("k", Counter("old"))
    clock.advance(11)
    calls = 0
    release = asyncio.Event()

    async def load() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "new"

    assert await cache.get_or_set_async("k", load) == "old"
    clock.advance(4)
    assert await cache.get_or_set_async("k", load) == "old"
    assert calls == 1
    release.set()
    for _ in range(100):
        if await cache.get_async("k") == "new":
            break
        await asyncio.sleep(0.01)
    assert await cache.get_async("k") == "new" and calls == 1


def test_remove_with_skip_memory_cache_leaves_memory_alone(make_cache: MakeCache) -> None:
    l2 = MemoryDistributedCache()
    cache = make_cache(distributed_cache=l2)
    cache.set("k", "v")
    cache.remove("k", EntryOptions(skip_memory_cache=True))
    assert cache.get("k") == "v"  # L1 untouched
    assert len(l2) == 0  # L2 removed


def test_expire_in_memory_only_is_not_undone_by_an_older_l2_copy(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(distributed_cache=MemoryDistributedCache(clock=clock))
    cache.set("k", 1)
    cache.expire("k", EntryOptions(skip_distributed_cache=True))
    assert cache.get_or_set("k", lambda: 2) == 2
    clock.advance(1)
    cache.set("j", 1, EntryOptions(is_fail_safe_enabled=True))
    cache.expire("j", EntryOptions(skip_distributed_cache=True))
    assert cache.get("j") is None
    assert cache.get_or_set("j", lambda: 2) == 2


def test_expire_message_is_not_undone_by_an_older_l2_copy(clock: FakeClock) -> None:
    hub = MemoryBackplaneHub()
    l2 = MemoryDistributedCache(clock=clock)
    options = CacheOptions(name="t", default_entry_options=EntryOptions(duration=10))
    a, b = (HybridCache(options, l2, MemoryBackplane(hub), clock=clock) for _ in range(2))
    try:
        a.set("k", 1)
        assert b.get("k") == 1
        clock.advance(1)
        a.expire("k", EntryOptions(skip_distributed_cache=True))
        assert b.get_or_set("k", lambda: 2) == 2
    finally:
        a.close()
        b.close()


def test_clear_holds_for_an_instance_that_starts_later(clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    options = CacheOptions(name="t", default_entry_options=EntryOptions(duration=10))
    first = HybridCache(options, l2, clock=clock)
    first.set("k", "before")
    first.set("j", "before")
    clock.advance(1)
    first.clear(allow_fail_safe=False)
    first.close()
    clock.advance(1)
    later = HybridCache(options, l2, clock=clock)
    try:
        assert later.get("k") is None
        assert later.get_or_set("j", lambda: "after") == "after"
        later.set("k", "new")
        assert later.get("k") == "new"
    finally:
        later.close()


def test_clear_with_fail_safe_keeps_l2_values_as_fallback_for_a_later_instance(
    clock: FakeClock,
) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    entry = EntryOptions(duration=10, is_fail_safe_enabled=True)
    options = CacheOptions(name="t", default_entry_options=entry)
    first = HybridCache(options, l2, clock=clock)
    first.set("k", "before")
    clock.advance(1)
    first.clear()
    first.close()
    later = HybridCache(options, l2, clock=clock)
    try:
        assert later.get("k") is None
        failing = Counter()
        failing.error = RuntimeError("down")
        assert later.get_or_set("k", failing) == "before"
    finally:
        later.close()
