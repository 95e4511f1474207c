"""ServiceBusTransport over the real wire (azure-servicebus SDK) against the loopback broker.

These drive the transport directly with a small recording sink, so each behaviour of the
transport (provisioning, settlement, batching, reconnects, publish errors) is pinned down
independently of the event core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
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

from .servicebus_support import down_options, free_port, sb_options


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


async def test_start_with_service_bus_down_returns_at_once_then_connects_by_itself() -> None:
    port, admin_port = free_port(), free_port()
    transport = ServiceBusTransport(down_options(port, admin_port, start_timeout=30.0))
    sink = RecordingSink()
    began = time.monotonic()
    await transport.start(sink)  # nothing listens: no exception, no wait for start_timeout
    assert time.monotonic() - began < 3.0  # regression guard only (it took 4.8 s, then raised)
    try:
        assert sink.states == [ConnectionState.DISCONNECTED]
        assert transport.disconnected_since is not None
        assert "Connection refused" in transport.last_error
        transport.publish(message(b"sent while down"))
        assert transport.queued == 1
        bus = LoopbackServiceBus(port=port, admin_port=admin_port)
        bus.create_topic("events")  # an observer's subscription exists before anyone sends
        bus.create_subscription("events", "observer")
        with bus:
            await sink.wait_for(lambda: ConnectionState.RECONNECTED in sink.states)
            assert sink.states == [ConnectionState.DISCONNECTED, ConnectionState.RECONNECTED]
            assert transport.disconnected_since is None
            assert transport.subscription_name in bus.subscription_names("events")
            observer = ServiceBusTransport(sb_options(bus, subscription_name="observer"))
            seen = RecordingSink()
            async with running((observer, seen)):
                await seen.wait_for(lambda: b"sent while down" in seen.bodies)
            await transport.stop()
            assert transport.subscription_name not in bus.subscription_names("events")
    finally:
        await transport.stop()


async def test_start_gives_up_waiting_after_start_timeout(bus: LoopbackServiceBus) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        options = sb_options(bus, administration_endpoint=endpoint, start_timeout=0.3)
        transport = ServiceBusTransport(options)
        sink = RecordingSink()
        await transport.start(sink)
        try:
            assert sink.states == [ConnectionState.DISCONNECTED]
            assert transport.last_error == "no connection within start_timeout=0.3 s"
        finally:
            await transport.stop()


def _wrong_key(connection_string: str, key: str) -> str:
    return connection_string.replace("SharedAccessKey=loopback", f"SharedAccessKey={key}")


SECRET_KEY = "s3cr3t-key-0123456789abcdefghijklmnop="


async def test_refused_credentials_still_fail_start_clearly(bus: LoopbackServiceBus) -> None:
    options = attrs.evolve(
        sb_options(bus), connection_string=_wrong_key(bus.connection_string, SECRET_KEY)
    )
    transport = ServiceBusTransport(options)
    with pytest.raises(ServiceBusStartError, match="refused the credentials") as raised:
        await transport.start(RecordingSink())
    assert "Unauthorized" in str(raised.value)
    assert SECRET_KEY not in str(raised.value)
    with pytest.raises(PublishError, match="not running"):
        transport.publish(message(b"x"))


async def test_credentials_refused_by_amqp_alone_fail_start_too(bus: LoopbackServiceBus) -> None:
    # the admin endpoint takes the key; the AMQP side (a broker with another key) refuses it
    with LoopbackServiceBus(shared_access_key="another-key") as strict:
        options = attrs.evolve(
            sb_options(bus),
            connection_string=bus.connection_string.replace(str(bus.port), str(strict.port)),
        )
        transport = ServiceBusTransport(options)
        with pytest.raises(ServiceBusStartError, match="ServiceBusAuthenticationError"):
            await transport.start(RecordingSink())


async def test_a_loopback_broker_without_its_admin_endpoint_says_which_setting_is_missing(
    bus: LoopbackServiceBus,
) -> None:
    options = attrs.evolve(sb_options(bus), administration_endpoint=None)
    with pytest.raises(
        ServiceBusStartError, match="EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT"
    ) as raised:
        await ServiceBusTransport(options).start(RecordingSink())
    assert "administration_endpoint" in str(raised.value)


async def test_stop_with_service_bus_down_keeps_to_stop_timeout(
    bus: LoopbackServiceBus, caplog: pytest.LogCaptureFixture
) -> None:
    transport = ServiceBusTransport(sb_options(bus, stop_timeout=2.0, receive_wait=0.5))
    await transport.start(RecordingSink())
    bus.stop()
    for body in (b"1", b"2", b"3"):
        transport.publish(message(body))
    caplog.set_level(logging.INFO, "eventbroker.servicebus")
    began = time.monotonic()
    await transport.stop()
    assert time.monotonic() - began < 2.0 + 3.0  # regression guard only (it took 6.8 s)
    [line] = [r for r in caplog.records if "stopped" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "3 message(s) unsent" in line.getMessage()
    assert "not deleted" in line.getMessage() and "AutoDeleteOnIdle" in line.getMessage()
    assert transport.queued == 0


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


async def test_dead_lettering_is_logged_once_per_cause_with_one_traceback(
    bus: LoopbackServiceBus, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = ServiceBusTransport(sb_options(bus)), ServiceBusTransport(sb_options(bus))
    sink_a, sink_b = RecordingSink(), FailingSink()
    caplog.set_level(logging.DEBUG, "eventbroker.servicebus")
    async with running((a, sink_a), (b, sink_b)):
        own = sink_a.instance_id  # filtered out of a's own subscription
        for i in range(3):
            a.publish(message(b"boom %d" % i, own))  # the sink raises
            a.publish(message(b"poison %d" % i, own))  # the sink rejects it
        a.publish(message(b"after", own))
        await sink_b.wait_for(lambda: b"after" in sink_b.bodies)
        assert b.subscription_name is not None
        dead = bus.dead_letters("events", b.subscription_name)
        assert sorted(d.reason or "" for d in dead) == ["delivery_failed"] * 3 + ["malformed"] * 3
    loud = [r for r in caplog.records if "dead-lettering" in r.getMessage()]
    assert len(loud) == 2, [r.getMessage() for r in loud]
    failed, rejected = sorted(loud, key=lambda r: r.levelno, reverse=True)
    assert failed.levelno == logging.ERROR and "sink bug" in failed.getMessage()
    assert failed.exc_info is not None  # the traceback, once
    assert rejected.levelno == logging.WARNING and "malformed" in rejected.getMessage()
    assert rejected.exc_info is None


async def test_a_normal_run_logs_a_few_lines_at_start_and_stop_and_none_per_message(
    bus: LoopbackServiceBus, caplog: pytest.LogCaptureFixture
) -> None:
    bus.create_topic("events")
    caplog.set_level(logging.INFO, "eventbroker.servicebus")
    a, b = ServiceBusTransport(sb_options(bus)), ServiceBusTransport(sb_options(bus))
    sink_a, sink_b = RecordingSink(), RecordingSink()
    async with running((a, sink_a), (b, sink_b)):
        for i in range(50):
            a.publish(message(b"m%d" % i))
        await sink_b.wait_for(lambda: len(sink_b.bodies) == 50)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("eventbroker.")]
    assert len(lines) == 4, lines  # per transport: connected, stopped
    assert sum("connected in" in line for line in lines) == 2
    assert sum("stopped in" in line for line in lines) == 2


async def test_health_readings_say_when_and_why_without_secrets() -> None:
    options = down_options(free_port(), free_port())
    options = attrs.evolve(
        options, connection_string=_wrong_key(options.connection_string or "", SECRET_KEY)
    )
    transport = ServiceBusTransport(options)
    assert (transport.queued, transport.disconnected_since, transport.last_error) == (0, None, "")
    before = time.time()
    await transport.start(RecordingSink())
    try:
        since = transport.disconnected_since
        assert since is not None and before <= since <= time.time()
        assert transport.last_error.startswith("ServiceRequestError")
        assert SECRET_KEY not in transport.last_error
    finally:
        await transport.stop()


class SlowSink(RecordingSink):
    """Every handler takes ``hold`` seconds to finish (its outcome resolves later)."""

    def __init__(self, hold: float) -> None:
        super().__init__()
        self.hold = hold
        self.finished = 0

    def deliver(self, body: bytes) -> asyncio.Future[Rejection | None]:
        self.bodies.append(body)
        self._changed.set()
        future: asyncio.Future[Rejection | None] = asyncio.get_running_loop().create_future()

        def finish() -> None:
            self.finished += 1
            self._changed.set()
            future.set_result(None)

        asyncio.get_running_loop().call_later(self.hold, finish)
        return future


async def test_a_handler_running_longer_than_the_lock_keeps_it_and_is_not_redelivered() -> None:
    """The transport renews the lock of a message whose handler outlasts the lock duration
    (from its receive loop, over the wire): one delivery, settled once, nothing redelivered."""
    with LoopbackServiceBus(lock_duration=1.0) as bus:
        transport, sink = ServiceBusTransport(sb_options(bus)), SlowSink(hold=3.5)
        async with running((transport, sink)):
            assert transport.subscription_name is not None
            path = f"events/Subscriptions/{transport.subscription_name}"
            bus.inject("events", b"slow work", message_id="m-1")
            await sink.wait_for(lambda: sink.finished == 1)
            async with asyncio.timeout(10):
                while True:  # settled on the receive loop's next turn
                    if bus.message_count(path) == 0:
                        break
                    await asyncio.sleep(0.02)
            assert sink.bodies == [b"slow work"]  # the lock held: no second delivery
            assert bus.dead_letters("events", transport.subscription_name) == []
