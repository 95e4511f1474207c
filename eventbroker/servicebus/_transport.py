"""`ServiceBusTransport`: the production `Transport` over one Azure Service Bus topic.

Everything async runs on the broker's loop: one long-lived sender and one PEEK_LOCK receiver
(opening costs about half a second, so never per message), a send task draining a bounded,
thread-safe outgoing queue into `ServiceBusMessageBatch`es, and a receive task handing each
body to the sink and settling it once local dispatch has finished. Both tasks reconnect
forever with exponential backoff and jitter.
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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import MessageSizeExceededError

from .._transport import (
    ConnectionState,
    PublishError,
    Rejection,
    TransportMessage,
    TransportSink,
)
from ._admin import Provisioner, admin_client
from ._backoff import Backoff
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
_SETTLE_POLL = 0.002
"""Receive wait while dispatched messages await settlement (bounds their settle delay)..."""
_SETTLE_POLL_MAX = 0.1
"""...doubling up to this while a slow handler keeps them waiting."""


class ServiceBusTransport:
    """Broadcast through one Azure Service Bus topic; one subscription per instance.

    ``ServiceBusTransport(ServiceBusOptions(connection_string=..., topic="shop-events"))``, or
    ``ServiceBusTransport()`` to read every setting from ``EVENTBROKER_SERVICEBUS_*``.
    `start` raises `SubscriptionNameError` for an invalid name and `ServiceBusStartError` when
    the namespace cannot be reached or provisioned; once started it reconnects on its own.
    `clock` (the publish deadline's) and `random` (backoff jitter) are injectable for tests.
    """

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
        self._subscription_name: str | None = None
        self._lock = threading.Lock()
        self._queue: deque[TransportMessage] = deque()
        self._accepting = False
        self._wake_pending = False
        self._send_down_since: float | None = None
        self._send_error = ""
        self._receive_down = False
        self._stopping = False
        self._unsettled: list[
            tuple[ServiceBusReceivedMessage, asyncio.Future[Rejection | None]]
        ] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wakeup: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
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
    def queued(self) -> int:
        """Messages accepted by `publish` and not yet sent (including the batch in flight)."""
        return len(self._queue)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, sink: TransportSink) -> None:
        """Provision the subscription, open the sender and receiver, start the loops."""
        if self._loop is not None:
            raise RuntimeError("ServiceBusTransport.start() was already called")
        options = self.options
        name = options.subscription_name or default_subscription_name(sink.application_name)
        check_subscription_name(name)
        self._subscription_name = name
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._client = self._make_client()
        admin = admin_client(options, self._credential, self._loop)
        self._provisioner = Provisioner(admin, options, name)
        try:
            await self._provisioner.ensure_topic()
            await self._provisioner.ensure_subscription(sink.instance_id)
            self._sender, self._receiver = await asyncio.gather(
                self._open_sender(), self._open_receiver()
            )
        except BaseException as exc:
            await self._close_all()
            self._loop = None  # start may be tried again
            if isinstance(exc, ServiceBusConfigurationError | ServiceBusStartError):
                raise
            if not isinstance(exc, Exception):
                raise
            raise ServiceBusStartError(
                f"could not start the Service Bus transport on topic {options.topic!r} "
                f"(subscription {name!r}): {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            self._accepting = True
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="servicebus-send"),
            asyncio.create_task(self._receive_loop(), name="servicebus-receive"),
        ]
        _log.info("Service Bus transport started: topic %r, subscription %r", options.topic, name)
        sink.connection_changed(ConnectionState.CONNECTED)

    async def stop(self) -> None:
        """Flush queued messages within ``stop_timeout``, close handlers, delete the subscription."""
        with self._lock:
            self._accepting = False
        if not self._tasks:
            await self._close_all()
            return
        unsent = await self._flush(self.options.stop_timeout)
        if unsent:
            _log.warning(
                "Service Bus transport stopped with %d message(s) unsent after %.1f s",
                unsent,
                self.options.stop_timeout,
            )
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        _, running = await asyncio.wait(self._tasks, timeout=_CANCEL_GRACE)
        if running:  # the SDK can swallow a cancel inside a receive: closing ends it
            await self._close_receiver()
            await asyncio.wait(running, timeout=_CLOSE_TIMEOUT)
        self._tasks = []
        await self._settle_unsettled_at_stop()
        await asyncio.gather(self._close_sender(), self._close_receiver())
        if self.options.delete_subscription_on_stop and self._provisioner is not None:
            try:
                await self._provisioner.delete_subscription()
            except Exception as exc:
                _log.warning(
                    "could not delete Service Bus subscription %r (AutoDeleteOnIdle will): %s",
                    self._subscription_name,
                    exc,
                )
        await self._close_all()
        _log.info("Service Bus transport stopped (subscription %r)", self._subscription_name)

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
                f"queued. Last error: {self._send_error}"
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

    async def _flush(self, deadline: float) -> int:
        """Wait until the queue is sent or `deadline` seconds pass; the number left unsent."""
        assert self._drained is not None
        with self._lock:
            if not self._queue:
                return 0
            self._drained.clear()
        self._wake()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), deadline)
        with self._lock:
            return len(self._queue)

    async def _send_loop(self) -> None:
        assert self._wakeup is not None and self._drained is not None
        backoff = Backoff(
            self.options.reconnect_initial_backoff, self.options.reconnect_max_backoff, self._random
        )
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            with self._lock:
                self._wake_pending = False
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
                    self._send_down_since = None

    async def _send_batch(
        self, sender: ServiceBusSender, pending: Sequence[TransportMessage]
    ) -> int:
        """Send the longest prefix of `pending` that fits one batch; how many were sent."""
        if len(pending) == 1:  # a lone message skips building a batch (latency)
            try:
                await sender.send_messages(self._to_service_bus(pending[0]))
            except MessageSizeExceededError as exc:
                _log.error("dropping message %s: %s", pending[0].message_id, exc)
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
            _log.error(
                "dropping message %s: %d bytes do not fit a Service Bus batch (%d bytes max)",
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
        self._send_error = f"{type(exc).__name__}: {exc}"
        if self._send_down_since is None:
            self._send_down_since = self._clock()
            _log.warning(
                "Service Bus send failed (%s); %d message(s) kept queued, retrying with backoff",
                self._send_error,
                len(self._queue),
            )
        else:
            _log.debug("Service Bus send failed again: %s", self._send_error)

    # -- receiving -------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        # Every receiver call happens here, one at a time: a PEEK_LOCK settlement reads the
        # connection for its outcome, so it must not run beside a receive. One message per
        # receive call: the SDK serves it from the prefetch buffer at once, while a larger count
        # keeps pulling for up to 0.2 s after a first message. Dispatch runs meanwhile: each
        # message is settled on a later turn, once its outcome future has resolved.
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
                    await self._reconnect_receiver()
                receiver = self._receiver
                assert receiver is not None
                settled = await self._settle_ready(receiver)
                if len(unsettled) >= self.options.prefetch_count:
                    await asyncio.wait(
                        [outcome for _, outcome in unsettled],
                        timeout=self.options.receive_wait,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    continue
                wait = poll if unsettled else self.options.receive_wait
                messages = await receiver.receive_messages(max_message_count=1, max_wait_time=wait)
                for message in messages:
                    unsettled.append((message, self._deliver(message)))
                # a slow handler: poll for its outcome less and less often
                poll = _SETTLE_POLL if messages or settled else min(poll * 2, _SETTLE_POLL_MAX)
                backoff.reset()
                if time.monotonic() - checked_at >= self.options.subscription_check_interval:
                    checked_at = time.monotonic()
                    await self._check_subscription()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    return
                self._on_receive_failure(exc)
                await self._close_receiver()
                await asyncio.sleep(backoff.next_delay())

    async def _settle_ready(self, receiver: ServiceBusReceiver) -> int:
        """Settle every message whose local dispatch has finished; how many there were."""
        unsettled = self._unsettled
        if not unsettled or not any(outcome.done() for _, outcome in unsettled):
            return 0
        ready = [item for item in unsettled if item[1].done()]
        unsettled[:] = [item for item in unsettled if not item[1].done()]
        for message, outcome in ready:
            await self._settle(receiver, message, outcome)
        return len(ready)

    async def _settle_unsettled_at_stop(self) -> None:
        """At stop: let dispatched messages finish (bounded), then settle them."""
        receiver, unsettled = self._receiver, self._unsettled
        if receiver is None or not unsettled:
            return
        await asyncio.wait([outcome for _, outcome in unsettled], timeout=_CLOSE_TIMEOUT)
        await self._settle_ready(receiver)

    async def _check_subscription(self) -> None:
        """Raise `SubscriptionVanishedError` if the subscription was deleted under us."""
        assert self._provisioner is not None
        if not await self._provisioner.subscription_exists():
            raise SubscriptionVanishedError(
                f"Service Bus subscription {self._subscription_name!r} no longer exists"
            )

    def _on_receive_failure(self, exc: Exception) -> None:
        if not self._receive_down:
            self._receive_down = True
            _log.warning(
                "Service Bus receive failed (%s: %s); reconnecting with backoff",
                type(exc).__name__,
                exc,
            )
            assert self._sink is not None
            self._sink.connection_changed(ConnectionState.DISCONNECTED)
        else:
            _log.debug("Service Bus reconnect failed again: %s: %s", type(exc).__name__, exc)

    async def _reconnect_receiver(self) -> None:
        assert self._provisioner is not None and self._sink is not None
        recreated = False
        if not await self._provisioner.subscription_exists():
            await self._provisioner.ensure_topic()
            recreated = await self._provisioner.ensure_subscription(self._sink.instance_id)
        self._receiver = await self._open_receiver()
        was_down, self._receive_down = self._receive_down, False
        if recreated:
            _log.warning(
                "Service Bus subscription %r had vanished and was recreated: messages sent "
                "meanwhile are lost",
                self._subscription_name,
            )
            self._sink.connection_changed(ConnectionState.SUBSCRIPTION_RECREATED)
        elif was_down:
            _log.info("Service Bus receiver reconnected")
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
                rejection = _delivery_failed(message, exc)
        outcome: asyncio.Future[Rejection | None] = asyncio.get_running_loop().create_future()
        outcome.set_result(rejection)
        return outcome

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
            rejection = _delivery_failed(message, exc)
        try:
            if rejection is None:
                await receiver.complete_message(message)
            else:
                _log.info(
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

    async def _close_all(self) -> None:
        await asyncio.gather(self._close_sender(), self._close_receiver())
        if self._provisioner is not None:
            self._provisioner.close()
        client, self._client = self._client, None
        if client is not None:
            await _close_quietly(client)
        if self._owns_credential and self._credential is not None:
            await _close_quietly(self._credential)


def _delivery_failed(message: ServiceBusReceivedMessage, exc: Exception) -> Rejection:
    """The sink failed (its bug): log it; the message is dead-lettered and receiving goes on."""
    _log.error("delivering Service Bus message %s failed", message.message_id, exc_info=exc)
    return Rejection("delivery_failed", f"{type(exc).__name__}: {exc}")


def _body_bytes(message: ServiceBusReceivedMessage) -> bytes | None:
    """The message body as bytes, or None when it is not binary data (an AMQP value)."""
    if message.body_type == AmqpMessageBodyType.DATA:
        return b"".join(message.body)
    body = message.body
    return body if isinstance(body, bytes) else None


_Handler = TypeVar("_Handler", ServiceBusSender, ServiceBusReceiver)


async def _opened(handler: _Handler) -> _Handler:
    """Open `handler` (about half a second); close it again if opening fails."""
    try:
        await handler.__aenter__()
    except BaseException:
        await _close_quietly(handler)
        raise
    return handler


async def _close_quietly(closeable: Any) -> None:
    try:
        await asyncio.wait_for(closeable.close(), _CLOSE_TIMEOUT)
    except Exception as exc:
        _log.debug("closing %s failed: %s", type(closeable).__name__, exc)
