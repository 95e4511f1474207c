"""EventBrokers talking through ServiceBusTransport and the loopback broker (the real SDK, real wire)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cache import CacheOptions, EntryOptions, HybridCache
from cache.eventbroker_backplane import EventBrokerBackplane
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventMissedEventArgs,
    EventRaiseOption,
    EventReceivedEventArgs,
    EventRegistry,
    MissedReason,
    PublishError,
)
from eventbroker._envelope import Envelope, EnvelopeCodec, normalize_keys
from eventbroker.servicebus import ServiceBusTransport
from eventbroker.testing import LoopbackServiceBus

from .servicebus_support import TOPIC, free_port, sb_options

EVENT = uuid.UUID("6a1f7c3e-0000-4000-8000-00000000e4e4")
RAISER = uuid.UUID("6a1f7c3e-0000-4000-8000-0000000000a1")
SECRET = "wire-secret-0123456789"


class Node:
    """One app instance: a broker over Service Bus, recording what it receives remotely."""

    def __init__(self, bus: LoopbackServiceBus, **options: Any) -> None:
        self.transport = ServiceBusTransport(sb_options(bus, **options))
        self.broker = EventBroker(
            self.transport, EventBrokerOptions(secret=SECRET, application_name="shop")
        )
        self.registry = EventRegistry(self.broker)
        self.event = self.registry.get(EVENT)
        self.received: list[EventReceivedEventArgs] = []
        self.missed: list[EventMissedEventArgs] = []
        self._changed = threading.Condition()
        self.broker.event_received.subscribe(self._on_received)
        self.broker.event_missed.subscribe(self._on_missed)

    def _on_received(self, args: EventReceivedEventArgs) -> None:
        with self._changed:
            self.received.append(args)
            self._changed.notify_all()

    def _on_missed(self, args: EventMissedEventArgs) -> None:
        with self._changed:
            self.missed.append(args)
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], seconds: float = 30.0) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, seconds), "condition not met in time"

    def params(self) -> Counter[Any]:
        return Counter(args.param for args in self.received)

    def raise_broadcast(self, param: Any) -> None:
        self.event.raise_(RAISER, param, EventRaiseOption.RAISE_BROADCAST)


@pytest.fixture
def bus() -> Iterator[LoopbackServiceBus]:
    """A broker with a short lock duration: messages a receiver held when its connection broke
    (prefetched, or dispatched but not yet completed) come back once their lock expires, as on
    Service Bus (default 60 s); 3 s keeps these tests short."""
    broker = LoopbackServiceBus(lock_duration=3.0)
    try:
        broker.start()
    except Exception as exc:
        pytest.fail(f"cannot start the loopback Service Bus broker: {exc!r}")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def nodes(bus: LoopbackServiceBus) -> Iterator[list[Node]]:
    started = [Node(bus) for _ in range(3)]
    _in_parallel([n.broker.start for n in started])  # opening handlers takes ~0.5 s each
    try:
        assert all(n.broker.is_started for n in started)
        yield started
    finally:
        _in_parallel([n.broker.stop for n in started])


def _in_parallel(calls: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _raise_rounds(nodes: list[Node], tag: str, count: int) -> None:
    for i in range(count):
        for index, node in enumerate(nodes):
            node.raise_broadcast(f"{tag}-{index}-{i}")


def _tagged(node: Node, tag: str) -> Counter[Any]:
    return Counter({p: c for p, c in node.params().items() if str(p).startswith(tag + "-")})


def _eventually(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll state held outside this process's callbacks (the loopback broker's)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _expect_all_others(nodes: list[Node], tag: str, count: int) -> None:
    """Each node got every other node's broadcasts exactly once, and never its own."""
    for index, node in enumerate(nodes):
        expected = Counter(
            f"{tag}-{other}-{i}"
            for other in range(len(nodes))
            if other != index
            for i in range(count)
        )
        total = expected.total()
        node.wait_for(lambda n=node, t=total: _tagged(n, tag).total() >= t)  # type: ignore[misc]
        assert _tagged(node, tag) == expected
        assert all(a.source_instance_id != node.broker.instance_id for a in node.received)


def test_three_brokers_broadcast_exactly_once_and_clean_up(
    bus: LoopbackServiceBus, nodes: list[Node]
) -> None:
    names = {n.transport.subscription_name for n in nodes}
    assert len(names) == 3 and names <= set(bus.subscription_names(TOPIC))
    _raise_rounds(nodes, "a", 20)
    _expect_all_others(nodes, "a", 20)
    nodes[0].broker.stop()
    assert nodes[0].transport.subscription_name not in bus.subscription_names(TOPIC)
    assert {nodes[1].transport.subscription_name, nodes[2].transport.subscription_name} <= set(
        bus.subscription_names(TOPIC)
    )


def test_restart_keeping_state_loses_nothing_and_duplicates_nothing(
    bus: LoopbackServiceBus, nodes: list[Node]
) -> None:
    _raise_rounds(nodes, "before", 3)
    bus.restart(keep_state=True)
    _raise_rounds(nodes, "after", 3)
    _expect_all_others(nodes, "before", 3)
    _expect_all_others(nodes, "after", 3)


def test_restart_dropping_state_recreates_subscriptions_and_fires_event_missed(
    bus: LoopbackServiceBus, nodes: list[Node]
) -> None:
    bus.restart(keep_state=False)
    for node in nodes:
        node.wait_for(
            lambda n=node: any(  # type: ignore[misc]
                m.reason is MissedReason.SUBSCRIPTION_RECREATED for m in n.missed
            )
        )
    assert {n.transport.subscription_name for n in nodes} <= set(bus.subscription_names(TOPIC))
    _raise_rounds(nodes, "later", 2)
    _expect_all_others(nodes, "later", 2)


def test_broker_down_raise_errors_are_clear_queued_events_arrive_and_caches_recover(
    bus: LoopbackServiceBus,
) -> None:
    a, b = Node(bus, publish_deadline=2.0), Node(bus)
    entry = EntryOptions(duration=60)
    cache_a, cache_b = (
        HybridCache(
            CacheOptions(name="shop", default_entry_options=entry),
            backplane=EventBrokerBackplane(n.registry, n.broker),
        )
        for n in (a, b)
    )
    with a.broker, b.broker:
        cache_b.set("price", "old")
        bus.refuse_connections(10)
        bus.cut_connections()
        accepted, errors = [], []
        deadline = time.monotonic() + 8
        i = 0
        while time.monotonic() < deadline:
            try:
                a.raise_broadcast(f"down-{i}")
                accepted.append(f"down-{i}")
            except PublishError as exc:
                errors.append(str(exc))
            i += 1
            time.sleep(0.2)
        assert errors, "publishing never failed although the broker was down for 10 s"
        assert all("unreachable" in e and "publish_deadline" in e for e in errors)
        assert accepted
        cache_a.set("price", "new")  # the backplane publish fails: queued for auto-recovery
        assert cache_a.auto_recovery_pending == ["price"]
        b.wait_for(lambda: set(accepted) <= set(b.params()), seconds=60)
        assert all(count == 1 for count in b.params().values())
        assert any(m.reason is MissedReason.RECONNECT for m in b.missed)
        _eventually(lambda: not cache_a.auto_recovery_pending)  # replayed
        _eventually(lambda: not cache_b.try_get("price").has_value)  # b's copy is not served
        cache_a.close()
        cache_b.close()


def test_an_app_starts_while_service_bus_is_down_and_catches_up_by_itself() -> None:
    bus = LoopbackServiceBus(port=free_port(), admin_port=free_port())  # not listening yet
    app = Node(bus)
    app.broker.start()  # returns: the web app starts although Service Bus is unreachable
    try:
        app.raise_broadcast("while-down")  # queued
        assert not app.missed
        bus.create_topic(TOPIC)
        bus.create_subscription(TOPIC, "observer")  # receives from the moment app can send
        with bus:
            app.wait_for(lambda: any(m.reason is MissedReason.RECONNECT for m in app.missed))
            observer = Node(bus, subscription_name="observer")
            with observer.broker:
                observer.wait_for(lambda: "while-down" in observer.params())
    finally:
        app.broker.stop()


def test_poison_messages_are_dead_lettered_with_a_reason_and_the_loop_goes_on(
    bus: LoopbackServiceBus, nodes: list[Node]
) -> None:
    receiver = nodes[1]
    forged = EnvelopeCodec(normalize_keys(SECRET), max_message_bytes=1 << 20, replay_window=300)
    envelope = Envelope(
        version=1,
        message_id=uuid.uuid4().hex,
        event_id=EVENT,
        raiser_id=RAISER,
        instance_id="forger",
        application_name="shop",
        site_id=None,
        sequence=1,
        sent_at=time.time(),
        param="genuine",
        key_id=forged.signing_key_id,
    )
    tampered = forged.encode(envelope).replace(b'"genuine"', b'"tampered"')
    bus.inject(TOPIC, b"not json at all")
    bus.inject(TOPIC, tampered)
    bus.inject(TOPIC, b"x" * (300 * 1024))
    nodes[0].raise_broadcast("after-poison")
    receiver.wait_for(lambda: "after-poison" in receiver.params())
    sub = receiver.transport.subscription_name
    assert sub is not None

    def reasons() -> set[str]:
        return {str(d.reason) for d in bus.dead_letters(TOPIC, sub)}

    _eventually(lambda: len(reasons()) >= 3)
    assert reasons() == {"malformed", "bad_signature", "oversize"}
    assert "tampered" not in receiver.params()


def test_hostile_bodies_are_dead_lettered_as_malformed_counted_and_the_loop_goes_on(
    bus: LoopbackServiceBus, nodes: list[Node]
) -> None:
    import json

    from ._support import sign

    receiver = nodes[1]
    deep = b'{"sig":"' + b"0" * 64 + b'",' + b'"a":' + b"[" * 2_000 + b"]" * 2_000 + b"}"
    key = normalize_keys(SECRET)
    fields = {
        "version": 1,
        "message_id": uuid.uuid4().hex,
        "event_id": str(EVENT),
        "raiser_id": str(RAISER),
        "instance_id": "forger",
        "application_name": "shop",
        "site_id": None,
        "sequence": 1,
        "sent_at": 10**400,  # validly signed, impossible send time
        "param": "x",
        "key_id": next(iter(key)),
    }
    overflow = sign(fields, SECRET)
    nan = sign({**fields, "sent_at": float("nan")}, SECRET)
    assert b"NaN" in nan and json.loads(b"{" + overflow[74:])["sent_at"] == 10**400
    for body in (deep, overflow, nan):
        bus.inject(TOPIC, body)
    nodes[0].raise_broadcast("after-hostile")
    receiver.wait_for(lambda: "after-hostile" in receiver.params())
    sub = receiver.transport.subscription_name
    assert sub is not None
    _eventually(lambda: len(bus.dead_letters(TOPIC, sub)) >= 3)
    assert sorted(str(d.reason) for d in bus.dead_letters(TOPIC, sub)) == ["malformed"] * 3
    assert receiver.broker.stats.rejected.get("malformed") == 3
    assert "delivery_failed" not in receiver.broker.stats.rejected
