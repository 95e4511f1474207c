"""Three caches over one `MemoryBackplane` hub (and a shared L2): messages, ordering, auto-recovery."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cache import (
    AutoRecoveryQueue,
    BackplaneMessage,
    BackplaneMessageAction,
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
    MemoryDistributedCache,
)

from .conftest import Counter, FakeClock, wait_until

MakeCache = Callable[..., HybridCache]
OPTIONS = EntryOptions(duration=60, is_fail_safe_enabled=True)


@pytest.fixture
def hub() -> MemoryBackplaneHub:
    return MemoryBackplaneHub()


@pytest.fixture
def three(make_cache: MakeCache, clock: FakeClock, hub: MemoryBackplaneHub) -> list[HybridCache]:
    l2 = MemoryDistributedCache(clock=clock)
    return [
        make_cache(OPTIONS, distributed_cache=l2, backplane=MemoryBackplane(hub)) for _ in range(3)
    ]


def failing() -> Counter:
    factory = Counter()
    factory.error = RuntimeError("db down")
    return factory


def test_set_on_one_instance_is_seen_by_the_others(
    three: list[HybridCache], clock: FakeClock
) -> None:
    a, b, c = three
    for cache in three:
        cache.get_or_set("k", Counter("v1"))
    clock.advance(1)
    a.set("k", "v2")
    factory = Counter("db")
    assert b.get_or_set("k", factory) == "v2"  # stale locally, newer value from L2
    assert c.get("k") == "v2"
    assert factory.calls == 0


def test_remove_removes_everywhere(three: list[HybridCache], clock: FakeClock) -> None:
    a, b, c = three
    a.set("k", "v1")
    b.get("k")
    c.get("k")
    clock.advance(1)
    a.remove("k")
    with pytest.raises(RuntimeError):
        b.get_or_set("k", failing())  # removed: nothing for fail-safe
    assert c.memory_count == 0


def test_expire_keeps_values_for_fail_safe_everywhere(
    three: list[HybridCache], clock: FakeClock
) -> None:
    a, b, c = three
    a.set("k", "v1")
    b.get("k")
    clock.advance(1)
    a.expire("k", OPTIONS)
    assert b.get_or_set("k", failing()) == "v1"
    assert b.get_or_set("k", Counter("v2")) == "v1"  # throttled
    assert c.get_or_set("k", Counter("v2")) == "v2"  # c had no copy: loads


def test_clear_expires_everything_everywhere(three: list[HybridCache], clock: FakeClock) -> None:
    a, b, _ = three
    b.set("x", 1)
    b.set("y", 2)
    clock.advance(1)
    a.clear()
    assert b.try_get("x").has_value is False
    assert b.get_or_set("y", failing()) == 2


def test_messages_apply_only_to_older_entries(
    make_cache: MakeCache, clock: FakeClock, hub: MemoryBackplaneHub
) -> None:
    cache = make_cache(OPTIONS, backplane=MemoryBackplane(hub))
    sender = MemoryBackplane(hub)
    cache.set("k", "v")
    old = BackplaneMessage("k", BackplaneMessageAction.ENTRY_REMOVE, "other", clock() - 1)
    sender.publish(old, OPTIONS)
    assert cache.get("k") == "v"
    sender.publish(
        BackplaneMessage("k", BackplaneMessageAction.ENTRY_REMOVE, "other", clock() + 1), OPTIONS
    )
    assert cache.get("k") is None


def test_own_messages_are_ignored(
    make_cache: MakeCache, clock: FakeClock, hub: MemoryBackplaneHub
) -> None:
    cache = make_cache(OPTIONS, backplane=MemoryBackplane(hub))
    cache.set("k", "v")
    message = BackplaneMessage(
        "k", BackplaneMessageAction.ENTRY_REMOVE, cache.instance_id, clock() + 1
    )
    MemoryBackplane(hub).publish(message, OPTIONS)
    assert cache.get("k") == "v"


def test_skip_backplane_notifications(three: list[HybridCache], clock: FakeClock) -> None:
    a, b, _ = three
    b.set("k", "v1")
    clock.advance(1)
    a.set("k", "v2", OPTIONS.duplicate(skip_backplane_notifications=True))
    assert b.get("k") == "v1"


def test_auto_recovery_replays_after_reconnect(
    three: list[HybridCache], clock: FakeClock, hub: MemoryBackplaneHub
) -> None:
    a, b, _ = three
    b.set("k", "v1")
    clock.advance(1)
    hub.connected = False
    a.set("k", "v2")  # L2 written; the notification cannot go out
    assert a.auto_recovery_pending == ["k"]
    assert b.get("k") == "v1"  # b still serves its copy
    hub.connected = True  # connect handlers fire: a replays in the background
    wait_until(lambda: not a.auto_recovery_pending)
    assert b.get("k") == "v2"


def test_auto_recovery_newest_wins_and_newer_incoming_cancels(
    three: list[HybridCache], clock: FakeClock, hub: MemoryBackplaneHub
) -> None:
    a, b, _ = three
    hub.connected = False
    a.set("k", "v1")
    clock.advance(1)
    a.set("k", "v2")
    assert a.auto_recovery_pending == ["k"]  # one item per key
    hub.connected = True
    wait_until(lambda: not a.auto_recovery_pending)
    hub.connected = False
    a.set("k", "v3")
    clock.advance(1)
    hub._connected = True  # back without a reconnect signal, so a's queue is not replayed
    b.set("k", "v4")  # newer message from b reaches a: a's queued item is cancelled
    assert a.auto_recovery_pending == []


def test_auto_recovery_queue_is_bounded_and_drops_expired(clock: FakeClock) -> None:
    queue = AutoRecoveryQueue(max_items=2, clock=clock)
    short = EntryOptions(duration=5)
    for key in "abc":
        queue.enqueue(BackplaneMessage(key, BackplaneMessageAction.ENTRY_SET, "me", clock()), short)
    assert queue.keys() == ["b", "c"]
    clock.advance(6)
    queue.enqueue(BackplaneMessage("d", BackplaneMessageAction.ENTRY_SET, "me", clock()), short)
    assert [item.message.cache_key for item in queue.take()] == ["d"]  # b, c would have expired


def test_older_incoming_message_is_ignored_while_ours_is_queued(clock: FakeClock) -> None:
    queue = AutoRecoveryQueue(10, clock)
    queue.enqueue(BackplaneMessage("k", BackplaneMessageAction.ENTRY_SET, "me", clock()), OPTIONS)
    older = BackplaneMessage("k", BackplaneMessageAction.ENTRY_REMOVE, "other", clock() - 1)
    assert queue.accept_incoming(older) is False
    assert queue.keys() == ["k"]


def test_manual_path_job_publishes_expire(
    make_cache: MakeCache, clock: FakeClock, hub: MemoryBackplaneHub
) -> None:
    web = make_cache(OPTIONS, backplane=MemoryBackplane(hub))
    web.get_or_set("stock", Counter(5))
    job_backplane = MemoryBackplane(hub)
    job_cache = make_cache(OPTIONS, backplane=job_backplane)
    clock.advance(1)
    job_backplane.publish(
        BackplaneMessage(
            cache_key="stock",
            action=BackplaneMessageAction.ENTRY_EXPIRE,
            source_id=job_cache.instance_id,
            timestamp=clock(),
        ),
        EntryOptions(),
    )
    assert web.get_or_set("stock", failing()) == 5  # fail-safe: the old value
    clock.advance(OPTIONS.fail_safe_throttle_duration + 1)
    assert web.get_or_set("stock", Counter(7)) == 7


def test_auto_recovery_retries_on_its_own_without_a_reconnect_signal(
    make_cache: MakeCache, hub: MemoryBackplaneHub
) -> None:
    options = CacheOptions(name="test", auto_recovery_delay=0.01)
    a = HybridCache(options, backplane=MemoryBackplane(hub))
    b = make_cache(OPTIONS, backplane=MemoryBackplane(hub))
    try:
        b.set("k", "v1")
        hub.connected = False
        a.set("k", "v2")
        assert a.auto_recovery_pending == ["k"]
        hub._connected = True  # back, but nobody says so: the periodic retry notices
        wait_until(lambda: not a.auto_recovery_pending)
        assert b.try_get("k").has_value is False
    finally:
        a.close()
