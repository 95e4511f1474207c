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
* A maintenance task on the broker loop reports sequence gaps, sends heartbeats and drops
  silent instances, a few times a second.

Nothing lost silently
---------------------
Each instance numbers its events. Receivers report a gap (`event_missed`) when numbers are
missing after `missed_event_timeout`: between received ones, after the last one (a heartbeat
carries the sender's last number, sent `heartbeat_idle_delay` after a burst and every
`heartbeat_interval`), and before the first one when the sender started after this instance
subscribed (its hello, or the start time every envelope carries). Reconnects and recreated
subscriptions fire `event_missed` too.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # registers its exit hook now, so ours (below) runs first
import contextvars
import functools
import json
import logging
import socket
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from cache._health import Health

from ._args import (
    EventMissedEventArgs,
    EventNotification,
    EventReceivedEventArgs,
    MessageRefusedEventArgs,
    MissedReason,
)
from ._diagnostics import LogLimiter, RecentCounts
from ._envelope import (
    Envelope,
    EnvelopeCodec,
    EnvelopeError,
    Heartbeat,
    HeartbeatKind,
    envelope_fields,
    normalize_keys,
    to_wire_param,
)
from ._flow import Flow, FlowRecorder
from ._options import EventBrokerOptions
from ._presence import InstanceInfo, Presence
from ._sequence import DedupWindow, SequenceTracker, Verdict
from ._signal import Signal
from ._telemetry import BrokerTelemetry, DeliveryScope
from ._threads import Dispatcher, IoLoop
from ._transport import ConnectionState, PublishError, Rejection, Transport, TransportMessage

if TYPE_CHECKING:
    from ._registry import EventRegistry

logger = logging.getLogger("eventbroker")

_MAX_TICK = 0.25
"""Longest pause of the maintenance task (it wakes earlier when something is due)."""
_MAX_KEY_SOURCES = 1000
MAX_SUMMARY_BYTES = 8192
"""Largest heartbeat summary sent (its JSON); a larger one is left out (and logged)."""
_HEARTBEAT_SOON = 1.0
"""`request_heartbeat` sends at most one extra heartbeat per this many seconds."""

T = TypeVar("T")
SummaryProvider = Callable[[], Mapping[str, Any] | None]


@attrs.frozen
class BrokerStats:
    """A snapshot of a broker's counters (`EventBroker.stats`)."""

    published: int = 0
    """Events handed to the transport."""
    received: int = 0
    """Messages delivered by the transport (before any check), heartbeats excepted."""
    dispatched: int = 0
    """Verified remote events dispatched to handlers."""
    duplicates: int = 0
    """Redeliveries of a recent message id (dropped)."""
    own: int = 0
    """This instance's own messages echoed back by the transport (dropped)."""
    other_application: int = 0
    """Messages of another application name on the same channel (dropped)."""
    rejected: Mapping[str, int] = attrs.field(factory=dict)
    """Refused messages by cause: bad_signature, unknown_key, unknown_version, malformed,
    oversize, replay_window, replay, bad_param, delivery_failed."""
    gaps: int = 0
    """Sequence gaps reported through `event_missed`."""
    reconnects: int = 0
    heartbeats_sent: int = 0
    """Control messages sent: hello, presence, idle and bye heartbeats."""
    heartbeats_received: int = 0
    """Verified control messages from other instances of this application."""
    unknown_key_sources: Mapping[str, int] = attrs.field(factory=dict)
    """Messages refused as ``unknown_key`` by claimed sending instance (at most 1000 listed)."""


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
        broker = self._broker
        try:
            return broker._deliver(body)
        except Exception as exc:  # a bug of ours: one message fails, receiving goes on
            return _done(asyncio.get_running_loop(), broker._delivery_failed(exc))

    def connection_changed(self, state: ConnectionState) -> asyncio.Future[None]:
        return self._broker._connection_changed(state)


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
        self.host: str = socket.gethostname()
        self.started_at: float | None = None
        """When `start()` was called (this broker's clock), sent in every message."""
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
        self.message_refused: Signal[MessageRefusedEventArgs] = Signal("message_refused")
        """Incoming messages refused, with the cause (emitted for refusals only; plain handlers
        run on the dispatcher thread, in order with received events)."""
        self._registry: EventRegistry | None = None
        self._send_lock = threading.Lock()
        self._sequence = 0
        self._dedup = DedupWindow(options.dedup_capacity)
        self._tracker = SequenceTracker(
            options.missed_event_timeout, retention=options.replay_window + 60.0
        )
        self._subscribed_at: float | None = None
        self._presence = Presence(options.heartbeat_interval)
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._unknown_key_sources: Counter[str] = Counter()
        self._recent = RecentCounts()
        self._log = LogLimiter(logger, clock)
        self._io = IoLoop(f"eventbroker-io-{self.instance_id[:8]}")
        self._dispatcher = Dispatcher(f"eventbroker-dispatch-{self.instance_id[:8]}")
        self._call_sync: Callable[[list[tuple[Signal[Any], Any]]], None]  # set by start()
        self._maintenance: asyncio.Task[None] | None = None
        self._started = False
        self._stopped = False
        self._state_lock = threading.Lock()
        self._connected = threading.Event()
        self._disconnected_since: float | None = None
        self._heartbeats = 0
        self._heartbeat_sequence = 0  # the last number a heartbeat announced
        self._last_publish_at = 0.0
        self._last_heartbeat_at = 0.0
        self._unknown_key_detail: dict[str, str] = {}
        self._telemetry: BrokerTelemetry | None = None
        """Set by an instrumentation (``eventbroker.contrib.otel``): per-event spans and lag."""
        self._flow = FlowRecorder()
        self._heartbeat_wanted = False
        self.summary_provider: SummaryProvider | None = None
        """Called on the broker loop for each heartbeat: a small JSON object of this instance's
        counters that the heartbeat carries (`InstanceInfo.summary` on the other instances).
        Keep it cheap (no I/O); what fails, or is over `MAX_SUMMARY_BYTES`, is logged at most
        once a minute and the heartbeat goes without it."""

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def is_started(self) -> bool:
        """Whether `start()` ran and `stop()` did not (not a health signal: see `health()`)."""
        return self._started

    @property
    def connection_state(self) -> ConnectionState:
        """CONNECTED while the transport is connected, DISCONNECTED otherwise (also before start)."""
        return (
            ConnectionState.CONNECTED if self._connected.is_set() else ConnectionState.DISCONNECTED
        )

    def start(self) -> None:
        """Start the broker loop and the transport, then send this instance's hello.

        A transport that cannot reach its service at start keeps connecting in the background
        (`health()` says DEGRADED meanwhile; `event_missed` fires once it connects). With
        `EventBrokerOptions.connect_timeout`, `start()` waits up to that long for the first
        connection. Configuration errors (a bad connection string, refused credentials) raise.
        """
        with self._state_lock:
            if self._started:
                return
            if self._stopped:
                raise RuntimeError(
                    "this EventBroker was stopped; brokers are not restartable: create a new one"
                )
            self.started_at = self._clock()
            loop = self._io.start()
            self._call_sync = functools.partial(_call_sync, loop)
            self._dispatcher.start(loop)
            try:
                self._io.run(self._start_on_loop())
            except BaseException:
                self._shutdown_threads(10.0)
                raise
            self._started = True
            _started_brokers.add(self)
        timeout = self.options.connect_timeout
        if timeout and not self._connected.wait(timeout):
            logger.warning(
                "not connected %.3g s after start (connect_timeout): serving without the "
                "transport until it connects; see broker.health()",
                timeout,
            )

    async def start_async(self) -> None:
        """`start()` for asyncio code: the caller's loop is never blocked."""
        await asyncio.to_thread(self.start)

    def stop(self) -> None:
        """Say goodbye, flush pending sends, stop the transport (deleting its subscription).

        Returns within `EventBrokerOptions.stop_timeout` whatever is down: what does not finish
        in time is abandoned and logged.
        """
        with self._state_lock:
            if not self._started:
                return
            self._started = False
            self._stopped = True
            _started_brokers.discard(self)
            timeout = self.options.stop_timeout
            deadline = time.monotonic() + timeout
            reserve = min(1.0, timeout / 5)  # for ending the threads
            budget = timeout - reserve  # for the bye, the flush and the transport's stop
            try:
                self._io.run(self._stop_on_loop(budget, timeout), timeout=budget + reserve / 2)
            except TimeoutError:
                logger.warning(
                    "the broker loop did not finish stopping within stop_timeout=%.3g s "
                    "(a handler blocking it?): abandoned",
                    timeout,
                )
            except Exception:
                logger.exception("stopping the transport failed")
            finally:
                self._shutdown_threads(max(0.05, deadline - time.monotonic()))

    async def stop_async(self) -> None:
        """`stop()` for asyncio code."""
        await asyncio.to_thread(self.stop)

    def _shutdown_threads(self, timeout: float) -> None:
        self._connected.clear()
        self._dispatcher.stop(timeout / 2)
        self._io.stop(timeout / 2)

    async def _start_on_loop(self) -> None:
        await self.transport.start(_Sink(self))
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain_forever())
        if self.options.heartbeat_interval or self.options.heartbeat_idle_delay:
            self._send_heartbeat(HeartbeatKind.HELLO, self._clock())

    async def _stop_on_loop(self, budget: float, stop_timeout: float) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None
        if self.options.heartbeat_interval or self.options.heartbeat_idle_delay:
            self._send_heartbeat(HeartbeatKind.BYE, self._clock())
        try:
            await asyncio.wait_for(self.transport.stop(), budget)
        except TimeoutError:
            logger.warning(
                "the transport did not stop within stop_timeout=%.3g s: abandoned it "
                "(unsent messages are lost; a Service Bus subscription is removed by "
                "AutoDeleteOnIdle)",
                stop_timeout,
            )

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
            args = (
                message_id,
                event_id,
                raiser_id,
                self.instance_id,
                self.options.application_name,
                self.options.site_id,
                sequence,
                now,
                wire_param,
                self.started_at,
                self.host,
            )
            telemetry = self._telemetry
            if telemetry is None:  # no fields to show it: encoded straight from the arguments
                body = self._codec.encode_event(*args)
                self._publish_body(body, message_id, event_id, raiser_id, False)
            else:
                telemetry.send(envelope_fields(*args), self._publish_fields)
            self._sequence = sequence  # only a sent message uses up a number: no false gaps
            self._last_publish_at = now
            self._counts["published"] += 1
        return message_id

    def _publish_fields(self, fields: dict[str, Any]) -> None:
        """Sign an event's envelope and hand it to the transport (under `_send_lock`)."""
        body = self._codec.encode_fields(fields)
        self._publish_body(
            body, fields["message_id"], fields["event_id"], fields["raiser_id"], "trace" in fields
        )

    def _publish_body(
        self, body: bytes, message_id: str, event_id: object, raiser_id: object, traced: bool
    ) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "send: event %s from raiser %s as message %s (%d bytes%s)",
                event_id,
                raiser_id,
                message_id,
                len(body),
                ", traced" if traced else "",
            )
        self.transport.publish(TransportMessage(body, message_id, self.instance_id))

    def _send_heartbeat(self, kind: HeartbeatKind, now: float) -> None:
        """Publish a control message carrying the last sequence number sent (never raises)."""
        summary = self._summary() if kind is not HeartbeatKind.BYE else None
        with self._send_lock:
            self._heartbeats += 1
            heartbeat = Heartbeat(
                kind,
                f"{self.instance_id}:h{self._heartbeats}",
                self.instance_id,
                self.options.application_name,
                self.options.site_id,
                self.host,
                self.started_at or now,
                now,
                self._sequence,
                self.options.heartbeat_interval,
                self._codec.signing_key_id,
                summary,
            )
            try:
                body = self._codec.encode_heartbeat(heartbeat)
                self.transport.publish(
                    TransportMessage(body, heartbeat.message_id, self.instance_id)
                )
            except PublishError as exc:
                logger.debug("%s heartbeat not sent: %s", kind.value, exc)
                return
            except Exception as exc:
                self._log.log(
                    logging.ERROR, "heartbeat", "sending a heartbeat failed: %s", exc, exc_info=exc
                )
                return
            self._heartbeat_sequence = self._sequence
            self._last_heartbeat_at = now
            self._counts["heartbeats_sent"] += 1

    def _summary(self) -> Mapping[str, Any] | None:
        """The summary provider's answer, checked; None when there is none or it failed."""
        provider = self.summary_provider
        if provider is None:
            return None
        try:
            summary = provider()
            if summary is None:
                return None
            if not isinstance(summary, Mapping):
                raise TypeError(f"a summary is a dict, got {type(summary).__name__}")
            size = len(_summary_json(summary))
            if size > MAX_SUMMARY_BYTES:
                raise ValueError(
                    f"{size} bytes of JSON, over MAX_SUMMARY_BYTES={MAX_SUMMARY_BYTES}"
                )
        except Exception as exc:
            self._log.log(
                logging.WARNING,
                "summary",
                "the heartbeat summary was left out: %s: %s",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return None
        return summary

    def request_heartbeat(self) -> None:
        """Send a presence heartbeat (with a fresh summary) soon, at most one a second: when
        something others show changed (a job started or ended). Any thread; never raises."""
        self._heartbeat_wanted = True

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
        now = self._clock()
        debug = logger.isEnabledFor(logging.DEBUG)
        try:
            message = self._codec.decode(body, now)
        except EnvelopeError as error:
            self._counts["received"] += 1
            if debug:
                logger.debug(
                    "receive: refused %d bytes (%s): %s", len(body), error.reason, error.description
                )
            return _done(loop, self._refuse(error, now))
        if type(message) is Heartbeat:
            self._on_heartbeat(message, now)
            return _done(loop, None)
        envelope: Envelope = message  # type: ignore[assignment]
        self._counts["received"] += 1
        source = envelope.instance_id
        if debug:
            logger.debug(
                "receive: message %s verified (%d bytes, key %s): event %s from instance %s on "
                "host %s, sequence %d, sent %.3f s ago%s",
                envelope.message_id,
                len(body),
                envelope.key_id,
                envelope.event_id,
                source,
                envelope.host,
                envelope.sequence,
                now - envelope.sent_at,
                ", traced" if envelope.trace is not None else "",
            )
        if source == self.instance_id:
            self._counts["own"] += 1
            return _done(loop, None)
        if envelope.application_name != self.options.application_name:
            self._counts["other_application"] += 1
            if debug:
                logger.debug(
                    "receive: message %s dropped: application %r",
                    envelope.message_id,
                    envelope.application_name,
                )
            return _done(loop, None)
        if self._dedup.seen(envelope.message_id):
            self._counts["duplicates"] += 1
            if debug:
                logger.debug("receive: message %s dropped: a duplicate", envelope.message_id)
            return _done(loop, None)
        verdict = self._tracker.observe(
            source,
            envelope.sequence,
            now,
            started_after_subscription=self._started_after_subscription(envelope.started_at),
        )
        if verdict is Verdict.SEEN:
            return _done(
                loop,
                self._reject(
                    "replay",
                    f"sequence {envelope.sequence} of instance {source} was received before",
                    now,
                    {"instance_id": source},
                ),
            )
        self._presence.event(envelope, now)

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
                        now,
                        {"instance_id": source},
                    ),
                )
        self._counts["dispatched"] += 1
        self._flow.lag(now - envelope.sent_at)
        telemetry = self._telemetry
        scope = None if telemetry is None else telemetry.receive(envelope, now)
        if debug:
            logger.debug(
                "dispatch: message %s to %d handler(s) of event %s and %d of event_received",
                envelope.message_id,
                0 if event is None else len(event.raised),
                envelope.event_id,
                len(self.event_received),
            )
        emissions: list[tuple[Signal[Any], Any]] = []
        if event is not None and (event.raised._sync or event.raised._async):
            notification = EventNotification(  # positional: a quarter cheaper per event
                envelope.event_id,
                envelope.raiser_id,
                param,
                source,  # source_instance_id
                False,  # is_local
                envelope.message_id,
                envelope.sent_at,
            )
            emissions.append((event.raised, notification))
        if not (self.event_received._sync or self.event_received._async):
            return self._dispatch(loop, emissions, scope)
        received = EventReceivedEventArgs(
            event_id=envelope.event_id,
            raiser_id=envelope.raiser_id,
            param=param,
            source_instance_id=source,
            application_name=envelope.application_name,
            site_id=envelope.site_id,
            message_id=envelope.message_id,
            sequence=envelope.sequence,
            sent_at=envelope.sent_at,
        )
        emissions.append((self.event_received, received))
        return self._dispatch(loop, emissions, scope)

    def _started_after_subscription(self, started_at: float | None) -> bool:
        """Whether a source that started at `started_at` sent everything after we subscribed."""
        subscribed = self._subscribed_at
        return started_at is not None and subscribed is not None and started_at >= subscribed

    def _on_heartbeat(self, heartbeat: Heartbeat, now: float) -> None:
        source = heartbeat.instance_id
        if source == self.instance_id:
            return
        if heartbeat.application_name != self.options.application_name:
            self._counts["other_application"] += 1
            return
        if heartbeat.kind is HeartbeatKind.BYE:
            self._presence.bye(source)
        elif not self._presence.heartbeat(heartbeat, now):
            return  # not newer than one already taken: a duplicate or a replay
        self._counts["heartbeats_received"] += 1
        self._tracker.heartbeat(
            source,
            heartbeat.last_sequence,
            now,
            hello=heartbeat.kind is HeartbeatKind.HELLO,
            started_after_subscription=self._started_after_subscription(heartbeat.started_at),
        )

    def _refuse(self, error: EnvelopeError, now: float) -> Rejection:
        if error.reason == "unknown_key" and {"instance_id", "key_id"} <= error.sender.keys():
            return self._unknown_key(error, now)
        return self._reject(error.reason, error.description, now, error.sender)

    def _reject(
        self, reason: str, description: str, now: float, sender: Mapping[str, str] | None = None
    ) -> Rejection:
        self._rejected[reason] += 1
        self._recent.add(reason, now)
        self._log.warn(reason, "dropped an incoming message (%s): %s", reason, description)
        self._tell_refused(reason, description, sender, now)
        return Rejection(reason, description)

    def _tell_refused(
        self, reason: str, description: str, sender: Mapping[str, str] | None, now: float
    ) -> None:
        """Emit `message_refused` when someone listens (on the broker loop; never raises)."""
        signal = self.message_refused
        if not (signal._sync or signal._async):
            return
        try:
            args = MessageRefusedEventArgs(reason, description, dict(sender or {}), now)
            self._dispatch(asyncio.get_running_loop(), [(signal, args)])
        except Exception as exc:
            logger.debug("emitting message_refused failed: %s", exc)

    def _unknown_key(self, error: EnvelopeError, now: float) -> Rejection:
        """A peer signs with a key this instance lacks: almost always a secret mismatch."""
        sender = error.sender
        source = sender["instance_id"]
        self._rejected["unknown_key"] += 1
        self._recent.add("unknown_key", now)
        if source in self._unknown_key_sources or len(self._unknown_key_sources) < _MAX_KEY_SOURCES:
            self._unknown_key_sources[source] += 1
        detail = (
            f"instance {source!r} on host {sender.get('host', 'unknown')!r} signs with key id "
            f"{sender['key_id']!r}, which this instance does not have"
        )
        if len(self._unknown_key_detail) < 10 or source in self._unknown_key_detail:
            self._unknown_key_detail[source] = detail
        self._log.log(
            logging.ERROR,
            ("unknown_key", source),
            "dropped a message (unknown_key): %s. EVENTBROKER_SECRET differs between instances: "
            "give every instance the same secret (during a rotation, every instance lists both, "
            "see docs/eventbroker.md)",
            detail,
        )
        self._tell_refused("unknown_key", error.description, sender, now)
        return Rejection("unknown_key", error.description)

    def _delivery_failed(self, exc: Exception) -> Rejection:
        now = self._clock()
        self._rejected["delivery_failed"] += 1
        self._recent.add("delivery_failed", now)
        self._log.log(
            logging.ERROR,
            "delivery_failed",
            "processing an incoming message failed (a bug: please report it): %s: %s",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        description = f"{type(exc).__name__}: {exc}"
        self._tell_refused("delivery_failed", description, None, now)
        return Rejection("delivery_failed", description)

    def _dispatch(
        self,
        loop: asyncio.AbstractEventLoop,
        emissions: list[tuple[Signal[Any], Any]],
        scope: DeliveryScope | None = None,
    ) -> asyncio.Future[Rejection | None]:
        """Run the handlers (see the module docstring); with a `scope`, in its context."""
        sync = False
        work: list[Coroutine[Any, Any, None]] = []
        for signal, arg in emissions:  # a loop, not two comprehensions: one or two emissions
            if signal._sync:
                sync = True
            if signal._async:
                work += signal.async_work(arg)
        if not sync and not work:
            if scope is not None:
                scope.end()
            return _done(loop, None)
        context = None if scope is None else scope.context
        if sync:
            # `emissions` is all that stays alive per message until the dispatcher thread runs
            # it (no closure): a signal without plain handlers calls none there.
            runner = self._call_sync
            if context is not None:
                runner = functools.partial(_call_in, context, runner)
            sync_done = self._dispatcher.submit(runner, emissions)
            if not work:
                if scope is not None:
                    sync_done.add_done_callback(lambda _: scope.end())
                return sync_done  # type: ignore[return-value]  # its result is None
            work.append(_await(sync_done))
        future: asyncio.Future[Rejection | None] = loop.create_future()
        if scope is not None:
            future.add_done_callback(lambda _: scope.end())
        # a copy: the dispatcher thread may be inside `context` meanwhile
        task = loop.create_task(_gather(work), context=None if context is None else context.copy())

        def finished(_: object) -> None:
            if not future.done():
                future.set_result(None)

        task.add_done_callback(finished)
        return future

    def _connection_changed(self, state: ConnectionState) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        now = self._clock()
        logger.info("transport %s", state.value)
        emissions: list[tuple[Signal[Any], Any]] = [(self.connection_changed, state)]
        if state is ConnectionState.DISCONNECTED:
            self._connected.clear()
            if self._disconnected_since is None:
                self._disconnected_since = now
        else:
            self._connected.set()
            self._disconnected_since = None
            if self._subscribed_at is None or state is ConnectionState.SUBSCRIPTION_RECREATED:
                self._subscribed_at = now  # what was sent before cannot have reached us
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

    # -- maintenance (on the broker loop) -------------------------------------------------------

    async def _maintain_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                pause = self._maintain(loop)
            except Exception as exc:  # never let bookkeeping end the task
                self._log.log(
                    logging.ERROR, "maintenance", "broker maintenance failed: %s", exc, exc_info=exc
                )
                pause = _MAX_TICK
            await asyncio.sleep(pause)

    def _maintain(self, loop: asyncio.AbstractEventLoop) -> float:
        """Report due gaps, send due heartbeats, drop silent instances; the pause until next."""
        now = self._clock()
        self._check_gaps(loop, now)
        self._flow.tick(now, self._counts, self._rejected)
        options = self.options
        pause = _MAX_TICK
        idle_delay = options.heartbeat_idle_delay
        if idle_delay and self._sequence > self._heartbeat_sequence:
            due = self._last_publish_at + idle_delay
            if now >= due:
                self._send_heartbeat(HeartbeatKind.IDLE, now)
            else:
                pause = min(pause, due - now)
        interval = options.heartbeat_interval
        if interval:
            due = self._last_heartbeat_at + interval
            if self._heartbeat_wanted:
                due = min(due, self._last_heartbeat_at + _HEARTBEAT_SOON)
            if now >= due:
                self._heartbeat_wanted = False
                self._send_heartbeat(HeartbeatKind.PRESENCE, now)
            else:
                pause = min(pause, due - now)
        for gone in self._presence.expire(now):
            logger.info(
                "instance %s on host %s stopped reporting (last heard %.0f s ago)",
                gone.instance_id,
                gone.host,
                now - gone.last_seen,
            )
        deadline = self._tracker.next_deadline()
        if deadline is not None:
            pause = min(pause, deadline - now)
        return max(pause, 0.005)

    def _check_gaps(
        self, loop: asyncio.AbstractEventLoop, now: float
    ) -> list[EventMissedEventArgs]:
        missed = [
            EventMissedEventArgs(MissedReason.GAP, gap.source, gap.first, gap.last)
            for gap in self._tracker.expired(now)
        ]
        for args in missed:
            self._counts["gaps"] += 1
            self._recent.add("gap", now)
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
            return self._check_gaps(asyncio.get_running_loop(), self._clock())

        if self._io.in_loop_thread():
            return self._check_gaps(self._io.loop, self._clock())
        return self._io.run(check())

    # -- what operators see ---------------------------------------------------------------------

    @property
    def instances(self) -> list[InstanceInfo]:
        """The other instances of this application heard from (hello, heartbeats, events).

        An instance drops out after its bye, or when silent for three heartbeat intervals.
        """
        return self._presence.instances()

    @property
    def lowest_peer_protocol(self) -> int | None:
        """The lowest `InstanceInfo.protocol` among `instances` (None while none has sent a
        heartbeat): what every peer heard from can read. Kept up to date as heartbeats, byes
        and silences arrive, and cheap to read: a sender may look before every message."""
        return self._presence.lowest_protocol

    @property
    def instance_info(self) -> InstanceInfo:
        """This instance, as the others see it."""
        return InstanceInfo(
            self.instance_id,
            self.options.application_name,
            self.options.site_id,
            self.host,
            self.started_at,
            self._clock(),
            self._sequence or None,
            self.options.heartbeat_interval,
        )

    @property
    def flow(self) -> Flow:
        """Events in and out, delivery lag, refusals and gaps over the last minutes, in windows
        of ten seconds (`eventbroker.Flow`; ``flow.last(60)`` merges the last minute's)."""
        return self._flow.snapshot(self._clock(), self._counts, self._rejected)

    def health(self) -> Health:
        """OK, DEGRADED (disconnected, a send backlog, refusals or gaps in the last minute) or
        DOWN (not started), with the reasons in words."""
        component = f"eventbroker {self.options.application_name!r}"
        if not self._started:
            state = "stopped" if self._stopped else "not started"
            return Health.from_reasons(
                component, down=[f"the event broker is {state}: call broker.start()"]
            )
        now = self._clock()
        degraded: list[str] = []
        transport = type(self.transport).__name__
        since = self._disconnected_since
        if since is not None:
            error = getattr(self.transport, "last_error", "") or ""
            degraded.append(
                f"disconnected from {transport} since {_utc(since)} ({now - since:.0f} s): "
                "events from other instances do not arrive (caches expire their entries when "
                "it reconnects)" + (f"; last error: {error}" if error else "")
            )
        queued = getattr(self.transport, "queued", 0)
        if isinstance(queued, int) and queued > (0 if since is not None else 100):
            degraded.append(f"{queued} outgoing messages waiting to be sent")
        recent = self._recent.last_minute(now)
        gaps = recent.pop("gap", 0)
        if recent:
            causes = ", ".join(f"{cause} {count}" for cause, count in sorted(recent.items()))
            text = f"refused {sum(recent.values())} incoming messages in the last minute ({causes})"
            if "unknown_key" in recent and self._unknown_key_detail:
                text += (
                    ": "
                    + "; ".join(list(self._unknown_key_detail.values())[:3])
                    + " (EVENTBROKER_SECRET differs between instances)"
                )
            degraded.append(text)
        if gaps:
            degraded.append(
                f"{gaps} sequence gaps in the last minute: events from other instances were "
                "lost (caches expired their entries)"
            )
        return Health.from_reasons(component, degraded=degraded)

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
            heartbeats_sent=counts["heartbeats_sent"],
            heartbeats_received=counts["heartbeats_received"],
            unknown_key_sources=dict(self._unknown_key_sources),
        )

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return (
            f"<EventBroker {self.options.application_name!r} instance={self.instance_id} "
            f"{state} transport={type(self.transport).__name__}>"
        )


_background: set[asyncio.Task[None]] = set()  # keeps scheduled handler tasks alive
_started_brokers: weakref.WeakSet[EventBroker] = weakref.WeakSet()


def _stop_started_brokers() -> None:
    """At interpreter exit: stop brokers still running, before executors refuse new work."""
    for broker in list(_started_brokers):
        try:
            broker.stop()
        except Exception as exc:  # exiting anyway: say so, never raise
            logger.warning("stopping %r at exit failed: %s", broker, exc)


# threading's exit hooks run before concurrent.futures shuts its executors down (which the
# Service Bus SDK needs while closing); registered last, this one runs first.
if hasattr(threading, "_register_atexit"):
    assert concurrent.futures.thread  # imported above for the order of exit hooks
    threading._register_atexit(_stop_started_brokers)
else:  # pragma: no cover - every supported CPython has it
    atexit.register(_stop_started_brokers)


_summary_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _done(
    loop: asyncio.AbstractEventLoop, result: Rejection | None
) -> asyncio.Future[Rejection | None]:
    future: asyncio.Future[Rejection | None] = loop.create_future()
    future.set_result(result)
    return future


def _call_sync(loop: asyncio.AbstractEventLoop, emissions: list[tuple[Signal[Any], Any]]) -> None:
    """Run the plain handlers of `emissions` (on the dispatcher thread); a plain handler's
    leftover awaitable goes to the broker `loop`."""
    for signal, arg in emissions:
        for leftover in signal.call_sync(arg):
            asyncio.run_coroutine_threadsafe(leftover, loop)


def _call_in(context: contextvars.Context, call: Callable[[T], None], arg: T) -> None:
    context.run(call, arg)


async def _await(future: asyncio.Future[None]) -> None:
    await future


async def _gather(work: list[Coroutine[Any, Any, None]]) -> None:
    await asyncio.gather(*work)
