"""Shared test helpers: an injectable clock, a hand-driven transport, waiting on conditions."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable

from eventbroker import (
    EventBroker,
    InMemoryHub,
    InMemoryTransport,
    PublishError,
    Rejection,
    TransportMessage,
    TransportSink,
)


class FakeClock:
    """Seconds since the epoch that only move when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class OffsetClock:
    """Wall time plus an offset the test moves forward: expiry, scheduled times and locks
    without sleeping (for code that also reads the real clock, such as the SDK's)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class ManualTransport:
    """A transport the test drives: it records what is published and delivers what it is fed."""

    def __init__(self) -> None:
        self.sent: list[TransportMessage] = []
        self.sink: TransportSink | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fail_publish: str | None = None

    async def start(self, sink: TransportSink) -> None:
        self.sink = sink
        self.loop = asyncio.get_running_loop()

    def publish(self, message: TransportMessage) -> None:
        if self.fail_publish:
            raise PublishError(self.fail_publish)
        self.sent.append(message)

    async def stop(self) -> None:
        self.sink = None

    def feed(self, body: bytes) -> Rejection | None:
        """Deliver `body` as if it came from the wire; wait for local dispatch to finish."""
        assert self.loop is not None and self.sink is not None, "start the broker first"
        sink = self.sink

        async def deliver() -> Rejection | None:
            return await sink.deliver(body)

        return asyncio.run_coroutine_threadsafe(deliver(), self.loop).result(10)

    def feed_many(self, bodies: list[bytes]) -> list[Rejection | None]:
        """`feed` for many bodies in one hop to the broker loop (fast for large counts)."""
        assert self.loop is not None and self.sink is not None, "start the broker first"
        sink = self.sink

        async def deliver() -> list[Rejection | None]:
            return [await sink.deliver(body) for body in bodies]

        return asyncio.run_coroutine_threadsafe(deliver(), self.loop).result(120)

    def heartbeats(self) -> list[dict[str, object]]:
        """The control messages published so far, as JSON fields."""
        return [
            fields
            for message in self.sent
            if (fields := json.loads(b"{" + message.body[74:]))["version"] == 2
        ]

    def events(self) -> list[TransportMessage]:
        """The event envelopes published so far (heartbeats left out)."""
        return [m for m in self.sent if b'"version":1,' in m.body]


class LossyTransport(InMemoryTransport):
    """An in-memory transport that drops the messages it publishes for which `drop` is true."""

    def __init__(self, hub: InMemoryHub, drop: Callable[[TransportMessage], bool]) -> None:
        super().__init__(hub)
        self.drop = drop

    def publish(self, message: TransportMessage) -> None:
        if not self.drop(message):
            super().publish(message)


def is_heartbeat(message: TransportMessage) -> bool:
    return b'"version":2,' in message.body


def sign(fields: object, secret: str, *, raw: bytes | None = None) -> bytes:
    """A validly signed wire message whose body is `fields` as JSON (any value, NaN allowed),
    or the bytes `raw` (which must start with ``{``), signed with `secret` the way peers do."""
    body = raw if raw is not None else json.dumps(fields, separators=(",", ":")).encode()
    assert body.startswith(b"{")
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return b'{"sig":"' + signature + b'",' + body[1:]


def key_id(secret: str) -> str:
    """The key id a peer derives from `secret` (given as one str)."""
    return hashlib.sha256(b"eventbroker-key-id:" + secret.encode()).hexdigest()[:8]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for `condition` (not a timing assertion: only a bound on a hang)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the bound")
        pause.wait(0.005)


def started(broker: EventBroker) -> EventBroker:
    broker.start()
    return broker
