"""Three instances on one in-memory hub: who gets what, on which thread, with which param."""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import attrs
import pytest

from eventbroker import (
    ConnectionState,
    EventBroker,
    EventBrokerOptions,
    EventMissedEventArgs,
    EventNotification,
    EventRaiseOption,
    EventReceivedEventArgs,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
    MissedReason,
    PublishError,
)

from ._support import wait_until

EVENT = uuid.UUID("11111111-2222-4333-8444-555555555555")
OTHER_EVENT = uuid.UUID("99999999-2222-4333-8444-555555555555")
RAISER = uuid.UUID("E8B2B7D1-8A7E-4C2E-9C8D-6B7C1A2B3C4D")


@attrs.frozen
class StockChanged:
    sku: str
    quantity: int
    at: datetime.datetime
    ref: uuid.UUID


class Farm:
    """N instances of one app on one hub, each with its registry and recorded notifications."""

    def __init__(self, n: int = 3, **options: object) -> None:
        self.hub = InMemoryHub()
        self.brokers = [
            EventBroker(
                InMemoryTransport(self.hub),
                EventBrokerOptions(
                    secret="farm-secret-0123456789abcdef", application_name="shop", **options
                ),  # type: ignore[arg-type]
            )
            for _ in range(n)
        ]
        self.registries = [EventRegistry(b) for b in self.brokers]
        self.raised: list[list[EventNotification]] = [[] for _ in range(n)]
        self.received: list[list[EventReceivedEventArgs]] = [[] for _ in range(n)]
        for i, (broker, registry) in enumerate(zip(self.brokers, self.registries, strict=True)):
            registry.get(EVENT).raised.subscribe(self.raised[i].append)
            broker.event_received.subscribe(self.received[i].append)
        for broker in self.brokers:
            broker.start()

    def stop(self) -> None:
        for broker in self.brokers:
            broker.stop()


@pytest.fixture
def farm() -> Iterator[Farm]:
    f = Farm()
    yield f
    f.stop()


def test_broadcast_reaches_every_other_instance_once_and_local_handlers_once(farm: Farm) -> None:
    farm.registries[0].get(EVENT).raise_(RAISER, {"sku": "A-1", "qty": 3})
    farm.hub.drain()

    assert [n.param for n in farm.raised[0]] == [{"sku": "A-1", "qty": 3}]
    assert farm.raised[0][0].is_local
    for i in (1, 2):
        assert [n.param for n in farm.raised[i]] == [{"sku": "A-1", "qty": 3}]
        assert not farm.raised[i][0].is_local
        assert farm.raised[i][0].source_instance_id == farm.brokers[0].instance_id
        assert [r.event_id for r in farm.received[i]] == [EVENT]
        assert farm.received[i][0].raiser_id == RAISER
        assert farm.received[i][0].application_name == "shop"
        assert farm.received[i][0].message_id == farm.raised[0][0].message_id
    assert farm.received[0] == []  # own messages never come back


def test_raise_local_stays_local(farm: Farm) -> None:
    farm.registries[1].get(EVENT).raise_(RAISER, "only here", EventRaiseOption.RAISE_LOCAL)
    farm.hub.drain()
    assert [n.param for n in farm.raised[1]] == ["only here"]
    assert farm.raised[1][0].message_id is None
    assert farm.raised[0] == [] and farm.raised[2] == []
    assert all(r == [] for r in farm.received)
    assert farm.brokers[1].stats.published == 0


def test_many_raisers_each_message_dispatched_exactly_once(farm: Farm) -> None:
    threads = [
        threading.Thread(
            target=lambda i=i: [
                farm.registries[i].get(EVENT).raise_(RAISER, [i, n]) for n in range(50)
            ]
        )
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    farm.hub.drain()
    for i in range(3):
        remote = Counter(tuple(n.param) for n in farm.raised[i] if not n.is_local)
        assert sum(remote.values()) == 100
        assert set(remote.values()) == {1}
        assert {p[0] for p in remote} == {0, 1, 2} - {i}


async def test_raise_async_awaits_async_handlers_on_the_callers_loop(farm: Farm) -> None:
    seen: list[tuple[object, bool]] = []
    caller_loop = asyncio.get_running_loop()

    async def handler(n: EventNotification) -> None:
        seen.append((n.param, asyncio.get_running_loop() is caller_loop))

    farm.registries[0].get(EVENT).raised.subscribe(handler)
    await farm.registries[0].get(EVENT).raise_async(RAISER, 7, EventRaiseOption.RAISE_LOCAL)
    assert seen == [(7, True)]


def test_remote_handlers_run_off_the_callers_thread_async_ones_on_the_broker_loop(
    farm: Farm,
) -> None:
    where: dict[str, str] = {}

    def plain(n: EventNotification) -> None:
        where["plain"] = threading.current_thread().name

    async def coroutine(n: EventNotification) -> None:
        where["async"] = threading.current_thread().name

    farm.registries[1].get(EVENT).raised.subscribe(plain)
    farm.registries[1].get(EVENT).raised.subscribe(coroutine)
    farm.registries[0].get(EVENT).raise_(RAISER, None)
    farm.hub.drain()
    assert where["plain"].startswith("eventbroker-dispatch-")
    assert where["async"].startswith("eventbroker-io-")


def test_a_failing_handler_is_logged_and_never_stops_the_others(
    farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(n: EventNotification) -> None:
        raise RuntimeError("handler bug")

    later: list[object] = []
    farm.registries[1].get(EVENT).raised.subscribe(broken)
    farm.registries[1].get(EVENT).raised.subscribe(lambda n: later.append(n.param))
    with caplog.at_level(logging.ERROR, logger="eventbroker"):
        farm.registries[0].get(EVENT).raise_(RAISER, 1)
        farm.registries[0].get(EVENT).raise_(RAISER, 2)
        farm.hub.drain()
    assert later == [1, 2]
    assert str(EVENT) in caplog.text and "handler bug" in caplog.text


def test_unsubscribe_detaches(farm: Farm) -> None:
    got: list[object] = []
    with farm.registries[2].get(EVENT).raised.subscribe(lambda n: got.append(n.param)):
        farm.registries[0].get(EVENT).raise_(RAISER, "a")
        farm.hub.drain()
    farm.registries[0].get(EVENT).raise_(RAISER, "b")
    farm.hub.drain()
    assert got == ["a"]


def test_param_type_structures_remote_params_with_cattrs() -> None:
    farm = Farm(2)
    try:
        got: list[object] = []
        farm.registries[1].get(OTHER_EVENT, param_type=StockChanged).raised.subscribe(
            lambda n: got.append(n.param)
        )
        value = StockChanged(
            "A-1", 5, datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), uuid.uuid4()
        )
        farm.registries[0].get(OTHER_EVENT).raise_(RAISER, value)
        farm.hub.drain()
        assert got == [value]
    finally:
        farm.stop()


def test_registry_contract(farm: Farm) -> None:
    registry = farm.registries[0]
    assert registry.get(EVENT) is registry.get(str(EVENT))
    assert registry.exists(EVENT) and not registry.exists(uuid.uuid4())
    assert EVENT in {event.id for event in registry}
    with pytest.raises(TypeError, match="'not-a-guid'"):
        registry.get("not-a-guid")
    with pytest.raises(TypeError, match="42"):
        registry.get(42)  # type: ignore[arg-type]
    registry.get(OTHER_EVENT, param_type=StockChanged)
    with pytest.raises(ValueError, match="param_type"):
        registry.get(OTHER_EVENT, param_type=dict)


def test_bad_params_fail_at_raise_time_naming_the_type(farm: Farm) -> None:
    event = farm.registries[0].get(EVENT)
    with pytest.raises(TypeError, match=r"param\['a'\]\[1\] has type builtins.set"):
        event.raise_(RAISER, {"a": [0, {1, 2}]})
    with pytest.raises(TypeError, match=r"param\.at has type builtins.object"):
        event.raise_(RAISER, StockChanged("A", 1, object(), uuid.uuid4()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dict keys"):
        event.raise_(RAISER, {1: "x"})
    with pytest.raises(TypeError, match="finite"):
        event.raise_(RAISER, float("nan"))
    with pytest.raises(TypeError, match="object"):
        event.raise_(RAISER, object(), EventRaiseOption.RAISE_LOCAL)
    with pytest.raises(TypeError, match="raiser_id"):
        event.raise_("nope", 1)
    assert farm.brokers[0].stats.published == 0


def test_too_large_param_fails_at_raise_time_naming_both_sizes() -> None:
    farm = Farm(2, max_message_bytes=1024)
    try:
        with pytest.raises(ValueError, match=r"\d+ bytes, over max_message_bytes=1024"):
            farm.registries[0].get(EVENT).raise_(RAISER, "x" * 2000)
        farm.registries[0].get(EVENT).raise_(RAISER, "small")  # the next one still flows
        farm.hub.drain()
        assert [n.param for n in farm.raised[1]] == ["small"]
        assert farm.raised[0][0].param == "small"  # the failed raise ran no local handler
    finally:
        farm.stop()


def test_broadcast_before_start_is_a_clear_error() -> None:
    broker = EventBroker(
        InMemoryTransport(InMemoryHub()), EventBrokerOptions(secret="test-secret-0123456789")
    )
    registry = EventRegistry(broker)
    with pytest.raises(RuntimeError, match=r"broker\.start\(\)"):
        registry.get(EVENT).raise_(RAISER, 1)
    got: list[object] = []
    registry.get(EVENT).raised.subscribe(lambda n: got.append(n.param))
    registry.get(EVENT).raise_(RAISER, 2, EventRaiseOption.RAISE_LOCAL)
    assert got == [2]


def test_hub_down_raises_publish_error_then_reconnect_fires_event_missed(farm: Farm) -> None:
    states: list[ConnectionState] = []
    missed: list[EventMissedEventArgs] = []
    event_missed: list[EventMissedEventArgs] = []
    farm.brokers[1].connection_changed.subscribe(states.append)
    farm.brokers[1].event_missed.subscribe(missed.append)
    farm.registries[1].get(EVENT).missed.subscribe(event_missed.append)

    farm.hub.go_down()
    with pytest.raises(PublishError, match="down"):
        farm.registries[0].get(EVENT).raise_(RAISER, "lost")
    assert farm.raised[0] == []  # nothing half done
    farm.hub.come_up()
    wait_until(lambda: len(missed) == 1 and len(event_missed) == 1)
    assert states == [ConnectionState.DISCONNECTED, ConnectionState.RECONNECTED]
    assert missed[0].reason is MissedReason.RECONNECT
    farm.registries[0].get(EVENT).raise_(RAISER, "after")
    farm.hub.drain()
    assert [n.param for n in farm.raised[1]] == ["after"]
    # The failed raise used up no sequence number: no false gap afterwards.
    assert farm.brokers[1].check_missed_events() == []


def test_other_application_on_the_same_hub_is_ignored() -> None:
    hub = InMemoryHub()
    shop = EventBroker(
        InMemoryTransport(hub),
        EventBrokerOptions(secret="test-secret-0123456789", application_name="shop"),
    )
    blog = EventBroker(
        InMemoryTransport(hub),
        EventBrokerOptions(secret="test-secret-0123456789", application_name="blog"),
    )
    EventRegistry(shop)
    got: list[EventReceivedEventArgs] = []
    blog.event_received.subscribe(got.append)
    with shop, blog:
        shop.raise_event(EVENT, RAISER, 1)
        hub.drain()
        assert got == []
        assert blog.stats.other_application == 1


async def test_async_context_manager_and_raise_event_async() -> None:
    hub = InMemoryHub()
    a = EventBroker(InMemoryTransport(hub), EventBrokerOptions(secret="test-secret-0123456789"))
    b = EventBroker(InMemoryTransport(hub), EventBrokerOptions(secret="test-secret-0123456789"))
    got: list[object] = []

    async def on_received(args: EventReceivedEventArgs) -> None:
        got.append(args.param)

    b.event_received.subscribe(on_received)
    async with a, b:
        assert a.is_started and b.is_started
        await a.raise_event_async(EVENT, RAISER, {"n": 1})
        await asyncio.to_thread(hub.drain)
    assert got == [{"n": 1}]
    assert not a.is_started
