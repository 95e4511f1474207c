"""`EventBroker`: signs, sends, receives, verifies, de-duplicates and dispatches events.

Threads and loops
-----------------
Each broker owns a background thread running its own asyncio loop (the *broker loop*), where
its transport lives, and a *dispatcher* thread for plain handlers:

* A remote message is verified, de-duplicated and sequence-checked on the broker loop; then
  `async def` handlers run on the broker loop and plain handlers run, in arrival order, on the
  dispatcher thread, so a slow handler never stalls receiving.
* `Event.raise_` runs this instance's plain handlers inline on the calling thread; its async
  handlers run on the broker loop (the call waits for them). `Event.raise_async` runs plain
  handlers inline and awaits async handlers on the caller's own loop.
* Sending never blocks: the envelope is encoded and signed on the calling thread and handed to
  the transport's bounded queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from ._args import EventMissedEventArgs, EventNotification, EventReceivedEventArgs, MissedReason
from ._envelope import (
    EnvelopeCodec,
    EnvelopeError,
    envelope_fields,
    normalize_keys,
    to_wire_param,
)
from ._options import EventBrokerOptions
from ._sequence import DedupWindow, SequenceTracker
from ._signal import Signal
from ._threads import Dispatcher, IoLoop
from ._transport import ConnectionState, Rejection, Transport, TransportMessage

if TYPE_CHECKING:
    from ._registry import EventRegistry

logger = logging.getLogger("eventbroker")

_LOG_PERIOD = 60.0


@attrs.frozen
class BrokerStats:
    """A snapshot of a broker's counters (`EventBroker.stats`)."""

    published: int = 0
    """Envelopes handed to the transport."""
    received: int = 0
    """Messages delivered by the transport (before any check)."""
    dispatched: int = 0
    """Verified remote messages dispatched to handlers."""
    duplicates: int = 0
    own: int = 0
    """This instance's own messages echoed back by the transport (dropped)."""
    other_application: int = 0
    """Messages of another application name on the same channel (dropped)."""
    rejected: Mapping[str, int] = attrs.field(factory=dict)
    """Refused messages by cause: bad_signature, unknown_key, unknown_version, malformed,
    oversize, replay_window, bad_param."""
    gaps: int = 0
    """Sequence gaps reported through `event_missed`."""
    reconnects: int = 0


class _Sink:
    """What the transport sees of its broker."""

    def __init__(self, broker: EventBroker) -> None:
        self._broker = broker

    @property
    def instance_id(self) -> str:
        return self._broker.instance_id

    @property
    def application_name(self) -> str:
        return self._broker.options.application_name

    def deliver(self, body: bytes) -> asyncio.Future[Rejection | None]:
        return self._broker._deliver(body)

    def connection_changed(self, state: ConnectionState) -> asyncio.Future[None]:
        return self._broker._connection_changed(state)


class _LogLimiter:
    """Logs a cause at most once per period, saying how many were suppressed meanwhile."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warn(self, cause: str, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next.get(cause, float("-inf")):
            self._suppressed[cause] += 1
            return
        self._next[cause] = now + _LOG_PERIOD
        suppressed = self._suppressed.pop(cause, 0)
        suffix = f" ({suppressed} more of this cause in the last minute)" if suppressed else ""
        logger.warning(message + suffix, *args)


class EventBroker:
    """Broadcasts events to every other instance through a `Transport`.

    Keyword `clock` (seconds since the epoch) is injectable for tests. Use `start()`/`stop()`,
    `await start_async()`/`await stop_async()`, or the broker as a (async) context manager.
    """

    def __init__(
        self,
        transport: Transport,
        options: EventBrokerOptions,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(options, EventBrokerOptions):
            raise TypeError(f"options must be EventBrokerOptions, got {type(options).__name__}")
        self.transport = transport
        self.options = options
        self.instance_id: str = uuid.uuid4().hex
        """Unique per broker object (so per process start): the source id of its messages."""
        self._clock = clock
        self._codec = EnvelopeCodec(
            normalize_keys(options.secret),
            max_message_bytes=options.max_message_bytes,
            replay_window=options.replay_window,
        )
        self.event_received: Signal[EventReceivedEventArgs] = Signal("event_received")
        """Verified messages from other instances (never this instance's own)."""
        self.event_missed: Signal[EventMissedEventArgs] = Signal("event_missed")
        """Some events may have been lost: a sequence gap, a reconnect, a recreated subscription."""
        self.connection_changed: Signal[ConnectionState] = Signal("connection_changed")
        """The transport's connectivity (CONNECTED, DISCONNECTED, RECONNECTED, ...)."""
        self._registry: EventRegistry | None = None
        self._send_lock = threading.Lock()
        self._sequence = 0
        self._dedup = DedupWindow(options.dedup_capacity)
        self._tracker = SequenceTracker(options.missed_event_timeout)
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._log = _LogLimiter(clock)
        self._io = IoLoop(f"eventbroker-io-{self.instance_id[:8]}")
        self._dispatcher = Dispatcher(f"eventbroker-dispatch-{self.instance_id[:8]}")
        self._gap_task: asyncio.Task[None] | None = None
        self._started = False
        self._state_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def is_started(self) -> bool:
        return self._started

    def start(self) -> None:
        """Start the broker loop and the transport (connects; creates a subscription, say)."""
        with self._state_lock:
            if self._started:
                return
            loop = self._io.start()
            self._dispatcher.start(loop)
            try:
                self._io.run(self._start_on_loop())
            except BaseException:
                self._shutdown_threads()
                raise
            self._started = True

    async def start_async(self) -> None:
        """`start()` for asyncio code: the caller's loop is never blocked."""
        await asyncio.to_thread(self.start)

    def stop(self) -> None:
        """Flush pending sends, stop the transport (deleting its subscription), end the threads."""
        with self._state_lock:
            if not self._started:
                return
            self._started = False
            try:
                self._io.run(self._stop_on_loop(), timeout=60)
            finally:
                self._shutdown_threads()

    async def stop_async(self) -> None:
        """`stop()` for asyncio code."""
        await asyncio.to_thread(self.stop)

    def _shutdown_threads(self) -> None:
        self._dispatcher.stop()
        self._io.stop()

    async def _start_on_loop(self) -> None:
        await self.transport.start(_Sink(self))
        interval = min(0.5, self.options.missed_event_timeout / 4)
        self._gap_task = asyncio.get_running_loop().create_task(self._check_gaps_forever(interval))

    async def _stop_on_loop(self) -> None:
        if self._gap_task is not None:
            self._gap_task.cancel()
            self._gap_task = None
        await self.transport.stop()

    def __enter__(self) -> EventBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EventBroker:
        await self.start_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()

    # -- sending -----------------------------------------------------------------------------

    def raise_event(self, event_id: uuid.UUID, raiser_id: uuid.UUID, param: object = None) -> str:
        """Send one event to every other instance (no local handlers run); returns its message id.

        Raises `TypeError` for a param that cannot travel, `ValueError` when the envelope would
        exceed `max_message_bytes`, `RuntimeError` when the broker is not started and
        `PublishError` when the transport cannot take the message now.
        """
        return self._send(event_id, raiser_id, to_wire_param(param), self._clock())

    async def raise_event_async(
        self, event_id: uuid.UUID, raiser_id: uuid.UUID, param: object = None
    ) -> str:
        """`raise_event` for asyncio code; sending never blocks, so this awaits nothing."""
        return self.raise_event(event_id, raiser_id, param)

    def _send(
        self, event_id: uuid.UUID, raiser_id: uuid.UUID, wire_param: object, now: float
    ) -> str:
        if not self._started:
            raise RuntimeError(
                "the EventBroker is not started: call broker.start() (or use it as a context "
                "manager) before raising broadcast events"
            )
        with self._send_lock:
            sequence = self._sequence + 1
            message_id = f"{self.instance_id}:{sequence}"  # unique: the instance id is random
            body = self._codec.encode_fields(
                envelope_fields(
                    message_id,
                    event_id,
                    raiser_id,
                    self.instance_id,
                    self.options.application_name,
                    self.options.site_id,
                    sequence,
                    now,
                    wire_param,
                )
            )
            self.transport.publish(TransportMessage(body, message_id, self.instance_id))
            self._sequence = sequence  # only a sent message uses up a number: no false gaps
            self._counts["published"] += 1
        return message_id

    # -- local dispatch (used by Event) ---------------------------------------------------------

    def _run_local(self, work: list[Coroutine[Any, Any, None]]) -> None:
        """Run async handlers' work for a sync raise: on the broker loop, waiting for it."""
        if not work:
            return
        if self._io.loop is not None and not self._io.in_loop_thread():
            self._io.run(_gather(work))
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_gather(work))
            return
        # Called synchronously from inside a running loop: schedule, never block it.
        for coro in work:
            task = running.create_task(coro)
            _background.add(task)
            task.add_done_callback(_background.discard)

    # -- receiving (on the broker loop) ---------------------------------------------------------

    def _deliver(self, body: bytes) -> asyncio.Future[Rejection | None]:
        loop = asyncio.get_running_loop()
        self._counts["received"] += 1
        now = self._clock()
        try:
            envelope = self._codec.decode(body, now)
        except EnvelopeError as error:
            return _done(loop, self._reject(error.reason, error.description))
        if envelope.instance_id == self.instance_id:
            self._counts["own"] += 1
            return _done(loop, None)
        if envelope.application_name != self.options.application_name:
            self._counts["other_application"] += 1
            return _done(loop, None)
        if self._dedup.seen(envelope.message_id):
            self._counts["duplicates"] += 1
            return _done(loop, None)
        self._tracker.observe(envelope.instance_id, envelope.sequence, now)

        registry = self._registry
        event = registry._find(envelope.event_id) if registry is not None else None
        param = envelope.param
        if event is not None and event.param_type is not None:
            try:
                param = event._structure(param)
            except Exception as error:
                return _done(
                    loop,
                    self._reject(
                        "bad_param",
                        f"param of event {envelope.event_id} does not fit "
                        f"{event.param_type!r}: {error}",
                    ),
                )
        self._counts["dispatched"] += 1
        emissions: list[tuple[Signal[Any], Any]] = []
        if event is not None and (event.raised._sync or event.raised._async):
            notification = EventNotification(
                event_id=envelope.event_id,
                raiser_id=envelope.raiser_id,
                param=param,
                source_instance_id=envelope.instance_id,
                is_local=False,
                message_id=envelope.message_id,
                sent_at=envelope.sent_at,
            )
            emissions.append((event.raised, notification))
        if not (self.event_received._sync or self.event_received._async):
            return self._dispatch(loop, emissions)
        received = EventReceivedEventArgs(
            event_id=envelope.event_id,
            raiser_id=envelope.raiser_id,
            param=param,
            source_instance_id=envelope.instance_id,
            application_name=envelope.application_name,
            site_id=envelope.site_id,
            message_id=envelope.message_id,
            sequence=envelope.sequence,
            sent_at=envelope.sent_at,
        )
        emissions.append((self.event_received, received))
        return self._dispatch(loop, emissions)

    def _reject(self, reason: str, description: str) -> Rejection:
        self._rejected[reason] += 1
        self._log.warn(reason, "dropped an incoming message (%s): %s", reason, description)
        return Rejection(reason, description)

    def _dispatch(
        self, loop: asyncio.AbstractEventLoop, emissions: list[tuple[Signal[Any], Any]]
    ) -> asyncio.Future[Rejection | None]:
        sync = [(signal, arg) for signal, arg in emissions if signal._sync]
        work = [
            coro for signal, arg in emissions if signal._async for coro in signal.async_work(arg)
        ]
        if not sync and not work:
            return _done(loop, None)
        future: asyncio.Future[Rejection | None] = loop.create_future()
        if sync:

            def run_sync() -> None:
                for signal, arg in sync:
                    for leftover in signal.call_sync(arg):
                        asyncio.run_coroutine_threadsafe(leftover, loop)

            if not work:
                self._dispatcher.submit(run_sync, future, None)
                return future
            sync_done: asyncio.Future[None] = loop.create_future()
            self._dispatcher.submit(run_sync, sync_done, None)
            work.append(_await(sync_done))
        task = loop.create_task(_gather(work))

        def finished(_: object) -> None:
            if not future.done():
                future.set_result(None)

        task.add_done_callback(finished)
        return future

    def _connection_changed(self, state: ConnectionState) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        logger.info("transport %s", state.value)
        emissions: list[tuple[Signal[Any], Any]] = [(self.connection_changed, state)]
        if state is ConnectionState.RECONNECTED:
            self._counts["reconnects"] += 1
            emissions += self._missed_emissions(EventMissedEventArgs(MissedReason.RECONNECT))
        elif state is ConnectionState.SUBSCRIPTION_RECREATED:
            self._counts["reconnects"] += 1
            emissions += self._missed_emissions(
                EventMissedEventArgs(MissedReason.SUBSCRIPTION_RECREATED)
            )
        return self._dispatch(loop, emissions)  # type: ignore[return-value]

    def _missed_emissions(self, args: EventMissedEventArgs) -> list[tuple[Signal[Any], Any]]:
        logger.warning(
            "events may have been missed (%s) from %s, sequence %s..%s",
            args.reason.value,
            args.source_instance_id or "any instance",
            args.first_sequence,
            args.last_sequence,
        )
        emissions: list[tuple[Signal[Any], Any]] = [(self.event_missed, args)]
        if self._registry is not None:
            # A lost message's event id is unknown: every known event may be affected.
            emissions += [(event.missed, args) for event in self._registry]
        return emissions

    async def _check_gaps_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._check_gaps(asyncio.get_running_loop())

    def _check_gaps(self, loop: asyncio.AbstractEventLoop) -> list[EventMissedEventArgs]:
        missed = [
            EventMissedEventArgs(MissedReason.GAP, gap.source, gap.first, gap.last)
            for gap in self._tracker.expired(self._clock())
        ]
        for args in missed:
            self._counts["gaps"] += 1
            self._dispatch(loop, self._missed_emissions(args))
        return missed

    def check_missed_events(self) -> list[EventMissedEventArgs]:
        """Report now every sequence gap older than `missed_event_timeout` (fires `event_missed`).

        The broker also checks on its own a few times a second; this is for tests with an
        injected clock and for callers who want the answer now.
        """
        if self._io.loop is None:
            return []

        async def check() -> list[EventMissedEventArgs]:
            return self._check_gaps(asyncio.get_running_loop())

        if self._io.in_loop_thread():
            return self._check_gaps(self._io.loop)
        return self._io.run(check())

    @property
    def stats(self) -> BrokerStats:
        """The counters so far (a snapshot)."""
        counts = self._counts
        return BrokerStats(
            published=counts["published"],
            received=counts["received"],
            dispatched=counts["dispatched"],
            duplicates=counts["duplicates"],
            own=counts["own"],
            other_application=counts["other_application"],
            rejected=dict(self._rejected),
            gaps=counts["gaps"],
            reconnects=counts["reconnects"],
        )

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return (
            f"<EventBroker {self.options.application_name!r} instance={self.instance_id} "
            f"{state} transport={type(self.transport).__name__}>"
        )


_background: set[asyncio.Task[None]] = set()  # keeps scheduled handler tasks alive


def _done(
    loop: asyncio.AbstractEventLoop, result: Rejection | None
) -> asyncio.Future[Rejection | None]:
    future: asyncio.Future[Rejection | None] = loop.create_future()
    future.set_result(result)
    return future


async def _await(future: asyncio.Future[None]) -> None:
    await future


async def _gather(work: list[Coroutine[Any, Any, None]]) -> None:
    await asyncio.gather(*work)
