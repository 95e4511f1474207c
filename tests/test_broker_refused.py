"""What operators see of refused messages and of the other instances' lag: the
`message_refused` signal (cause, description, claimed sender) and `InstanceInfo.heartbeat_lag`."""

from __future__ import annotations

import threading
import uuid

from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
    MessageRefusedEventArgs,
)

from ._support import FakeClock, ManualTransport, is_heartbeat, wait_until

SECRET = "refused-signal-secret-0123456789"
OTHER_SECRET = "another-secret-abcdefghijklmnop"
EVENT = uuid.UUID(int=31)
RAISER = uuid.UUID(int=32)


def test_message_refused_names_the_cause_and_the_claimed_sender_off_the_broker_loop() -> None:
    receiver_transport, sender_transport = ManualTransport(), ManualTransport()
    receiver = EventBroker(receiver_transport, EventBrokerOptions(secret=SECRET))
    stranger = EventBroker(sender_transport, EventBrokerOptions(secret=OTHER_SECRET))
    friend_transport = ManualTransport()
    friend = EventBroker(friend_transport, EventBrokerOptions(secret=SECRET))
    EventRegistry(receiver).get(EVENT, param_type=int)  # a str param is refused as bad_param
    refused: list[MessageRefusedEventArgs] = []
    threads: list[threading.Thread] = []

    def on_refused(args: MessageRefusedEventArgs) -> None:
        threads.append(threading.current_thread())
        refused.append(args)

    receiver.message_refused.subscribe(on_refused)
    with receiver, stranger, friend:
        stranger.raise_event(EVENT, RAISER, 1)
        [event] = [m for m in sender_transport.sent if not is_heartbeat(m)]
        assert receiver_transport.feed(event.body) is not None
        assert receiver_transport.feed(b"not an envelope") is not None
        friend.raise_event(EVENT, RAISER, "not an int")
        [bad_param] = [m for m in friend_transport.sent if not is_heartbeat(m)]
        assert receiver_transport.feed(bad_param.body) is not None
        wait_until(lambda: len(refused) == 3)
        stats = receiver.stats
    unknown, malformed, wrong_param = refused
    assert unknown.reason == "unknown_key"
    assert unknown.sender["instance_id"] == stranger.instance_id
    assert unknown.sender["host"] == stranger.host
    assert unknown.sender["application_name"] == "default"
    assert "key_id" in unknown.sender and OTHER_SECRET not in repr(unknown)
    assert (malformed.reason, dict(malformed.sender)) == ("malformed", {})
    assert wrong_param.reason == "bad_param"
    assert wrong_param.sender == {"instance_id": friend.instance_id}
    assert "does not fit" in wrong_param.description
    assert dict(stats.rejected) == {"unknown_key": 1, "malformed": 1, "bad_param": 1}
    assert all(r.received_at > 0 for r in refused)
    assert all(t.name.startswith("eventbroker-dispatch") for t in threads)


def test_nothing_is_emitted_without_a_subscriber_and_refusals_are_still_counted() -> None:
    transport = ManualTransport()
    with EventBroker(transport, EventBrokerOptions(secret=SECRET)) as broker:
        rejection = transport.feed(b"{}")
        assert rejection is not None and rejection.reason == "malformed"
        assert broker.stats.rejected == {"malformed": 1}


def test_heartbeat_lag_is_arrival_minus_send_time_clocks_included() -> None:
    hub = InMemoryHub()
    options = EventBrokerOptions(secret=SECRET, application_name="shop", heartbeat_interval=30)
    here, there = FakeClock(), FakeClock()
    there.advance(-2.5)  # the other host's clock is 2.5 s behind
    a = EventBroker(InMemoryTransport(hub), options, clock=here)
    b = EventBroker(InMemoryTransport(hub), options, clock=there)
    with a, b:
        hub.drain()  # b's hello
        [info] = a.instances
        assert info.instance_id == b.instance_id
        assert info.heartbeat_lag == 2.5
        b.raise_event(EVENT, RAISER, 1)  # events leave the heartbeat lag alone
        hub.drain()
        [info] = a.instances
        assert (info.last_sequence, info.heartbeat_lag) == (1, 2.5)
