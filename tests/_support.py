"""Shared test helpers: an injectable clock, a hand-driven transport, waiting on conditions."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from eventbroker import (
    EventBroker,
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
