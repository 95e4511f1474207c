"""Deferral, scheduled messages, sessions, lock renewal and rule actions of the loopback
broker, driven by the real azure-servicebus SDK (sync and aio) over the wire."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    AutoLockRenewer,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
)
from azure.servicebus._common import mgmt_handlers
from azure.servicebus.aio import AutoLockRenewer as AsyncAutoLockRenewer
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.exceptions import (
    MessageNotFoundError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)
from azure.servicebus.management import SqlRuleAction, SqlRuleFilter

from eventbroker.testing import LoopbackServiceBus, ServiceBusEntityError, administration_client

from ._support import OffsetClock

RAD = ServiceBusReceiveMode.RECEIVE_AND_DELETE


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
def broker(clock: OffsetClock) -> Iterator[LoopbackServiceBus]:
    """Queue ``q``, session queue ``sq``, topic ``t`` with subscription ``s``."""
    with LoopbackServiceBus(clock=clock) as started:
        started.create_queue("q")
        started.create_queue("sq", requires_session=True)
        started.create_topic("t")
        started.create_subscription("t", "s")
        yield started


@pytest.fixture
def client(broker: LoopbackServiceBus) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(broker.connection_string) as sb:
        yield sb


def _receive(receiver: Any, count: int, wait: float = 1.0) -> list[ServiceBusReceivedMessage]:
    out: list[ServiceBusReceivedMessage] = []
    while len(out) < count:
        batch = receiver.receive_messages(max_message_count=count - len(out), max_wait_time=wait)
        if not batch:
            break
        out.extend(batch)
    return out


async def _receive_async(
    receiver: Any, count: int, wait: float = 1.0
) -> list[ServiceBusReceivedMessage]:
    out: list[ServiceBusReceivedMessage] = []
    while len(out) < count:
        batch = await receiver.receive_messages(
            max_message_count=count - len(out), max_wait_time=wait
        )
        if not batch:
            break
        out.extend(batch)
    return out


def _bodies(messages: list[ServiceBusReceivedMessage]) -> list[str]:
    return [str(m) for m in messages]


# ---- deferral -----------------------------------------------------------------------------
def test_deferred_messages_come_back_only_by_sequence_number(
    broker: LoopbackServiceBus, client: ServiceBusClient
) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages([ServiceBusMessage(b) for b in ("a", "b", "c")])
    with client.get_queue_receiver("q") as receiver:
        first = _receive(receiver, 3)
        assert _bodies(first) == ["a", "b", "c"]
        receiver.defer_message(first[0])
        receiver.defer_message(first[1])
        receiver.complete_message(first[2])
        assert _receive(receiver, 1, wait=0.5) == []  # deferred: not received again
        numbers = [first[0].sequence_number, first[1].sequence_number]
        assert _bodies(receiver.peek_messages(5, sequence_number=1)) == ["a", "b"]  # still there

        again = receiver.receive_deferred_messages(numbers)
        assert _bodies(again) == ["a", "b"]
        receiver.complete_message(again[0])
        receiver.abandon_message(again[1])  # stays deferred, one more delivery attempt
        (b,) = receiver.receive_deferred_messages([numbers[1]])
        assert (str(b), b.delivery_count) == ("b", 1)
        receiver.complete_message(b)
        with pytest.raises(MessageNotFoundError):
            receiver.receive_deferred_messages([numbers[1]])
    assert broker.message_count("q") == 0


async def test_deferral_over_the_aio_client_and_receive_and_delete(
    broker: LoopbackServiceBus,
) -> None:
    async with AsyncServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_queue_sender("q") as sender:
            await sender.send_messages(ServiceBusMessage("later"))
        async with client.get_queue_receiver("q") as receiver:
            (message,) = await _receive_async(receiver, 1)
            await receiver.defer_message(message)
        async with client.get_queue_receiver("q", receive_mode=RAD) as receiver:
            (taken,) = await receiver.receive_deferred_messages([message.sequence_number])
            assert str(taken) == "later"
    assert broker.message_count("q") == 0  # taken and deleted at once


# ---- scheduled messages -------------------------------------------------------------------
def test_scheduled_messages_wait_for_their_time_and_can_be_cancelled(
    broker: LoopbackServiceBus, client: ServiceBusClient, clock: OffsetClock
) -> None:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    with client.get_queue_sender("q") as sender:
        (kept,) = sender.schedule_messages(ServiceBusMessage("kept"), at)
        cancelled = sender.schedule_messages([ServiceBusMessage("x"), ServiceBusMessage("y")], at)
        sender.cancel_scheduled_messages(cancelled)
        with pytest.raises(MessageNotFoundError):
            sender.cancel_scheduled_messages(cancelled)
        # a plain send with a scheduled enqueue time is held the same way
        sender.send_messages(ServiceBusMessage("sent later", scheduled_enqueue_time_utc=at))
    with administration_client(broker.connection_string, broker.admin_endpoint) as admin:
        assert admin.get_queue_runtime_properties("q").scheduled_message_count == 2
    with client.get_queue_receiver("q", receive_mode=RAD) as receiver:
        assert _receive(receiver, 1, wait=0.5) == []
        clock.advance(31)
        due = _receive(receiver, 2, wait=5)
        assert _bodies(due) == ["kept", "sent later"]
        assert due[0].sequence_number == kept  # numbered when scheduled
        assert due[0].scheduled_enqueue_time_utc is not None


async def test_messages_scheduled_on_a_topic_reach_its_subscriptions_when_due(
    broker: LoopbackServiceBus, clock: OffsetClock
) -> None:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    async with AsyncServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_topic_sender("t") as sender:
            numbers = await sender.schedule_messages(
                [ServiceBusMessage("one"), ServiceBusMessage("two")], at
            )
            await sender.cancel_scheduled_messages(numbers[1])
        async with client.get_subscription_receiver("t", "s", receive_mode=RAD) as receiver:
            assert await _receive_async(receiver, 1, wait=0.5) == []
            clock.advance(301)
            assert _bodies(await _receive_async(receiver, 2, wait=3)) == ["one"]


# ---- sessions -----------------------------------------------------------------------------
def _send_sessions(client: ServiceBusClient, messages: list[tuple[str, str]]) -> None:
    with client.get_queue_sender("sq") as sender:
        sender.send_messages([ServiceBusMessage(body, session_id=sid) for sid, body in messages])


def test_session_receivers_get_their_session_in_order_and_hold_it(
    broker: LoopbackServiceBus, client: ServiceBusClient
) -> None:
    _send_sessions(client, [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2"), ("a", "a3")])
    with (
        pytest.raises(ServiceBusError, match="requires sessions"),
        client.get_queue_sender("sq") as sender,
    ):
        sender.send_messages(ServiceBusMessage("no session"))
    with (
        pytest.raises(ServiceBusError, match="requires sessions"),
        client.get_queue_receiver("sq") as plain,
    ):
        plain.receive_messages(max_wait_time=1)
    with client.get_queue_receiver("sq", session_id="a") as a:
        assert a.session.session_id == "a"
        assert a.session.locked_until_utc is not None
        with (
            pytest.raises(SessionCannotBeLockedError),
            client.get_queue_receiver("sq", session_id="a") as other,
        ):
            other.receive_messages(max_wait_time=1)
        received = _receive(a, 3)
        assert _bodies(received) == ["a1", "a2", "a3"]
        a.session.set_state(b"step 2")
        assert a.session.get_state() == b"step 2"
        before = a.session.locked_until_utc
        assert a.session.renew_lock() >= before
        for message in received:
            a.complete_message(message)
        assert sorted(client.list_queue_sessions("sq")) == ["a", "b"]  # state; messages
    with client.get_queue_receiver("sq", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1) as b:
        assert b.session.session_id == "b"
        messages = _receive(b, 2)
        assert _bodies(messages) == ["b1", "b2"]
        for message in messages:
            b.complete_message(message)
    with client.get_queue_receiver("sq", session_id="a") as a:
        assert a.session.get_state() == b"step 2"  # kept with the session
        a.session.set_state(None)
    assert list(client.list_queue_sessions("sq")) == []
    # no session left: the SDK counts the receiver open, then meets the timeout
    with (
        pytest.raises(OperationTimeoutError),
        client.get_queue_receiver("sq", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1) as none,
    ):
        none.receive_messages(max_wait_time=1)


def test_a_receiver_waiting_for_the_next_session_gets_one_that_arrives_meanwhile(
    broker: LoopbackServiceBus, client: ServiceBusClient
) -> None:
    def send_soon() -> None:  # with a client of its own: SDK clients are not thread-safe
        time.sleep(0.5)  # the receiver's attach is waiting by then
        with ServiceBusClient.from_connection_string(broker.connection_string) as other:
            _send_sessions(other, [("late", "arrived")])

    sender = threading.Thread(target=send_soon)
    sender.start()
    try:
        with client.get_queue_receiver(
            "sq", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=20
        ) as receiver:
            assert receiver.session.session_id == "late"
            (message,) = _receive(receiver, 1)
            assert str(message) == "arrived"
            receiver.complete_message(message)
    finally:
        sender.join()


def test_a_lost_session_lock_detaches_its_receiver_and_frees_the_session(
    broker: LoopbackServiceBus, client: ServiceBusClient, clock: OffsetClock
) -> None:
    _send_sessions(client, [("a", "a1")])
    with client.get_queue_receiver("sq", session_id="a") as receiver:
        (message,) = _receive(receiver, 1)
        clock.advance(61)  # past the session lock (60 s)
        with pytest.raises(SessionLockLostError):
            receiver.complete_message(message)
    with client.get_queue_receiver("sq", session_id="a") as again:
        (message,) = _receive(again, 1)
        assert (str(message), message.delivery_count) == ("a1", 1)
        again.complete_message(message)


async def test_next_available_session_and_its_state_over_the_aio_client(
    broker: LoopbackServiceBus,
) -> None:
    async with AsyncServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_queue_sender("sq") as sender:
            await sender.send_messages(
                [ServiceBusMessage(f"m{i}", session_id="only") for i in range(3)]
            )
        async with client.get_queue_receiver(
            "sq", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=2
        ) as receiver:
            renewer = AsyncAutoLockRenewer()
            renewer.register(receiver, receiver.session, max_lock_renewal_duration=30)
            await receiver.session.set_state("open")
            received = [message async for message in receiver]
            assert _bodies(received) == ["m0", "m1", "m2"]
            for message in received:
                await receiver.complete_message(message)
            assert await receiver.session.get_state() == b"open"
            await renewer.close()
        assert [s async for s in client.list_queue_sessions("sq")] == ["only"]  # its state


# ---- lock renewal -------------------------------------------------------------------------
@pytest.mark.slow
def test_auto_lock_renewer_keeps_many_locks_alive() -> None:
    """The SDK's AutoLockRenewer renews from worker threads beside the application's own
    calls: its transfers can repeat a delivery id, which Service Bus (and now the loopback
    broker) accepts, where python-qpid-proton alone closed the connection."""
    with LoopbackServiceBus(lock_duration=2.0) as broker:
        broker.create_queue("q")
        with ServiceBusClient.from_connection_string(broker.connection_string) as client:
            with client.get_queue_sender("q") as sender:
                sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(10)])
            with (
                AutoLockRenewer(max_workers=4) as renewer,
                client.get_queue_receiver("q", prefetch_count=10) as receiver,
            ):
                messages = _receive(receiver, 10)
                for message in messages:
                    renewer.register(receiver, message, max_lock_renewal_duration=30)
                time.sleep(4)  # twice the lock: only renewals keep it
                for message in messages:
                    receiver.complete_message(message)
        assert broker.message_count("q") == 0


@pytest.mark.slow
async def test_aio_auto_lock_renewer_keeps_locks_alive() -> None:
    # the aio renewer looks once a second: a lock shorter than Service Bus' minimum (5 s)
    # could run out between two looks
    with LoopbackServiceBus(lock_duration=5.0) as broker:
        broker.create_queue("q")
        async with AsyncServiceBusClient.from_connection_string(broker.connection_string) as client:
            async with client.get_queue_sender("q") as sender:
                await sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(5)])
            async with (
                AsyncAutoLockRenewer() as renewer,
                client.get_queue_receiver(
                    "q", prefetch_count=5, auto_lock_renewer=renewer
                ) as receiver,
            ):
                messages = await _receive_async(receiver, 5)
                await asyncio.sleep(7)  # past the lock: only renewals keep it
                for message in messages:
                    await receiver.complete_message(message)
        assert broker.message_count("q") == 0


# ---- rules and what is not implemented ----------------------------------------------------
def test_a_rule_action_sets_properties_and_rules_read_back(
    broker: LoopbackServiceBus, client: ServiceBusClient
) -> None:
    with administration_client(broker.connection_string, broker.admin_endpoint) as admin:
        admin.delete_rule("t", "s", "$Default")
        admin.create_rule(
            "t",
            "s",
            "blue",
            filter=SqlRuleFilter("Color = 'Blue'"),
            action=SqlRuleAction("SET Color = 'BlueProcessed'; SET Seen = 1"),
        )
        rule = admin.get_rule("t", "s", "blue")  # one CreatedAt: the broker's
        assert isinstance(rule.action, SqlRuleAction)
        rule.filter = SqlRuleFilter("Color = 'Blue' OR Color = 'Navy'")
        admin.update_rule("t", "s", rule)
        assert "Navy" in admin.get_rule("t", "s", "blue").filter.sql_expression
    with client.get_topic_sender("t") as sender:
        for color in ("Blue", "Red", "Navy"):
            sender.send_messages(ServiceBusMessage(color, application_properties={"Color": color}))
    with client.get_subscription_receiver("t", "s", receive_mode=RAD) as receiver:
        got = _receive(receiver, 3)
    assert [(str(m), m.application_properties) for m in got] == [
        ("Blue", {b"Color": b"BlueProcessed", b"Seen": 1}),
        ("Navy", {b"Color": b"BlueProcessed", b"Seen": 1}),
    ]


def test_an_operation_the_broker_lacks_is_answered_not_implemented_by_name(
    client: ServiceBusClient,
) -> None:
    with client.get_queue_receiver("q") as receiver:
        with pytest.raises(ServiceBusError, match=r"com\.microsoft:enumerate-rules") as raised:
            receiver._mgmt_request_response_with_retry(  # no public SDK call sends it
                b"com.microsoft:enumerate-rules", {"top": 10, "skip": 0}, mgmt_handlers.default
            )
        assert "not-implemented" in str(raised.value)


def test_a_refused_send_raises_at_once_instead_of_hanging(
    broker: LoopbackServiceBus, client: ServiceBusClient
) -> None:
    """The SDK reads a rejected delivery's error info by position: a rejection without it left
    the send waiting forever (here: up to its timeout)."""
    with client.get_topic_sender("t") as sender:
        sender.send_messages(ServiceBusMessage("before"))
        broker.delete_topic("t")
        began = time.monotonic()
        with pytest.raises(MessagingEntityNotFoundError):
            sender.send_messages(ServiceBusMessage("after"), timeout=10)
        assert time.monotonic() - began < 5


def test_a_transaction_coordinator_link_is_refused_as_not_implemented(
    broker: LoopbackServiceBus,
) -> None:
    """The Python SDK has no transactions; another client that asks gets a clear answer."""
    from proton import Terminus
    from proton.handlers import MessagingHandler
    from proton.reactor import Container, LinkOption

    class Coordinator(LinkOption):  # type: ignore[misc]
        def apply(self, link: Any) -> None:
            link.target.type = Terminus.COORDINATOR

    class Client(MessagingHandler):  # type: ignore[misc]
        refused: tuple[str, str] | None = None

        def on_start(self, event: Any) -> None:
            conn = event.container.connect(f"127.0.0.1:{broker.port}", allowed_mechs="ANONYMOUS")
            event.container.create_sender(conn, None, options=Coordinator())

        def on_link_error(self, event: Any) -> None:
            condition = event.link.remote_condition
            self.refused = (condition.name, condition.description)
            event.connection.close()

    client = Client()
    Container(client).run()
    assert client.refused is not None
    assert client.refused[0] == "amqp:not-implemented"
    assert "transactions" in client.refused[1]


def test_inject_puts_a_message_in_a_session(
    broker: LoopbackServiceBus, client: ServiceBusClient
) -> None:
    with pytest.raises(ServiceBusEntityError, match="session_id"):
        broker.inject("sq", b"where to?")
    broker.inject("sq", b"raw", session_id="s-1")
    with client.get_queue_receiver("sq", session_id="s-1", receive_mode=RAD) as receiver:
        (message,) = _receive(receiver, 1)
        assert b"".join(message.body) == b"raw"
