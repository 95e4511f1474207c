"""Separate L2 read and write skip flags, `skip_distributed_cache_read_when_stale`, and
`ignore_incoming_backplane_notifications`."""

from __future__ import annotations

from collections.abc import Callable

from cache import (
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
    MemoryDistributedCache,
)

from .conftest import Counter, FakeClock

MakeCache = Callable[..., HybridCache]


def test_skip_distributed_cache_write_still_reads_l2(clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    options = CacheOptions(name="t", default_entry_options=EntryOptions(duration=10))
    with (
        HybridCache(options, l2, clock=clock) as first,
        HybridCache(options, l2, clock=clock) as second,
    ):
        first.set("shared", 1)
        no_write = EntryOptions(duration=10, skip_distributed_cache_write=True)
        assert second.get_or_set("shared", Counter(2), no_write) == 1  # read from L2
        second.set("local", 3, no_write)
        assert len(l2) == 1 and first.get("local") is None
        second.remove("shared", no_write)
        assert first.get("shared") == 1 and len(l2) == 1


def test_skip_distributed_cache_read_still_writes_l2(clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    options = CacheOptions(name="t", default_entry_options=EntryOptions(duration=10))
    with (
        HybridCache(options, l2, clock=clock) as first,
        HybridCache(options, l2, clock=clock) as second,
    ):
        first.set("k", 1)
        no_read = EntryOptions(duration=10, skip_distributed_cache_read=True)
        factory = Counter(2)
        assert second.get_or_set("k", factory, no_read) == 2  # L2 not read: the factory ran
        assert factory.calls == 1
        assert second.get("k2", options=no_read) is None
        first.remove("k", EntryOptions(skip_distributed_cache=True))
        assert first.get("k") == 2  # the second cache's value was written to L2


def test_skip_distributed_cache_read_when_stale(clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    entry = EntryOptions(duration=10, is_fail_safe_enabled=True)
    options = CacheOptions(name="t", default_entry_options=entry)
    with (
        HybridCache(options, l2, clock=clock) as first,
        HybridCache(options, l2, clock=clock) as second,
    ):
        for key in ("k", "j"):
            first.set(key, "v1")
            assert second.get(key) == "v1"
        clock.advance(11)
        for key in ("k", "j"):
            first.set(key, "v2")  # newer in L2; no backplane tells the second cache
        skip = entry.duplicate(skip_distributed_cache_read_when_stale=True)
        factory = Counter("v3")
        assert second.get_or_set("k", factory, skip) == "v3"  # stale in L1: L2 not read
        assert second.get_or_set("j", Counter("v3")) == "v2"  # without the flag: from L2


def test_ignore_incoming_backplane_notifications(clock: FakeClock) -> None:
    hub = MemoryBackplaneHub()
    entry = EntryOptions(duration=60)
    plain = CacheOptions(name="t", default_entry_options=entry)
    deaf = CacheOptions(
        name="t", default_entry_options=entry, ignore_incoming_backplane_notifications=True
    )
    with (
        HybridCache(plain, backplane=MemoryBackplane(hub), clock=clock) as talker,
        HybridCache(deaf, backplane=MemoryBackplane(hub), clock=clock) as keeper,
        HybridCache(plain, backplane=MemoryBackplane(hub), clock=clock) as listener,
    ):
        keeper.set("k", "kept")
        listener.set("k", "old")
        clock.advance(1)
        talker.remove("k")
        talker.clear(allow_fail_safe=False)
        assert keeper.get("k") == "kept" and keeper.stats.backplane_received == 0
        assert listener.get("k") is None
        keeper.set("j", 1)  # it still publishes
        assert listener.stats.backplane_received == 4  # keeper: set k, set j; talker: 2
