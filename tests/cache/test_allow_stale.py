"""`get(key, allow_stale=True)` / `try_get(..., allow_stale=True)`: a stale value without a
factory call."""

from __future__ import annotations

from collections.abc import Callable

from cache import CacheOptions, EntryOptions, HybridCache, MemoryDistributedCache

from .conftest import FakeClock

MakeCache = Callable[..., HybridCache]
FAIL_SAFE = EntryOptions(duration=10, is_fail_safe_enabled=True)


def test_get_with_allow_stale_serves_an_expired_value(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(FAIL_SAFE)
    cache.set("k", "old")
    clock.advance(11)
    assert cache.get("k") is None
    assert cache.get("k", allow_stale=True) == "old"
    assert cache.try_get("k", allow_stale=True).value == "old"
    assert cache.stats.stale_hits == 2
    cache.expire("k")
    assert cache.get("k", "default", allow_stale=True) == "old"
    cache.remove("k")
    assert cache.get("k", "default", allow_stale=True) == "default"


def test_a_fresh_value_wins_over_a_stale_one(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache(FAIL_SAFE)
    cache.set("k", "v")
    assert cache.get("k", allow_stale=True) == "v"
    assert cache.stats.stale_hits == 0


def test_allow_stale_without_fail_safe_has_nothing_to_serve(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(EntryOptions(duration=10))
    cache.set("k", "v")
    clock.advance(11)
    assert cache.try_get("k", allow_stale=True).has_value is False


async def test_allow_stale_reads_a_stale_l2_copy(clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    options = CacheOptions(name="t", default_entry_options=FAIL_SAFE)
    with HybridCache(options, l2, clock=clock) as writer:
        writer.set("k", "old")
    clock.advance(11)
    with HybridCache(options, l2, clock=clock) as reader:
        assert await reader.get_async("k") is None
        assert await reader.get_async("k", allow_stale=True) == "old"
        assert (await reader.try_get_async("k", allow_stale=True)).value == "old"
