"""Caches on three instances (plus a job) over one `InMemoryHub` through `EventBrokerBackplane`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cache import (
    BackplaneError,
    BackplaneMessage,
    BackplaneMessageAction,
    CacheOptions,
    DistributedCache,
    EntryOptions,
    HybridCache,
    MemoryDistributedCache,
)
from cache.eventbroker_backplane import EVENT_ID, EventBrokerBackplane
from cache.redis import RedisDistributedCache
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventReceivedEventArgs,
    EventRegistry,
    HubFaults,
    InMemoryHub,
    InMemoryTransport,
)

from .conftest import Counter, wait_until

OPTIONS = EntryOptions(duration=60, is_fail_safe_enabled=True)


class FlushingHub(InMemoryHub):
    """The hub whose `drain()` first sends what the backplanes hold in their packs."""

    def __init__(self, coalesce_window: float = 0.002) -> None:
        super().__init__()
        self.backplanes: list[EventBrokerBackplane] = []
        self.coalesce_window = coalesce_window

    def drain(self, *args: Any, **kwargs: Any) -> Any:
        for backplane in self.backplanes:
            backplane.flush()
        return super().drain(*args, **kwargs)


class Instance:
    """One app instance: broker, registry, backplane, cache."""

    def __init__(self, hub: InMemoryHub, l2: DistributedCache | None) -> None:
        self.broker = EventBroker(
            InMemoryTransport(hub),
            EventBrokerOptions(
                secret="test-secret-0123456789", application_name="shop", missed_event_timeout=0.05
            ),
        )
        self.registry = EventRegistry(self.broker)
        self.broker.start()
        window = hub.coalesce_window if isinstance(hub, FlushingHub) else None
        self.backplane = EventBrokerBackplane(self.registry, self.broker, coalesce_window=window)
        if isinstance(hub, FlushingHub):
            hub.backplanes.append(self.backplane)
        self.cache = HybridCache(
            CacheOptions(name="shop", default_entry_options=OPTIONS), l2, self.backplane
        )
        self.received: list[EventReceivedEventArgs] = []
        self.broker.event_received.subscribe(self.received.append)

    def close(self) -> None:
        self.cache.close()
        self.broker.stop()


@pytest.fixture(params=[0.0, 0.002], ids=["singles", "packs"])
def hub(request: pytest.FixtureRequest) -> InMemoryHub:
    """Every test runs with packs off and with the default window (`drain` sends the packs)."""
    return FlushingHub(request.param)


@pytest.fixture
def spawn(hub: InMemoryHub) -> Iterator[Callable[..., Instance]]:
    made: list[Instance] = []
    l2 = MemoryDistributedCache()

    def make(with_l2: bool = True, distributed: DistributedCache | None = None) -> Instance:
        made.append(Instance(hub, distributed or (l2 if with_l2 else None)))
        return made[-1]

    yield make
    for instance in made:
        instance.close()


def failing() -> Counter:
    factory = Counter()
    factory.error = RuntimeError("db down")
    return factory


def test_set_reaches_the_other_instances(spawn: Callable[..., Instance], hub: InMemoryHub) -> None:
    a, b, c = spawn(), spawn(), spawn()
    for node in (a, b, c):
        node.cache.get_or_set("price", Counter(10))
    a.cache.set("price", 12)
    hub.drain()
    assert b.cache.get_or_set("price", Counter(99)) == 12  # from L2
    assert c.cache.get("price") == 12
    assert b.received[-1].event_id == EVENT_ID


def test_remove_and_expire_reach_the_other_instances(
    spawn: Callable[..., Instance], hub: InMemoryHub
) -> None:
    a, b, c = spawn(with_l2=False), spawn(with_l2=False), spawn(with_l2=False)
    b.cache.set("gone", 1)
    c.cache.set("stale", 2)
    a.cache.remove("gone")
    a.cache.expire("stale")
    hub.drain()
    assert b.cache.try_get("gone").has_value is False
    assert c.cache.try_get("stale").has_value is False
    assert c.cache.get_or_set("stale", failing()) == 2  # kept for fail-safe


async def test_async_faces_publish_through_the_broker(
    spawn: Callable[..., Instance], hub: InMemoryHub
) -> None:
    a, b = spawn(with_l2=False), spawn(with_l2=False)
    b.cache.set("k", "old")
    await a.cache.set_async("k", "new")
    hub.drain()
    assert b.cache.try_get("k").has_value is False


def test_manual_path_of_the_original_design(
    spawn: Callable[..., Instance], hub: InMemoryHub
) -> None:
    web1, web2, job = spawn(), spawn(), spawn()
    for web in (web1, web2):
        web.cache.get_or_set("inventory", Counter({"sku": 5}))
    # the job's own cache holds nothing; it only lends its instance id
    job.backplane.publish(
        BackplaneMessage(
            cache_key="inventory",
            action=BackplaneMessageAction.ENTRY_EXPIRE,
            source_id=job.cache.instance_id,
        ),
        EntryOptions(),
    )
    hub.drain()
    assert web1.cache.get_or_set("inventory", failing()) == {"sku": 5}  # fail-safe: old value
    assert web2.cache.get_or_set("inventory", Counter({"sku": 7})) == {"sku": 7}  # fresh


async def test_manual_path_async_without_source_id(
    spawn: Callable[..., Instance], hub: InMemoryHub
) -> None:
    web, job = spawn(with_l2=False), spawn(with_l2=False)
    web.cache.set("k", "old")
    await job.backplane.publish_async(
        BackplaneMessage(cache_key="k", action=BackplaneMessageAction.ENTRY_EXPIRE), EntryOptions()
    )
    hub.drain()
    assert web.cache.try_get("k").has_value is False


async def test_a_refused_publish_is_a_backplane_error_naming_the_cause(
    spawn: Callable[..., Instance], hub: InMemoryHub
) -> None:
    job = spawn(with_l2=False)
    message = BackplaneMessage(cache_key="k", action=BackplaneMessageAction.ENTRY_EXPIRE)
    hub.go_down()
    for publish in (
        lambda: job.backplane.publish(message, EntryOptions()),  # leaves at once: no window open
        lambda: job.backplane.publish_envelope([message, message]),
    ):
        with pytest.raises(
            BackplaneError, match=r"cannot publish backplane message: .*hub is down"
        ):
            publish()
        job.backplane._quiet_until = float("-inf")  # no window open: the next one leaves at once
    job.backplane._quiet_until = float("-inf")
    with pytest.raises(BackplaneError, match="hub is down"):
        await job.backplane.publish_async(message, EntryOptions())


def test_job_simple_call_expire(spawn: Callable[..., Instance], hub: InMemoryHub) -> None:
    web1, web2, job = spawn(), spawn(), spawn()
    web1.cache.get_or_set("inventory", Counter(5))
    web2.cache.get("inventory")
    job.cache.expire("inventory")  # no source id to fill in; the L2 copy goes too
    hub.drain()
    assert web1.cache.get_or_set("inventory", failing()) == 5
    assert web2.cache.get_or_set("inventory", Counter(8)) == 8


def test_dropped_message_is_detected_and_expires_everything(
    spawn: Callable[..., Instance], hub: InMemoryHub
) -> None:
    a, b = spawn(with_l2=False), spawn(with_l2=False)
    b.cache.set("x", "old-x")
    b.cache.set("y", "old-y")
    a.cache.set("w", 0)  # b learns a's sequence
    hub.drain()
    hub.faults = HubFaults(drop=1.0)
    a.cache.expire("x")  # lost on the way to b
    hub.drain()  # (sends it, had it waited in a pack)
    hub.faults = HubFaults()
    a.cache.set("z", 1)  # b sees a sequence gap
    hub.drain()
    wait_until(lambda: not b.cache.try_get("y").has_value)  # every entry expired...
    assert b.cache.try_get("x").has_value is False
    assert b.cache.get_or_set("y", failing()) == "old-y"  # ...values kept for fail-safe


def test_auto_recovery_when_the_broker_is_down(
    spawn: Callable[..., Instance], hub: InMemoryHub
) -> None:
    a, b = spawn(), spawn()
    b.cache.get_or_set("k", Counter("v1"))
    hub.go_down()
    a.cache.set("k", "v2")  # PublishError: queued
    assert a.cache.auto_recovery_pending == ["k"]
    before = len(b.received)
    hub.come_up()  # RECONNECTED: a replays its queue
    wait_until(lambda: not a.cache.auto_recovery_pending)
    hub.drain()
    assert len(b.received) == before + 1
    assert b.cache.get("k") == "v2"


def test_other_events_and_other_cache_names_are_ignored(
    spawn: Callable[..., Instance], hub: InMemoryHub
) -> None:
    a, b = spawn(with_l2=False), spawn(with_l2=False)
    b.cache.set("k", "v")
    a.registry.get("00000000-0000-4000-8000-000000000001").raise_(
        "00000000-0000-4000-8000-000000000002", {"cache_key": "k"}
    )
    with HybridCache(
        CacheOptions(name="other"), backplane=EventBrokerBackplane(a.registry, a.broker)
    ) as other:
        other.set("k", "x")  # same broker and event, another cache name
        hub.drain()
    assert b.cache.get("k") == "v"
    assert len(b.received) == 2  # both arrived, neither applied


def test_three_instances_with_redis_and_the_broker(
    spawn: Callable[..., Instance], hub: InMemoryHub, redis_l2: RedisDistributedCache
) -> None:
    a, b, c = (spawn(distributed=redis_l2) for _ in range(3))
    assert a.cache.get_or_set("product:9", Counter({"price": 1})) == {"price": 1}
    assert b.cache.get_or_set("product:9", failing()) == {"price": 1}  # from Redis
    a.cache.set("product:9", {"price": 2})
    hub.drain()
    assert b.cache.get("product:9") == {"price": 2}
    assert c.cache.get_or_set("product:9", failing()) == {"price": 2}
    c.cache.remove("product:9")
    hub.drain()
    assert a.cache.try_get("product:9").has_value is False
    assert redis_l2.get("product:9") is None


def test_a_message_the_broker_refuses_is_not_queued(spawn: Callable[..., Instance]) -> None:
    a = spawn(with_l2=False)
    a.cache.set("k" * 300_000, 1)  # the envelope would exceed max_message_bytes
    assert a.cache.auto_recovery_pending == []


def test_cache_health_follows_the_broker_connection(hub: InMemoryHub) -> None:
    from cache import HealthStatus

    instance = Instance(hub, None)
    try:
        wait_until(lambda: instance.backplane.is_connected)
        assert instance.cache.health().status is HealthStatus.OK
        hub.go_down()
        hub.drain()
        health = instance.cache.health()
        assert health.status is HealthStatus.DEGRADED
        assert "backplane (EventBrokerBackplane) disconnected" in health.reasons[0]
        hub.come_up()
        hub.drain()
        wait_until(lambda: instance.cache.health().status is HealthStatus.OK)
    finally:
        instance.close()
