"""`InMemoryHub` and `InMemoryTransport`: the broadcast channel for one process.

Every transport on a hub is one instance. Delivery is asynchronous like a real broker's: a
publish returns at once and the message reaches each other transport on its broker's loop.
The hub can inject faults for tests (drop, duplicate, delay, reorder) and go down and up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections import deque

import attrs

from ._transport import ConnectionState, PublishError, Rejection, TransportMessage, TransportSink

logger = logging.getLogger("eventbroker")


@attrs.frozen
class HubFaults:
    """Fault injection, each a probability per message and receiver (0 to 1)."""

    drop: float = attrs.field(default=0.0)
    duplicate: float = attrs.field(default=0.0)
    reorder: float = attrs.field(default=0.0)
    """Deliver the message after a later one to the same receiver."""
    delay: float = attrs.field(default=0.0)
    """Hold each message back for a random time up to this many seconds."""
    seed: int | None = None

    @drop.validator
    @duplicate.validator
    @reorder.validator
    def _probability(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"HubFaults.{attribute.name} is a probability in [0, 1], got {value!r}"
            )

    @delay.validator
    def _delay(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value < 0:
            raise ValueError(f"HubFaults.delay must be >= 0 seconds, got {value!r}")


class InMemoryHub:
    """One broadcast channel in this process (local development and tests)."""

    def __init__(self, faults: HubFaults | None = None) -> None:
        self._lock = threading.Lock()
        self._transports: list[InMemoryTransport] = []
        self._targets: dict[InMemoryTransport, tuple[InMemoryTransport, ...]] = {}
        """Each sender's receivers (every other transport); emptied when one comes or goes."""
        self._down = False
        self.faults = faults or _NO_FAULTS

    @property
    def faults(self) -> HubFaults:
        return self._faults

    @faults.setter
    def faults(self, faults: HubFaults) -> None:
        self._faults = faults
        self._random = random.Random(faults.seed)

    @property
    def is_down(self) -> bool:
        return self._down

    def go_down(self) -> None:
        """Refuse publishes (`PublishError`) and tell every transport it is disconnected."""
        with self._lock:
            self._down = True
            transports = list(self._transports)
        for transport in transports:
            transport._notify(ConnectionState.DISCONNECTED)

    def come_up(self) -> None:
        """Accept publishes again; every transport reports `RECONNECTED`."""
        with self._lock:
            self._down = False
            transports = list(self._transports)
        for transport in transports:
            transport._notify(ConnectionState.RECONNECTED)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every message published so far has been delivered and dispatched.

        Held-back (reordered) messages are released first. Raises `TimeoutError`.
        """
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport._release_held()
        deadline = threading.Event()
        waited = 0.0
        while any(t._busy() for t in transports):
            if waited >= timeout:
                raise TimeoutError(f"the hub did not drain within {timeout} s")
            deadline.wait(0.002)
            waited += 0.002

    def _attach(self, transport: InMemoryTransport) -> None:
        with self._lock:
            self._transports.append(transport)
            self._targets = {}

    def _detach(self, transport: InMemoryTransport) -> None:
        with self._lock:
            if transport in self._transports:
                self._transports.remove(transport)
            self._targets = {}

    def _publish(self, sender: InMemoryTransport, message: TransportMessage) -> None:
        if self._down:
            raise PublishError("the in-memory hub is down (InMemoryHub.go_down was called)")
        targets = self._targets.get(sender)
        if targets is None:
            with self._lock:
                targets = self._targets[sender] = tuple(
                    t for t in self._transports if t is not sender
                )
        faults = self._faults
        if faults is _NO_FAULTS:
            for target in targets:
                target._enqueue(message.body)
            return
        with self._lock:  # one random stream, one order of draws
            plan = [(target, self._plan(faults)) for target in targets]
        for target, (copies, delay, reorder) in plan:
            for _ in range(copies):
                if delay:
                    target._enqueue_later(message.body, delay)
                elif reorder:
                    target._hold(message.body)
                else:
                    target._enqueue(message.body)

    def _plan(self, faults: HubFaults) -> tuple[int, float, bool]:
        rnd = self._random
        if faults.drop and rnd.random() < faults.drop:
            return 0, 0.0, False
        copies = 2 if faults.duplicate and rnd.random() < faults.duplicate else 1
        delay = rnd.uniform(0, faults.delay) if faults.delay else 0.0
        reorder = bool(faults.reorder) and rnd.random() < faults.reorder
        return copies, delay, reorder


_NO_FAULTS = HubFaults()


class InMemoryTransport:
    """A `Transport` on an `InMemoryHub`: one per `EventBroker` (instance)."""

    messaging_system = "eventbroker.memory"
    """The OpenTelemetry ``messaging.system`` of this transport."""

    def __init__(self, hub: InMemoryHub) -> None:
        self.hub = hub
        self._sink: TransportSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._inbox: deque[bytes] = deque()
        self._held: list[bytes] = []
        self._scheduled = False
        self._delivering = False
        self._in_flight: deque[asyncio.Future[Rejection | None]] = deque()  # may still run
        self._later = 0  # delayed, not yet in the inbox

    async def start(self, sink: TransportSink) -> None:
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self.hub._attach(self)
        sink.connection_changed(ConnectionState.CONNECTED)

    def publish(self, message: TransportMessage) -> None:
        if self._sink is None:
            raise PublishError("the in-memory transport is not started")
        self.hub._publish(self, message)

    async def stop(self) -> None:
        self.hub._detach(self)
        self._sink = None

    # -- hub side (any thread) -------------------------------------------------------------

    def _enqueue(self, body: bytes) -> None:
        loop = self._loop
        with self._lock:
            self._inbox.append(body)
            if self._held:  # a held-back message goes after this later one
                self._inbox.extend(self._held)
                self._held.clear()
            if self._scheduled or loop is None:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # its loop is closed: the instance is gone
            loop.call_soon_threadsafe(self._drain)

    def _hold(self, body: bytes) -> None:
        with self._lock:
            self._held.append(body)

    def _release_held(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for body in held:
            self._enqueue(body)

    def _enqueue_later(self, body: bytes, delay: float) -> None:
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            self._later += 1

        def arrive() -> None:
            with self._lock:
                self._later -= 1
            self._enqueue(body)

        loop.call_soon_threadsafe(loop.call_later, delay, arrive)

    def _notify(self, state: ConnectionState) -> None:
        loop = self._loop
        sink = self._sink
        if loop is None or sink is None:
            return
        with self._lock:
            self._later += 1  # counts as busy until the broker's handlers ran

        def notify() -> None:
            with self._lock:
                self._later -= 1
                self._in_flight.append(sink.connection_changed(state))  # type: ignore[arg-type]

        loop.call_soon_threadsafe(notify)

    def _busy(self) -> bool:
        with self._lock:
            return bool(
                self._inbox
                or self._held
                or self._scheduled
                or self._delivering
                or self._later
                or self._dispatching()
            )

    # -- broker loop ---------------------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            batch = list(self._inbox)
            self._inbox.clear()
            self._scheduled = False
            self._delivering = True  # taken from the inbox, not yet in flight: still busy
        sink = self._sink
        futures: list[asyncio.Future[Rejection | None]] = []
        if sink is not None:
            deliver = sink.deliver
            for body in batch:
                try:
                    futures.append(deliver(body))
                except Exception:  # a sink that raises loses that message only, not the rest
                    logger.exception(
                        "the in-memory hub's receiver failed on a message; delivering the rest"
                    )
        with self._lock:
            self._delivering = False
            self._in_flight.extend(futures)
            self._dispatching()  # forget finished ones: the deque stays short

    def _dispatching(self) -> bool:
        """Whether a delivered message's dispatch may still run (call with the lock held)."""
        in_flight = self._in_flight
        while in_flight and in_flight[0].done():
            in_flight.popleft()
        return bool(in_flight)
