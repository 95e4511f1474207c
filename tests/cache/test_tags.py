"""Tagging: `set` / `get_or_set(..., tags=[...])`, `remove_by_tag` and `expire_by_tag`, here,
on every instance (backplane), and on instances that start later (the mark kept in L2)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cache import (
    BackplaneMessage,
    BackplaneMessageAction,
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
    MemoryDistributedCache,
)
from cache.eventbroker_backplane import EVENT_ID, RAISER_ID

from .conftest import Counter, FakeClock, wait_until
from .test_eventbroker_backplane import FlushingHub, Instance

MakeCache = Callable[..., HybridCache]
FAIL_SAFE = EntryOptions(duration=60, is_fail_safe_enabled=True)


def failing() -> Counter:
    factory = Counter()
    factory.error = RuntimeError("db down")
    return factory


def test_remove_by_tag_removes_only_the_tagged_entries(make_cache: MakeCache) -> None:
    cache = make_cache(FAIL_SAFE)
    cache.set("p1", 1, tags=["products", "category:shoes"])
    assert cache.get_or_set("p2", lambda: 2, tags=["products"]) == 2
    cache.set("user", 3, tags=["users"])
    cache.set("plain", 4)
    cache.remove_by_tag("products")
    assert cache.get("p1") is None and cache.get("p2") is None
    with pytest.raises(RuntimeError):
        cache.get_or_set("p1", failing())  # removed: no fail-safe fallback
    assert cache.get("user") == 3 and cache.get("plain") == 4


def test_expire_by_tag_keeps_values_for_fail_safe(make_cache: MakeCache) -> None:
    cache = make_cache(FAIL_SAFE)
    cache.set("p1", 1, tags=["products"])
    cache.expire_by_tag("products")
    assert cache.get("p1") is None
    assert cache.get_or_set("p1", failing()) == 1


def test_an_entry_set_after_the_tag_was_removed_is_kept(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(distributed_cache=MemoryDistributedCache(clock=clock))
    cache.set("p1", 1, tags=["products"])
    cache.remove_by_tag("products")
    clock.advance(0.001)
    cache.set("p1", 2, tags=["products"])
    assert cache.get("p1") == 2
    cache.remove("p1", EntryOptions(skip_distributed_cache=True))
    assert cache.get("p1") == 2  # read back from L2: newer than the mark


async def test_async_tag_operations(make_cache: MakeCache) -> None:
    cache = make_cache(FAIL_SAFE)

    async def load() -> int:
        return 1

    assert await cache.get_or_set_async("p1", load, tags=["products"]) == 1
    await cache.set_async("p2", 2, tags=["products"])
    await cache.expire_by_tag_async("products")
    assert await cache.get_async("p1") is None
    assert await cache.get_or_set_async("p1", failing()) == 1
    await cache.remove_by_tag_async("products")
    assert (await cache.try_get_async("p1", allow_stale=True)).has_value is False


def test_tags_are_checked(make_cache: MakeCache) -> None:
    cache = make_cache()
    with pytest.raises(TypeError, match=r"write tags=\['products'\]"):
        cache.set("k", 1, tags="products")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tag must be str"):
        cache.set("k", 1, tags=[42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="must not be empty"):
        cache.remove_by_tag("")


def test_tag_operations_reach_every_instance_over_the_memory_backplane(clock: FakeClock) -> None:
    hub = MemoryBackplaneHub()
    l2 = MemoryDistributedCache(clock=clock)
    options = CacheOptions(name="t", default_entry_options=FAIL_SAFE)
    a, b, c = (HybridCache(options, l2, MemoryBackplane(hub), clock=clock) for _ in range(3))
    try:
        a.set("p1", 1, tags=["products"])
        a.set("u1", 9, tags=["users"])
        assert b.get("p1") == 1 and c.get("p1") == 1 and b.get("u1") == 9  # via L2
        clock.advance(1)
        a.expire_by_tag("products")
        assert b.get("p1") is None and c.get("p1") is None
        assert b.get_or_set("p1", failing()) == 1  # kept for fail-safe
        clock.advance(1)
        c.remove_by_tag("users")
        assert a.get("u1") is None and b.get("u1") is None
        with pytest.raises(RuntimeError):
            b.get_or_set("u1", failing())
    finally:
        for cache in (a, b, c):
            cache.close()


def test_remove_by_tag_holds_for_an_instance_that_starts_later(clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    options = CacheOptions(name="t", default_entry_options=FAIL_SAFE)
    first = HybridCache(options, l2, clock=clock)
    first.set("p1", 1, tags=["products"])
    first.set("p2", 2, tags=["products", "sale"])
    first.set("other", 3, tags=["users"])
    clock.advance(1)
    first.remove_by_tag("sale")
    first.expire_by_tag("products")
    first.close()
    later = HybridCache(options, l2, clock=clock)
    try:
        assert later.get("p1") is None and later.get("p2") is None
        assert later.get("other") == 3
        assert later.get_or_set("p1", failing()) == 1  # expired: a fallback
        with pytest.raises(RuntimeError):
            later.get_or_set("p2", failing())  # removed by "sale"
    finally:
        later.close()


def test_a_mark_read_from_l2_is_read_again_after_the_refresh_interval(clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    options = CacheOptions(name="t", default_entry_options=FAIL_SAFE, marker_refresh_interval=30)
    writer, reader = HybridCache(options, l2, clock=clock), HybridCache(options, l2, clock=clock)
    local_only = EntryOptions(skip_distributed_cache=True, skip_backplane_notifications=True)
    try:
        writer.set("p1", 1, tags=["products"])
        assert reader.get("p1") == 1  # the mark of "products" read from L2: none yet
        clock.advance(1)
        writer.remove_by_tag("products")  # no backplane: the reader learns it from L2
        reader.remove("p1", local_only)
        assert reader.get("p1") == 1  # within the interval the mark read is trusted
        reader.remove("p1", local_only)
        clock.advance(30)
        assert reader.get("p1") is None  # read again: the L2 copy is older than the mark
    finally:
        writer.close()
        reader.close()


def test_tag_messages_reach_every_instance_over_the_event_broker(
    clock: FakeClock,
) -> None:
    hub = FlushingHub()  # its drain sends the packs
    l2 = MemoryDistributedCache()
    a, b, c = (Instance(hub, l2) for _ in range(3))
    try:
        a.cache.set("p1", 1, tags=["products"])
        assert b.cache.get("p1") == 1 and c.cache.get("p1") == 1
        a.cache.remove_by_tag("products")
        hub.drain()
        assert b.cache.try_get("p1", allow_stale=True).has_value is False
        assert c.cache.try_get("p1", allow_stale=True).has_value is False
        c.cache.set("p2", 2, tags=["sale"])
        assert a.cache.get("p2") == 2
        c.cache.expire_by_tag("sale")
        hub.drain()
        assert a.cache.get("p2") is None and a.cache.get("p2", allow_stale=True) == 2
        # a clear travels too, and a wire message as an older release sends it is accepted
        b.cache.set("k", "v")
        a.registry.get(EVENT_ID).raise_(
            RAISER_ID, {"cache_key": "k", "action": "entry_remove", "timestamp": 4e9}
        )
        a.cache.clear(allow_fail_safe=False)
        hub.drain()
        assert b.cache.get("k") is None and c.cache.get("p2") is None
    finally:
        for node in (a, b, c):
            node.close()


def test_tag_messages_wait_in_the_auto_recovery_queue_apart_from_keys(clock: FakeClock) -> None:
    hub = MemoryBackplaneHub()
    options = CacheOptions(name="t", default_entry_options=FAIL_SAFE)
    a = HybridCache(options, backplane=MemoryBackplane(hub), clock=clock)
    b = HybridCache(options, backplane=MemoryBackplane(hub), clock=clock)
    try:
        b.set("products", 0)
        b.set("p1", 1, tags=["products"])
        clock.advance(1)
        hub.connected = False
        a.remove("products")
        a.remove_by_tag("products")
        assert len(a.auto_recovery_pending) == 2
        hub.connected = True
        a.process_auto_recovery()  # (or the replay the reconnect started)
        wait_until(lambda: b.get("products") is None and b.get("p1") is None)
        assert a.auto_recovery_pending == []
        incoming = BackplaneMessage("products", BackplaneMessageAction.TAG_REMOVE, "x", 1.0)
        assert incoming.action.value == "tag_remove"
    finally:
        a.close()
        b.close()
