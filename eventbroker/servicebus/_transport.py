"""`ServiceBusTransport`: the production `Transport` over one Azure Service Bus topic.

Everything async runs on the broker's loop: one long-lived sender and one PEEK_LOCK receiver
(opening costs about half a second, so never per message), a send task draining a bounded,
thread-safe outgoing queue into `ServiceBusMessageBatch`es, and a receive task handing each
body to the sink and settling it once local dispatch has finished. Both tasks reconnect
forever with exponential backoff and jitter.

`start` never blocks an application on an outage: when the namespace cannot be reached it
returns at once (or after ``start_timeout``), reports DISCONNECTED and keeps connecting in the
background; only configuration errors (settings, refused credentials, a missing topic) raise.
`stop` takes at most ``stop_timeout`` in all and abandons, in one log line, what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import MessageSizeExceededError

from .._diagnostics import LogLimiter
from .._transport import (
    ConnectionState,
    PublishError,
    Rejection,
    TransportMessage,
    TransportSink,
)
from ._admin import Provisioner, admin_client
from ._backoff import Backoff
from ._diagnose import describe, is_configuration_error
from ._errors import ServiceBusConfigurationError, ServiceBusStartError
from ._naming import check_subscription_name, default_subscription_name
from ._options import ServiceBusOptions

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.servicebus import ServiceBusReceivedMessage

_log = logging.getLogger(__name__)


class SubscriptionVanishedError(Exception):
    """The periodic check found the subscription gone: reconnecting recreates it."""


_CLOSE_TIMEOUT = 5.0
_CANCEL_GRACE = 0.2
_CLOSE_RESERVE = 2.0
"""Of ``stop_timeout``, the part (at most half) kept for closing and deleting after the flush."""
_MIN_WAIT = 0.05
"""Even past the stop deadline, each close step gets this long (a healthy close is instant)."""
_DELIVERY_FAILED = "delivery_failed"
_SETTLE_POLL = 0.002
"""Receive wait while dispatched messages await settlement (bounds their settle delay)..."""
_SETTLE_POLL_MAX = 0.1
"""...doubling up to this while a slow handler keeps them waiting."""
_RENEW_LEAD_MAX = 10.0
"""Renew a message's lock when less than this (or half the lock) is left, as the SDK's
AutoLockRenewer does."""
_MAX_LOCK_RENEWAL = 300.0
"""A handler still running after this long stops being covered: its lock expires and the
message comes again (de-duplicated), rather than a hung handler holding it forever."""


class _Received:
    """A received message while local dispatch runs: its outcome, and when its lock is due
    for renewal (``time.monotonic()``)."""

    __slots__ = ("message", "outcome", "renew_at", "renew_until")

    def __init__(
        self, message: ServiceBusReceivedMessage, outcome: asyncio.Future[Rejection | None]
    ) -> None:
        self.message = message
        self.outcome = outcome
        now = time.monotonic()
        self.renew_until = now + _MAX_LOCK_RENEWAL
        self.renew_at = _renewal_due(message, now)


class ServiceBusTransport:
    """Broadcast through one Azure Service Bus topic; one subscription per instance.

    ``ServiceBusTransport(ServiceBusOptions(connection_string=..., topic="shop-events"))``, or
    ``ServiceBusTransport()`` to read every setting from ``EVENTBROKER_SERVICEBUS_*``.

    `start` raises `ServiceBusConfigurationError` (such as `SubscriptionNameError`) for bad
    settings and `ServiceBusStartError` when Service Bus refuses them (credentials refused,
    a missing topic with ``create_missing_topic=False``). When the namespace cannot be reached
    it does not raise: it returns (at once, or after ``start_timeout``), reports
    ``DISCONNECTED``, queues what is published and connects in the background, then reports
    ``RECONNECTED``. Once started it reconnects on its own. `stop` takes at most
    ``stop_timeout``.

    For health checks, read from any thread (cheap, never blocking): `queued`,
    `disconnected_since` and `last_error`.

    `clock` (the publish deadline's and the log limiter's) and `random` (backoff jitter) are
    injectable for tests.
    """

    messaging_system = "servicebus"
    """The OpenTelemetry ``messaging.system`` of Azure Service Bus."""

    def __init__(
        self,
        options: ServiceBusOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.options = options if options is not None else ServiceBusOptions.from_env()
        self._clock = clock
        self._random = random
        self._limiter = LogLimiter(_log, clock)
        self._subscription_name: str | None = None
        self._lock = threading.Lock()
        self._queue: deque[TransportMessage] = deque()
        self._accepting = False
        self._wake_pending = False
        self._send_down_since: float | None = None
        """When sends started failing, by `clock` (the publish deadline counts from it)."""
        self._send_down_at: float | None = None
        self._receive_down_at: float | None = None
        self._last_error = ""
        self._stopping = False
        self._provisioned = False
        self._first_attempt: asyncio.Future[BaseException | None] | None = None
        self._started_at = 0.0
        self._unsettled: list[_Received] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wakeup: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._sink: TransportSink | None = None
        self._credential: AsyncTokenCredential | None = None
        self._owns_credential = False
        self._client: ServiceBusClient | None = None
        self._provisioner: Provisioner | None = None
        self._sender: ServiceBusSender | None = None
        self._receiver: ServiceBusReceiver | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def subscription_name(self) -> str | None:
        """This instance's subscription, known once `start` has run."""
        return self._subscription_name

    @property
    def destination_name(self) -> str:
        """The topic (OpenTelemetry's ``messaging.destination.name``)."""
        return self.options.topic

    @property
    def queued(self) -> int:
        """Messages accepted by `publish` and not yet sent (including the batch in flight)."""
        return len(self._queue)

    @property
    def disconnected_since(self) -> float | None:
        """When (``time.time()``) sending or receiving stopped working; None while both work.

        Set from `start` on when the first connection has not been made yet.
        """
        receive, send = self._receive_down_at, self._send_down_at
        if receive is None or send is None:
            return send if receive is None else receive
        return min(receive, send)

    @property
    def last_error(self) -> str:
        """The last connection error, one line without secrets (kept after recovery; ``""``
        if there was none)."""
        return self._last_error

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, sink: TransportSink) -> None:
        """Provision the subscription and open the sender and receiver, or, when Service Bus
        cannot be reached, report DISCONNECTED and go on connecting in the background."""
        if self._loop is not None:
            raise RuntimeError("ServiceBusTransport.start() was already called")
        options = self.options
        name = options.subscription_name or default_subscription_name(sink.application_name)
        check_subscription_name(name)
        loop = asyncio.get_running_loop()
        self._client = self._make_client()
        self._subscription_name = name
        self._sink = sink
        self._loop, self._loop_thread = loop, threading.get_ident()
        self._wakeup, self._drained, self._connected = (asyncio.Event() for _ in range(3))
        admin = admin_client(options, self._credential, loop)
        self._provisioner = Provisioner(admin, options, name)
        self._first_attempt = first = loop.create_future()
        self._started_at = time.monotonic()
        with self._lock:
            self._accepting = True
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="servicebus-send"),
            asyncio.create_task(self._receive_loop(), name="servicebus-receive"),
        ]
        try:
            await asyncio.wait([first], timeout=options.start_timeout)
        except BaseException:
            await self._abort_start()
            raise
        error = first.result() if first.done() else None
        if not first.done():
            first.cancel()  # the attempt goes on; it reports RECONNECTED when it succeeds
            self._last_error = f"no connection within start_timeout={options.start_timeout:g} s"
        elif error is None:
            _log.info(
                "Service Bus transport connected in %.1f s: topic %r, subscription %r",
                time.monotonic() - self._started_at,
                options.topic,
                name,
            )
            sink.connection_changed(ConnectionState.CONNECTED)
            return
        elif is_configuration_error(error, options):
            await self._abort_start()
            if isinstance(error, ServiceBusConfigurationError):
                raise error
            raise ServiceBusStartError(
                f"could not start the Service Bus transport on topic {options.topic!r} "
                f"(subscription {name!r}): {describe(error, options)}"
            ) from error
        now = time.time()
        self._receive_down_at = self._send_down_at = now
        self._send_down_since = self._clock()
        _log.warning(
            "Service Bus is unreachable at start (%s): starting disconnected; messages are "
            "queued and the transport connects in the background",
            self._last_error,
        )
        sink.connection_changed(ConnectionState.DISCONNECTED)

    async def _abort_start(self) -> None:
        """Undo a failed `start` so that it may be tried again."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_CANCEL_GRACE)
        self._tasks = []
        with self._lock:
            self._accepting = False
            self._queue.clear()
        await self._close_all(_CLOSE_TIMEOUT)
        self._loop = self._first_attempt = None
        self._stopping = self._provisioned = False
        self._receive_down_at = self._send_down_at = self._send_down_since = None

    async def stop(self) -> None:
        """Send what is queued, close the handlers and delete the subscription, all within
        ``stop_timeout``; what has not finished by then is abandoned and logged in one line."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        timeout = self.options.stop_timeout
        deadline = began + timeout

        def left(reserve: float = 0.0) -> float:
            return max(deadline - reserve - loop.time(), _MIN_WAIT)

        with self._lock:
            self._accepting = False
        if not self._tasks:
            await self._close_all(left())
            return
        reserve = min(timeout / 2, _CLOSE_RESERVE)
        abandoned: list[str] = []
        await self._flush(deadline - reserve - loop.time())
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        _, running = await asyncio.wait(self._tasks, timeout=min(_CANCEL_GRACE, left(reserve)))
        if running:  # the SDK can swallow a cancel inside a receive: closing ends it
            await _bounded(self._close_receiver(), left(reserve / 2))
            await asyncio.wait(running, timeout=left(reserve / 2))
        self._tasks = []
        with self._lock:
            unsent = len(self._queue)
            self._queue.clear()
        if unsent:
            abandoned.append(f"{unsent} message(s) unsent")
        unsettled = await self._settle_unsettled_at_stop(left(reserve / 2))
        if unsettled:
            abandoned.append(f"{unsettled} received message(s) not settled")
        try:
            await _bounded(
                asyncio.gather(self._close_sender(), self._close_receiver()), left(reserve / 2)
            )
        except TimeoutError:
            abandoned.append("the sender and receiver were not closed cleanly")
        deleted = await self._delete_subscription_at_stop(left(), abandoned)
        await self._close_all(left())
        elapsed = loop.time() - began
        if abandoned:
            _log.warning(
                "Service Bus transport stopped in %.1f s (stop_timeout=%g s), abandoning: %s",
                elapsed,
                timeout,
                "; ".join(abandoned),
            )
        else:
            _log.info(
                "Service Bus transport stopped in %.1f s (subscription %r %s)",
                elapsed,
                self._subscription_name,
                "deleted" if deleted else "kept",
            )

    async def _delete_subscription_at_stop(self, budget: float, abandoned: list[str]) -> bool:
        """Delete the subscription if this transport made sure of it; True when deleted."""
        if not (self.options.delete_subscription_on_stop and self._provisioned):
            return False
        assert self._provisioner is not None
        try:
            await _bounded(self._provisioner.delete_subscription(), budget)
            return True
        except Exception as exc:
            why = (
                "no answer in time"
                if isinstance(exc, TimeoutError)
                else describe(exc, self.options)
            )
            abandoned.append(
                f"subscription {self._subscription_name!r} not deleted ({why}): AutoDeleteOnIdle "
                f"removes it after {self.options.auto_delete_on_idle / 60:g} min idle"
            )
            return False

    # -- publishing ------------------------------------------------------------------------

    def publish(self, message: TransportMessage) -> None:
        """Queue `message` (any thread, never blocks); raise `PublishError` saying why not."""
        options = self.options
        if len(message.body) > options.max_message_size:
            raise PublishError(
                f"message of {len(message.body)} bytes is larger than the Service Bus limit of "
                f"{options.max_message_size} bytes (ServiceBusOptions.max_message_size)"
            )
        down_since = self._send_down_since
        if down_since is not None and self._clock() - down_since > options.publish_deadline:
            raise PublishError(
                f"Service Bus has been unreachable for {self._clock() - down_since:.0f} s "
                f"(more than publish_deadline={options.publish_deadline:g} s); message not "
                f"queued. Last error: {self._last_error}"
            )
        with self._lock:
            if not self._accepting:
                raise PublishError(
                    "the Service Bus transport is not running: start the broker first "
                    "(or it has been stopped)"
                )
            if len(self._queue) >= options.max_queued_messages:
                raise PublishError(
                    f"the Service Bus outgoing queue is full ({options.max_queued_messages} "
                    "messages, ServiceBusOptions.max_queued_messages): sends are not keeping up "
                    "or the broker is unreachable"
                )
            self._queue.append(message)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()

    def _wake(self) -> None:
        assert self._loop is not None and self._wakeup is not None
        if threading.get_ident() == self._loop_thread:
            self._wakeup.set()
        else:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    async def _flush(self, budget: float) -> int:
        """Wait until the queue is sent or `budget` seconds pass; the number left unsent."""
        assert self._drained is not None
        with self._lock:
            if not self._queue or budget <= 0:
                return len(self._queue)
            self._drained.clear()
        self._wake()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), budget)
        with self._lock:
            return len(self._queue)

    async def _send_loop(self) -> None:
        assert self._wakeup is not None and self._drained is not None
        assert self._connected is not None
        backoff = Backoff(
            self.options.reconnect_initial_backoff, self.options.reconnect_max_backoff, self._random
        )
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            with self._lock:
                self._wake_pending = False
            await self._connected.wait()  # the first connection provisions the topic
            if self.options.batch_window:
                await asyncio.sleep(self.options.batch_window)
            while True:
                with self._lock:
                    pending = list(itertools.islice(self._queue, self.options.max_batch_messages))
                if not pending:
                    self._drained.set()
                    break
                try:
                    if self._sender is None:
                        self._sender = await self._open_sender()
                    sent = await self._send_batch(self._sender, pending)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if _interpreter_exiting(exc):
                        return
                    self._on_send_failure(exc)
                    await self._close_sender()
                    await asyncio.sleep(backoff.next_delay())
                    continue
                with self._lock:
                    for _ in range(sent):
                        self._queue.popleft()
                backoff.reset()
                if self._send_down_since is not None:
                    _log.info(
                        "Service Bus sends work again after %.1f s",
                        self._clock() - self._send_down_since,
                    )
                    self._send_down_since = self._send_down_at = None

    async def _send_batch(
        self, sender: ServiceBusSender, pending: Sequence[TransportMessage]
    ) -> int:
        """Send the longest prefix of `pending` that fits one batch; how many were sent."""
        if len(pending) == 1:  # a lone message skips building a batch (latency)
            try:
                await sender.send_messages(self._to_service_bus(pending[0]))
            except MessageSizeExceededError as exc:
                self._limiter.log(
                    logging.ERROR,
                    "oversize",
                    "dropping Service Bus message %s: %s",
                    pending[0].message_id,
                    exc,
                )
            return 1
        batch: ServiceBusMessageBatch = await sender.create_message_batch()
        count = 0
        for message in pending:
            try:
                batch.add_message(self._to_service_bus(message))
            except ValueError:  # MessageSizeExceededError: the batch is full
                break
            count += 1
        if count == 0:
            self._limiter.log(
                logging.ERROR,
                "oversize",
                "dropping Service Bus message %s: %d bytes do not fit a batch (%d bytes max)",
                pending[0].message_id,
                len(pending[0].body),
                batch.max_size_in_bytes,
            )
            return 1
        await sender.send_messages(batch)
        return count

    def _to_service_bus(self, message: TransportMessage) -> ServiceBusMessage:
        ttl = self.options.message_time_to_live
        return ServiceBusMessage(
            message.body,
            message_id=message.message_id,
            subject=message.source_instance_id,
            time_to_live=datetime.timedelta(seconds=ttl) if ttl is not None else None,
        )

    def _on_send_failure(self, exc: Exception) -> None:
        self._last_error = describe(exc, self.options)
        if self._send_down_since is None:
            self._send_down_since = self._clock()
            self._send_down_at = time.time()
            _log.warning(
                "Service Bus send failed (%s); %d message(s) kept queued, retrying with backoff",
                self._last_error,
                len(self._queue),
            )
        else:
            _log.debug("Service Bus send failed again: %s", self._last_error)

    # -- receiving -------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        # Every receiver call happens here, one at a time: a PEEK_LOCK settlement reads the
        # connection for its outcome, so it must not run beside a receive (nor beside a lock
        # renewal: so no SDK AutoLockRenewer, whose threads or tasks would). One message per
        # receive call: the SDK serves it from the prefetch buffer at once, while a larger count
        # keeps pulling for up to 0.2 s after a first message. Dispatch runs meanwhile: each
        # message is settled on a later turn, once its outcome future has resolved; a handler
        # that outlasts the lock gets it renewed from here too, before it runs out.
        backoff = Backoff(
            self.options.reconnect_initial_backoff, self.options.reconnect_max_backoff, self._random
        )
        unsettled = self._unsettled
        checked_at = time.monotonic()
        poll = _SETTLE_POLL
        while not self._stopping:
            try:
                if self._receiver is None:
                    unsettled.clear()  # their locks died with the old link: they come again
                    await self._connect()
                    checked_at = time.monotonic()
                receiver = self._receiver
                assert receiver is not None
                settled = await self._settle_ready(receiver)
                await self._renew_due_locks(receiver)
                if len(unsettled) >= self.options.prefetch_count:
                    await asyncio.wait(
                        [item.outcome for item in unsettled],
                        timeout=self._until_renewal(self.options.receive_wait),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    continue
                wait = self._until_renewal(poll) if unsettled else self.options.receive_wait
                messages = await receiver.receive_messages(max_message_count=1, max_wait_time=wait)
                for message in messages:
                    unsettled.append(_Received(message, self._deliver(message)))
                # a slow handler: poll for its outcome less and less often
                poll = _SETTLE_POLL if messages or settled else min(poll * 2, _SETTLE_POLL_MAX)
                backoff.reset()
                if time.monotonic() - checked_at >= self.options.subscription_check_interval:
                    checked_at = time.monotonic()
                    await self._check_subscription()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping or _interpreter_exiting(exc):
                    return
                self._on_receive_failure(exc)
                await self._close_receiver()
                await asyncio.sleep(backoff.next_delay())

    async def _settle_ready(self, receiver: ServiceBusReceiver) -> int:
        """Settle every message whose local dispatch has finished; how many there were."""
        unsettled = self._unsettled
        if not unsettled or not any(item.outcome.done() for item in unsettled):
            return 0
        ready = [item for item in unsettled if item.outcome.done()]
        for item in ready:  # one at a time, so that a stop cut short knows what is left
            unsettled.remove(item)  # _Received compares by identity
            await self._settle(receiver, item.message, item.outcome)
        return len(ready)

    async def _renew_due_locks(self, receiver: ServiceBusReceiver) -> None:
        """Renew the lock of every message whose handler is still running and whose lock
        runs out soon (for up to `_MAX_LOCK_RENEWAL`)."""
        now = time.monotonic()
        for item in self._unsettled:
            if item.renew_at > now or item.outcome.done():
                continue
            if now >= item.renew_until:
                item.renew_at = float("inf")
                self._limiter.log(
                    logging.WARNING,
                    "renewal-limit",
                    "a handler has held Service Bus message %s for %.0f s: its lock is no "
                    "longer renewed, so the message will be delivered again",
                    item.message.message_id,
                    _MAX_LOCK_RENEWAL,
                )
                continue
            try:
                await receiver.renew_message_lock(item.message)
            except Exception as exc:  # lock lost, link gone: it comes again (de-duplicated)
                item.renew_at = float("inf")
                _log.debug(
                    "renewing the lock of Service Bus message %s failed: %s",
                    item.message.message_id,
                    exc,
                )
                continue
            item.renew_at = _renewal_due(item.message, time.monotonic())

    def _until_renewal(self, wait: float) -> float:
        """``wait``, or less when a lock renewal is due sooner."""
        due = min(
            (item.renew_at for item in self._unsettled if not item.outcome.done()),
            default=float("inf"),
        )
        return max(min(wait, due - time.monotonic()), _SETTLE_POLL)

    async def _settle_unsettled_at_stop(self, budget: float) -> int:
        """At stop: let dispatched messages finish and settle them, within `budget` seconds;
        how many were left unsettled."""
        receiver, unsettled = self._receiver, self._unsettled
        if receiver is not None and unsettled:

            async def settle_all() -> None:
                await asyncio.wait([item.outcome for item in unsettled])
                await self._settle_ready(receiver)

            with contextlib.suppress(TimeoutError):
                await _bounded(settle_all(), budget)
        return len(unsettled)

    async def _check_subscription(self) -> None:
        """Raise `SubscriptionVanishedError` if the subscription was deleted under us."""
        assert self._provisioner is not None
        if not await self._provisioner.subscription_exists():
            raise SubscriptionVanishedError(
                f"Service Bus subscription {self._subscription_name!r} no longer exists"
            )

    def _on_receive_failure(self, exc: Exception) -> None:
        self._last_error = describe(exc, self.options)
        first = self._first_attempt
        if first is not None and not first.done():
            first.set_result(exc)  # `start` decides: raise, or report DISCONNECTED
            return
        if self._receive_down_at is None:
            self._receive_down_at = time.time()
            _log.warning(
                "Service Bus receive failed (%s); reconnecting with backoff", self._last_error
            )
            assert self._sink is not None
            self._sink.connection_changed(ConnectionState.DISCONNECTED)
        elif is_configuration_error(exc, self.options):
            self._limiter.log(
                logging.ERROR,
                f"refused:{type(exc).__name__}",
                "Service Bus refuses to connect (%s); retrying with backoff",
                self._last_error,
            )
        else:
            _log.debug("Service Bus reconnect failed again: %s", self._last_error)

    async def _connect(self) -> None:
        """Provision what is missing, then open the receiver (and the sender, the first time)."""
        assert self._provisioner is not None and self._sink is not None
        assert self._connected is not None
        if not self._connected.is_set():
            await self._provisioner.ensure_topic()
            await self._provisioner.ensure_subscription(self._sink.instance_id)
            self._provisioned = True
            self._sender, self._receiver = await _open_both(
                self._open_sender(), self._open_receiver()
            )
            self._on_first_connection()
            return
        recreated = False
        if not await self._provisioner.subscription_exists():
            await self._provisioner.ensure_topic()
            recreated = await self._provisioner.ensure_subscription(self._sink.instance_id)
        self._receiver = await self._open_receiver()
        down_at, self._receive_down_at = self._receive_down_at, None
        if recreated:
            _log.warning(
                "Service Bus subscription %r had vanished and was recreated: messages sent "
                "meanwhile are lost",
                self._subscription_name,
            )
            self._sink.connection_changed(ConnectionState.SUBSCRIPTION_RECREATED)
        elif down_at is not None:
            _log.info("Service Bus receiver reconnected after %.1f s", time.time() - down_at)
            self._sink.connection_changed(ConnectionState.RECONNECTED)

    def _on_first_connection(self) -> None:
        assert self._connected is not None and self._sink is not None
        self._connected.set()  # the send loop may start sending
        self._receive_down_at = self._send_down_at = self._send_down_since = None
        first = self._first_attempt
        if first is not None and not first.done():
            first.set_result(None)  # `start` reports CONNECTED
            return
        _log.info(
            "Service Bus transport connected after %.1f s: topic %r, subscription %r",
            time.monotonic() - self._started_at,
            self.options.topic,
            self._subscription_name,
        )
        self._sink.connection_changed(ConnectionState.RECONNECTED)

    def _deliver(self, message: ServiceBusReceivedMessage) -> asyncio.Future[Rejection | None]:
        """Hand the body to the sink (verification runs now, in receive order)."""
        assert self._sink is not None
        body = _body_bytes(message)
        if body is None:
            rejection = Rejection(
                "malformed", f"message body type {message.body_type} is not binary data"
            )
        else:
            try:
                return self._sink.deliver(body)
            except Exception as exc:
                rejection = self._delivery_failed(message, exc)
        outcome: asyncio.Future[Rejection | None] = asyncio.get_running_loop().create_future()
        outcome.set_result(rejection)
        return outcome

    def _delivery_failed(self, message: ServiceBusReceivedMessage, exc: Exception) -> Rejection:
        """The sink failed (its bug): log it (the traceback once per cause); the message is
        dead-lettered and receiving goes on."""
        self._limiter.log(
            logging.ERROR,
            f"{_DELIVERY_FAILED}:{type(exc).__name__}",
            "delivering Service Bus message %s failed (%s: %s); dead-lettering it",
            message.message_id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return Rejection(_DELIVERY_FAILED, f"{type(exc).__name__}: {exc}")

    async def _settle(
        self,
        receiver: ServiceBusReceiver,
        message: ServiceBusReceivedMessage,
        outcome: asyncio.Future[Rejection | None],
    ) -> None:
        if outcome.cancelled():  # not settled: the message comes again once its lock expires
            return
        try:
            rejection = outcome.result()
        except Exception as exc:
            rejection = self._delivery_failed(message, exc)
        try:
            if rejection is None:
                await receiver.complete_message(message)
            else:
                if rejection.reason != _DELIVERY_FAILED:  # already logged
                    self._limiter.log(
                        logging.WARNING,
                        f"dead-letter:{rejection.reason}",
                        "dead-lettering Service Bus message %s: %s %s",
                        message.message_id,
                        rejection.reason,
                        rejection.description,
                    )
                await receiver.dead_letter_message(
                    message, reason=rejection.reason, error_description=rejection.description
                )
        except Exception as exc:
            # lock lost or link gone: the message comes back and the receiver de-duplicates it
            _log.debug("settling Service Bus message %s failed: %s", message.message_id, exc)

    # -- handlers --------------------------------------------------------------------------

    def _make_client(self) -> ServiceBusClient:
        options = self.options
        kwargs: dict[str, Any] = {
            "retry_total": options.sdk_retry_total,
            "retry_backoff_max": options.reconnect_max_backoff,
        }
        if options.connection_string is not None:
            return ServiceBusClient.from_connection_string(options.connection_string, **kwargs)
        assert options.fully_qualified_namespace is not None
        if options.credential is not None:
            if not inspect.iscoroutinefunction(options.credential.get_token):
                raise ServiceBusConfigurationError(
                    "ServiceBusOptions.credential must be an async credential (from "
                    "azure.identity.aio, with 'async def get_token'), as the SDK's aio client needs"
                )
            self._credential = options.credential
        else:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            self._owns_credential = True
        if options.use_development_emulator:
            kwargs["use_tls"] = False
        return ServiceBusClient(options.fully_qualified_namespace, self._credential, **kwargs)

    async def _open_sender(self) -> ServiceBusSender:
        assert self._client is not None
        return await _opened(self._client.get_topic_sender(self.options.topic))

    async def _open_receiver(self) -> ServiceBusReceiver:
        assert self._client is not None and self._subscription_name is not None
        receiver = self._client.get_subscription_receiver(
            self.options.topic,
            self._subscription_name,
            receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            prefetch_count=self.options.prefetch_count,
        )
        return await _opened(receiver)

    async def _close_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            await _close_quietly(sender)

    async def _close_receiver(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            await _close_quietly(receiver)

    async def _close_all(self, budget: float) -> None:
        """Close handlers, client and credential within `budget` seconds (abandoning the rest)."""

        async def close() -> None:
            await asyncio.gather(self._close_sender(), self._close_receiver())
            client, self._client = self._client, None
            if client is not None:
                await _close_quietly(client)
            if self._owns_credential and self._credential is not None:
                await _close_quietly(self._credential)

        if self._provisioner is not None:
            self._provisioner.close()
        with contextlib.suppress(TimeoutError):
            await _bounded(close(), budget)


def _interpreter_exiting(exc: BaseException) -> bool:
    """The process is exiting: the default executor (DNS lookups) refuses new work."""
    return isinstance(exc, RuntimeError) and "cannot schedule new futures" in str(exc)


def _renewal_due(message: ServiceBusReceivedMessage, now: float) -> float:
    """When (``time.monotonic()``) ``message``'s lock should be renewed: when less than
    `_RENEW_LEAD_MAX`, or half of what is left, remains."""
    locked_until = message.locked_until_utc
    if locked_until is None:
        return float("inf")
    left = (locked_until - datetime.datetime.now(datetime.UTC)).total_seconds()
    return now + left - min(_RENEW_LEAD_MAX, max(left, 0.0) / 2)


def _body_bytes(message: ServiceBusReceivedMessage) -> bytes | None:
    """The message body as bytes, or None when it is not binary data (an AMQP value)."""
    if message.body_type == AmqpMessageBodyType.DATA:
        return b"".join(message.body)
    body = message.body
    return body if isinstance(body, bytes) else None


_T = TypeVar("_T")
_Handler = TypeVar("_Handler", ServiceBusSender, ServiceBusReceiver)


async def _bounded(awaitable: Awaitable[_T], budget: float) -> _T:
    """Await `awaitable` for at most `budget` seconds, else abandon it: cancel it without
    waiting (the SDK can swallow a cancel) and raise `TimeoutError`."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([task], timeout=max(budget, _MIN_WAIT))
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise TimeoutError
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # an abandoned task's late error is not worth a log line


async def _open_both(
    sender: Awaitable[ServiceBusSender], receiver: Awaitable[ServiceBusReceiver]
) -> tuple[ServiceBusSender, ServiceBusReceiver]:
    """Open both at once (about half a second each); if one fails close the other, raise."""
    opened = await asyncio.gather(sender, receiver, return_exceptions=True)
    errors = [item for item in opened if isinstance(item, BaseException)]
    if errors:
        for item in opened:
            if not isinstance(item, BaseException):
                await _close_quietly(item)
        raise errors[0]
    return opened[0], opened[1]  # type: ignore[return-value]


async def _opened(handler: _Handler) -> _Handler:
    """Open `handler` (about half a second); close it again if opening fails.

    The SDK's own retries are off while opening (about a second each plus its backoff): a
    failed open is retried by the transport's backoff, and an outage or refused credentials
    are known at once. Sends and receives keep the SDK's retries.
    """
    config: Any = getattr(handler, "_config", None)
    retries = getattr(config, "retry_total", None)
    if retries is not None:
        config.retry_total = 0
    try:
        await handler.__aenter__()
    except BaseException:
        await _close_quietly(handler)
        raise
    finally:
        if retries is not None:
            config.retry_total = retries
    return handler


async def _close_quietly(closeable: Any) -> None:
    try:
        await asyncio.wait_for(closeable.close(), _CLOSE_TIMEOUT)
    except Exception as exc:
        _log.debug("closing %s failed: %s", type(closeable).__name__, exc)
