"""ServiceBusTransport over the real wire (azure-servicebus SDK) against the loopback broker.

These drive the transport directly with a small recording sink, so each behaviour of the
transport (provisioning, settlement, batching, reconnects, publish errors) is pinned down
independently of the event core.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from eventbroker import ConnectionState, PublishError, Rejection, TransportMessage
from eventbroker.servicebus import (
    ServiceBusOptions,
    ServiceBusStartError,
    ServiceBusTransport,
    SubscriptionNameError,
)
from eventbroker.testing import LoopbackServiceBus

from .servicebus_support import sb_options


class RecordingSink:
    """A `TransportSink` that records bodies; bodies starting with b"poison" are rejected."""

    def __init__(self, application_name: str = "shop") -> None:
        self.instance_id = uuid.uuid4().hex
        self.application_name = application_name
        self.bodies: list[bytes] = []
        self.states: list[ConnectionState] = []
        self._changed = asyncio.Event()

    def deliver(self, body: bytes) -> asyncio.Future[Rejection | None]:
        self.bodies.append(body)
        self._changed.set()
        future: asyncio.Future[Rejection | None] = asyncio.get_running_loop().create_future()
        if body.startswith(b"poison"):
            future.set_result(Rejection("malformed", "not an envelope"))
        else:
            future.set_result(None)
        return future

    def connection_changed(self, state: ConnectionState) -> None:
        self.states.append(state)
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], seconds: float = 20.0) -> None:
        """Wait until `condition()` holds (checked whenever something arrives)."""
        async with asyncio.timeout(seconds):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(*pairs: tuple[ServiceBusTransport, RecordingSink]) -> AsyncIterator[None]:
    """Start the transports together (opening handlers takes ~0.5 s), stop them at the end."""
    await asyncio.gather(*(transport.start(sink) for transport, sink in pairs))
    try:
        yield
    finally:
        await asyncio.gather(*(transport.stop() for transport, _ in pairs))


def message(body: bytes, source: str = "sender") -> TransportMessage:
    return TransportMessage(body=body, message_id=uuid.uuid4().hex, source_instance_id=source)


@pytest.fixture
def bus(servicebus_broker: LoopbackServiceBus) -> LoopbackServiceBus:
    return servicebus_broker


@pytest.fixture
async def pair(bus: LoopbackServiceBus) -> AsyncIterator[tuple[Any, ...]]:
    """Two started transports (a, b) with their sinks."""
    a, b = ServiceBusTransport(sb_options(bus)), ServiceBusTransport(sb_options(bus))
    sink_a, sink_b = RecordingSink(), RecordingSink()
    async with running((a, sink_a), (b, sink_b)):
        yield a, sink_a, b, sink_b


async def test_every_message_arrives_once_and_subscriptions_follow_the_lifecycle(
    bus: LoopbackServiceBus, pair: tuple[Any, ...]
) -> None:
    a, sink_a, b, sink_b = pair
    assert {a.subscription_name, b.subscription_name} <= set(bus.subscription_names("events"))
    sent = [f"m{i}".encode() for i in range(300)]
    for body in sent:  # one burst: coalesced into batches
        a.publish(message(body))
    await sink_b.wait_for(lambda: len(sink_b.bodies) >= len(sent))
    assert sorted(sink_b.bodies) == sorted(sent)
    assert sink_a.states == [ConnectionState.CONNECTED]
    await b.stop()
    assert b.subscription_name not in bus.subscription_names("events")
    assert a.subscription_name in bus.subscription_names("events")


async def test_publish_errors_are_clear(bus: LoopbackServiceBus) -> None:
    transport = ServiceBusTransport(sb_options(bus, max_queued_messages=2, max_message_size=2048))
    with pytest.raises(PublishError, match="not running"):
        transport.publish(message(b"early"))
    await transport.start(RecordingSink())
    try:
        with pytest.raises(PublishError, match="larger than the Service Bus limit"):
            transport.publish(message(b"x" * 4096))
        transport.publish(message(b"1"))
        transport.publish(message(b"2"))  # the send task cannot run before we yield
        with pytest.raises(PublishError, match="queue is full"):
            transport.publish(message(b"3"))
    finally:
        await transport.stop()
    with pytest.raises(PublishError, match="not running"):
        transport.publish(message(b"late"))


async def test_invalid_subscription_name_fails_at_start_naming_the_rule(
    bus: LoopbackServiceBus,
) -> None:
    transport = ServiceBusTransport(sb_options(bus, subscription_name="bad name!"))
    with pytest.raises(SubscriptionNameError, match="letters, digits"):
        await transport.start(RecordingSink())


async def test_missing_topic_fails_at_start_when_creation_is_off(bus: LoopbackServiceBus) -> None:
    transport = ServiceBusTransport(sb_options(bus, topic="absent", create_missing_topic=False))
    with pytest.raises(ServiceBusStartError, match="create_missing_topic"):
        await transport.start(RecordingSink())


class FakeClock:
    """The transport reads its clock (publish deadline) first when a send fails: `read` says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.read = asyncio.Event()

    def __call__(self) -> float:
        self.read.set()
        return self.now


async def test_publish_fails_clearly_once_the_broker_is_down_past_the_deadline(
    bus: LoopbackServiceBus,
) -> None:
    clock = FakeClock()
    transport = ServiceBusTransport(sb_options(bus, publish_deadline=30.0), clock=clock)
    sink = RecordingSink()
    await transport.start(sink)
    try:
        bus.refuse_connections(30)
        bus.cut_connections()
        transport.publish(message(b"while down"))  # accepted: queued and retried
        await asyncio.wait_for(clock.read.wait(), 30)
        clock.now += 31
        with pytest.raises(PublishError, match="unreachable for 31 s"):
            transport.publish(message(b"too late"))
    finally:
        bus.refuse_connections(0)
        await transport.stop()


class StaticTokenCredential:
    """A real async `TokenCredential`: hands out a fixed token and counts the requests."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken("test-token", int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        pass


async def test_namespace_and_credential_path(bus: LoopbackServiceBus) -> None:
    credential = StaticTokenCredential()
    host = bus.connection_string.split("sb://", 1)[1].split(";", 1)[0].rstrip("/")
    base = sb_options(bus)
    options = ServiceBusOptions(
        fully_qualified_namespace=host,
        credential=credential,
        use_development_emulator=True,
        topic=base.topic,
        administration_endpoint=base.administration_endpoint,
        reconnect_initial_backoff=base.reconnect_initial_backoff,
    )
    a, b = ServiceBusTransport(options), ServiceBusTransport(sb_options(bus))
    sink_a, sink_b = RecordingSink(), RecordingSink()
    async with running((a, sink_a), (b, sink_b)):
        a.publish(message(b"with a token"))
        b.publish(message(b"with a key"))
        await sink_b.wait_for(lambda: b"with a token" in sink_b.bodies)
        await sink_a.wait_for(lambda: b"with a key" in sink_a.bodies)
    assert credential.scopes  # both the AMQP link and the admin client asked for tokens


async def test_a_subscription_deleted_under_a_running_transport_is_recreated(
    bus: LoopbackServiceBus,
) -> None:
    options = sb_options(bus, subscription_check_interval=0.1, receive_wait=0.2)
    a, b = ServiceBusTransport(options), ServiceBusTransport(sb_options(bus))
    sink_a, sink_b = RecordingSink(), RecordingSink()
    async with running((a, sink_a), (b, sink_b)):
        assert a.subscription_name is not None
        bus.delete_subscription("events", a.subscription_name)
        await sink_a.wait_for(lambda: ConnectionState.SUBSCRIPTION_RECREATED in sink_a.states)
        assert a.subscription_name in bus.subscription_names("events")
        b.publish(message(b"to the new subscription"))
        await sink_a.wait_for(lambda: b"to the new subscription" in sink_a.bodies)


async def test_unreachable_namespace_fails_start_clearly() -> None:
    options = ServiceBusOptions(
        connection_string="Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=k;SharedAccessKey=v;"
        "UseDevelopmentEmulator=true",
        administration_endpoint="http://127.0.0.1:9",
        sdk_retry_total=0,
    )
    transport = ServiceBusTransport(options)
    with pytest.raises(ServiceBusStartError, match="could not start the Service Bus transport"):
        await transport.start(RecordingSink())
    with pytest.raises(PublishError, match="not running"):
        transport.publish(message(b"x"))


async def test_own_message_rule_drops_own_messages_broker_side(bus: LoopbackServiceBus) -> None:
    a = ServiceBusTransport(sb_options(bus))  # the rule is on by default
    b = ServiceBusTransport(sb_options(bus, filter_own_messages=False))  # own ones come back
    sink_a, sink_b = RecordingSink(), RecordingSink()
    async with running((a, sink_a), (b, sink_b)):
        a.publish(message(b"from a", source=sink_a.instance_id))
        b.publish(message(b"from b", source=sink_b.instance_id))
        await sink_a.wait_for(lambda: b"from b" in sink_a.bodies)
        await sink_b.wait_for(lambda: {b"from a", b"from b"} <= set(sink_b.bodies))
        a.publish(message(b"marker", source="someone else"))  # sent after "from a"
        await sink_a.wait_for(lambda: b"marker" in sink_a.bodies)
        assert b"from a" not in sink_a.bodies


class FailingSink(RecordingSink):
    """A sink with a bug: it raises on bodies starting with b"boom"."""

    def deliver(self, body: bytes) -> asyncio.Future[Rejection | None]:
        if body.startswith(b"boom"):
            raise RuntimeError("sink bug")
        return super().deliver(body)


async def test_a_failing_sink_dead_letters_the_message_and_receiving_goes_on(
    bus: LoopbackServiceBus,
) -> None:
    a, b = ServiceBusTransport(sb_options(bus)), ServiceBusTransport(sb_options(bus))
    sink_a, sink_b = RecordingSink(), FailingSink()
    async with running((a, sink_a), (b, sink_b)):
        a.publish(message(b"boom"))
        a.publish(message(b"after"))
        await sink_b.wait_for(lambda: b"after" in sink_b.bodies)
        assert b.subscription_name is not None
        # "boom" was dead-lettered (outcome confirmed) before "after" was received
        dead = bus.dead_letters("events", b.subscription_name)
        assert [(d.body, d.reason) for d in dead] == [(b"boom", "delivery_failed")]
        assert sink_b.states == [ConnectionState.CONNECTED]  # no reconnect for a sink bug
