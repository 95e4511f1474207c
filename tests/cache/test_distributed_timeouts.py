"""L2 soft and hard timeouts, and background L2 operations (the caller does not wait)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from cache import (
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
    MemoryDistributedCache,
)

from .conftest import Counter, FakeClock, wait_until

MakeCache = Callable[..., HybridCache]


class SlowL2(MemoryDistributedCache):
    """A distributed cache whose calls block while `blocked` (until released)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.open = threading.Event()
        self.open.set()
        self.calls: list[str] = []

    def block(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()

    def _wait(self, what: str) -> None:
        self.calls.append(what)
        assert self.open.wait(5)

    def get(self, key: str) -> bytes | None:
        self._wait(f"get {key}")
        return super().get(key)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._wait(f"set {key}")
        super().set(key, value, ttl)

    def remove(self, key: str) -> None:
        self._wait(f"remove {key}")
        super().remove(key)

    async def get_async(self, key: str) -> bytes | None:
        await asyncio.to_thread(self._wait, f"get {key}")
        return super().get(key)

    async def set_async(self, key: str, value: bytes, ttl: float) -> None:
        await asyncio.to_thread(self._wait, f"set {key}")
        super().set(key, value, ttl)


def test_distributed_cache_hard_timeout_makes_a_slow_read_a_miss(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    l2 = SlowL2(clock)
    cache = make_cache(
        EntryOptions(duration=10, distributed_cache_hard_timeout=0.02), distributed_cache=l2
    )
    l2.block()
    try:
        assert cache.get_or_set("k", Counter("from factory")) == "from factory"
    finally:
        l2.release()
    wait_until(lambda: l2.get("k") is not None)  # the write went on in the background


def test_distributed_cache_soft_timeout_applies_only_with_a_stale_value(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    l2 = SlowL2(clock)
    options = EntryOptions(
        duration=10,
        is_fail_safe_enabled=True,
        distributed_cache_soft_timeout=0.02,
        distributed_cache_hard_timeout=5,
    )
    cache = make_cache(options, distributed_cache=l2)
    cache.set("k", "old")
    clock.advance(11)
    l2.block()
    failing = Counter()
    failing.error = RuntimeError("db down")
    try:
        assert cache.get_or_set("k", failing) == "old"  # L2 gave up after 0.02 s, fail-safe
        assert failing.calls == 1
    finally:
        l2.release()
    fresh = Counter("fresh")
    threading.Timer(0.1, l2.release).start()
    l2.block()
    assert cache.get_or_set("new", fresh) == "fresh"  # no stale value: waited (hard timeout)
    assert "get new" in l2.calls


async def test_async_distributed_cache_timeout(make_cache: MakeCache, clock: FakeClock) -> None:
    l2 = SlowL2(clock)
    cache = make_cache(
        EntryOptions(duration=10, distributed_cache_hard_timeout=0.02), distributed_cache=l2
    )
    l2.block()
    try:
        assert await cache.get_or_set_async("k", Counter("v")) == "v"
        assert await cache.get_async("other") is None
    finally:
        l2.release()


def test_background_distributed_operations_do_not_make_the_caller_wait(clock: FakeClock) -> None:
    hub = MemoryBackplaneHub()
    l2 = SlowL2(clock)
    entry = EntryOptions(duration=10, allow_background_distributed_cache_operations=True)
    options = CacheOptions(name="t", default_entry_options=entry)
    writer = HybridCache(options, l2, MemoryBackplane(hub), clock=clock)
    reader = HybridCache(options, l2, MemoryBackplane(hub), clock=clock)
    try:
        reader.set("k", "old", EntryOptions(duration=10))
        clock.advance(1)
        l2.block()
        writer.set("k", "new")  # returns while the L2 write waits
        assert writer.get("k") == "new"
        assert reader.get("k") == "old"  # the notification follows the L2 write
        l2.release()
        wait_until(lambda: reader.get("k") == "new")
    finally:
        l2.release()
        writer.close()
        reader.close()


async def test_background_distributed_operations_async(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    l2 = SlowL2(clock)
    entry = EntryOptions(duration=10, allow_background_distributed_cache_operations=True)
    cache = make_cache(entry, distributed_cache=l2)
    l2.block()
    await cache.set_async("k", "v")
    assert await cache.get_async("k") == "v"
    l2.release()
    for _ in range(200):
        if MemoryDistributedCache.get(l2, "k") is not None:
            break
        await asyncio.sleep(0.01)
    assert MemoryDistributedCache.get(l2, "k") is not None


def test_soft_timeout_must_not_exceed_hard_timeout() -> None:
    with pytest.raises(ValueError, match="distributed_cache_soft_timeout"):
        EntryOptions(distributed_cache_soft_timeout=2, distributed_cache_hard_timeout=1)
