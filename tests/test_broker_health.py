"""What operators see: health, connection state, a secret mismatch named, a bounded stop."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from eventbroker import (
    ConnectionState,
    EventBroker,
    EventBrokerOptions,
    EventRegistry,
    HealthStatus,
    InMemoryHub,
    InMemoryTransport,
    TransportSink,
)

from ._support import FakeClock, ManualTransport, wait_until

SECRET_A = "secret-of-instance-a-0123456789"
SECRET_B = "secret-of-instance-b-0123456789"
EVENT = uuid.UUID(int=21)
RAISER = uuid.UUID(int=22)


def test_a_secret_mismatch_is_an_error_on_both_sides_naming_key_instance_host_and_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    hub = InMemoryHub()
    a = EventBroker(InMemoryTransport(hub), EventBrokerOptions(secret=SECRET_A), clock=clock)
    b = EventBroker(InMemoryTransport(hub), EventBrokerOptions(secret=SECRET_B), clock=clock)
    with caplog.at_level(logging.INFO, logger="eventbroker"), a, b:
        for n in range(5):
            a.raise_event(EVENT, RAISER, n)
        hub.drain()
        sent = b.stats.heartbeats_sent
        clock.advance(30)  # b's presence heartbeat reaches a: the sender learns it too
        wait_until(lambda: b.stats.heartbeats_sent > sent)
        hub.drain()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        about_a = [r.getMessage() for r in errors if a.instance_id in r.getMessage()]
        about_b = [r.getMessage() for r in errors if b.instance_id in r.getMessage()]
        assert len(about_a) == 1 and len(about_b) == 1  # once per minute per source
        line = about_a[0]
        assert a._codec.signing_key_id in line and a.host in line
        assert "EVENTBROKER_SECRET differs between instances" in line
        assert SECRET_A not in caplog.text and SECRET_B not in caplog.text
        assert b.stats.unknown_key_sources[a.instance_id] >= 5
        assert a.stats.unknown_key_sources[b.instance_id] >= 1
        for broker in (a, b):
            health = broker.health()
            assert health.status is HealthStatus.DEGRADED
            assert any("EVENTBROKER_SECRET" in reason for reason in health.reasons)
        clock.advance(61)
        a.raise_event(EVENT, RAISER, "again")
        hub.drain()
        again = [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and a.instance_id in r.getMessage()
        ]
        assert len(again) == 2
        assert "more of this cause in the last minute" in again[-1].getMessage()


def test_health_and_connection_state_follow_the_transport() -> None:
    clock = FakeClock()
    hub = InMemoryHub()
    broker = EventBroker(InMemoryTransport(hub), EventBrokerOptions(secret=SECRET_A), clock=clock)
    assert broker.health().status is HealthStatus.DOWN
    assert "not started" in broker.health().reasons[0]
    assert broker.connection_state is ConnectionState.DISCONNECTED
    with broker:
        wait_until(lambda: broker.connection_state is ConnectionState.CONNECTED)
        assert broker.health().status is HealthStatus.OK and broker.health().reasons == ()
        hub.go_down()
        hub.drain()
        clock.advance(42)
        health = broker.health()
        assert broker.connection_state is ConnectionState.DISCONNECTED
        assert broker.is_started  # not a health signal
        assert health.status is HealthStatus.DEGRADED
        assert "disconnected from InMemoryTransport since" in health.reasons[0]
        assert "(42 s)" in health.reasons[0]
        hub.come_up()
        hub.drain()
        assert broker.health().status is HealthStatus.OK
    health = broker.health()
    assert health.status is HealthStatus.DOWN and "stopped" in health.reasons[0]
    assert health.to_dict()["status"] == "down"


def test_refusals_in_the_last_minute_degrade_health_then_it_recovers() -> None:
    clock = FakeClock()
    transport = ManualTransport()
    with EventBroker(transport, EventBrokerOptions(secret=SECRET_A), clock=clock) as broker:
        transport.feed(b"garbage")
        transport.feed(b"more garbage")
        health = broker.health()
        assert health.status is HealthStatus.DEGRADED
        assert "refused 2 incoming messages in the last minute (malformed 2)" in health.reasons[0]
        clock.advance(61)
        assert broker.health().status is HealthStatus.OK


class HangingTransport:
    """A transport whose service is unreachable: stop never finishes on its own."""

    async def start(self, sink: TransportSink) -> None:
        sink.connection_changed(ConnectionState.CONNECTED)

    def publish(self, message: object) -> None:
        pass

    async def stop(self) -> None:
        await asyncio.sleep(3600)


def test_stop_returns_within_stop_timeout_whatever_hangs(caplog: pytest.LogCaptureFixture) -> None:
    broker = EventBroker(HangingTransport(), EventBrokerOptions(secret=SECRET_A, stop_timeout=1))
    release = threading.Event()
    registry = EventRegistry(broker)
    registry.get(EVENT).raised.subscribe(lambda n: release.wait(3600))
    broker.start()
    broker._dispatcher.submit(release.wait, 3600)  # a stuck plain handler
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="eventbroker"):
        broker.stop()
    took = time.monotonic() - began
    release.set()
    assert took < 1 + 1  # a generous bound: a regression guard, not a benchmark
    assert "did not stop within stop_timeout=1 s" in caplog.text


def test_a_stopped_broker_cannot_be_restarted_by_mistake() -> None:
    broker = EventBroker(InMemoryTransport(InMemoryHub()), EventBrokerOptions(secret=SECRET_A))
    broker.start()
    broker.stop()
    broker.stop()  # idempotent
    with pytest.raises(RuntimeError, match="create a new one"):
        broker.start()


def test_a_process_exiting_with_a_started_broker_stops_it_cleanly(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import logging, sys
        from eventbroker import EventBroker, EventBrokerOptions, InMemoryHub, InMemoryTransport
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)

        class Recording(InMemoryTransport):
            async def stop(self):
                await super().stop()
                print("transport stopped", flush=True)

        broker = EventBroker(Recording(InMemoryHub()), EventBrokerOptions(secret="x" * 20))
        broker.start()
        # no stop(): the interpreter exits with the broker running
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "transport stopped" in done.stdout
    assert "cannot schedule new futures" not in done.stderr
    assert "Traceback" not in done.stderr


def test_health_and_instances_can_be_read_from_any_thread_while_messages_flow() -> None:
    hub = InMemoryHub()
    options = EventBrokerOptions(secret=SECRET_A)
    receiver = EventBroker(InMemoryTransport(hub), options)
    senders = [EventBroker(InMemoryTransport(hub), options) for _ in range(3)]
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                receiver.health()
                _ = receiver.instances, receiver.stats
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            failures.append(exc)

    from eventbroker import TransportMessage

    with receiver:
        readers = [threading.Thread(target=read) for _ in range(2)]
        for reader in readers:
            reader.start()
        for sender in senders:
            sender.start()
        for n in range(600):
            sender = senders[n % 3]
            sender.raise_event(EVENT, RAISER, n)
            if n % 50 == 0:  # refusals too, so the last-minute counts change
                hub._publish(sender.transport, TransportMessage(b"junk", "j", "x"))  # type: ignore[arg-type]
        hub.drain()
        done.set()
        for reader in readers:
            reader.join()
        for sender in senders:
            sender.stop()
    assert failures == []
    assert receiver.stats.dispatched == 600
