"""The AMQP 1.0 side of the loopback Service Bus broker (python-qpid-proton, one reactor thread)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit

from proton import (
    Array,
    Condition,
    Data,
    Delivery,
    Endpoint,
    Handler,
    Link,
    Message,
    symbol,
    timestamp,
)
from proton.reactor import ApplicationEvent, Container, EventInjector

from ._servicebus_codec import AmqpDecodeError, parse_message, split_batch
from ._servicebus_state import BrokerState, Entity, Topic

__all__ = ["MAX_MESSAGE_SIZE", "AmqpBroker"]

_log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 256 * 1024  # Standard tier
_PUBLISH_CREDIT = 1000
_REQUEST_CREDIT = 100
_TICK = 0.05
_LOCK_LOST = "com.microsoft:message-lock-lost"
_NOT_FOUND = "amqp:not-found"
_CALL_EVENT = "loopback_call"

_OPERATION = "operation"
_DISPOSITIONS = {
    "completed": "complete",
    "abandoned": "abandon",
    "suspended": "dead-letter",
    "defered": "abandon",
}


_F = TypeVar("_F", bound=Callable[..., None])


def _guarded(method: _F) -> _F:
    """Log an event handler's exception instead of letting it end the reactor."""

    @functools.wraps(method)
    def wrapper(self: Any, event: Any) -> None:
        try:
            method(self, event)
        except Exception:
            _log.exception("loopback Service Bus: %s failed", method.__name__)

    return wrapper  # type: ignore[return-value]


def _address_path(address: str | None) -> str:
    """The entity path of a link address: ``amqps://host:port/a/b`` and ``/a/b`` give ``a/b``."""
    if not address:
        return ""
    if "://" in address:
        address = urlsplit(address).path
    return address.strip("/")


class AmqpBroker(Handler):
    """Proton event handler: owns the listener, every connection and the broker state."""

    def __init__(
        self,
        state: BrokerState,
        host: str,
        port: int,
        check_token: Callable[[str], str | None] = lambda token: None,
    ) -> None:
        super().__init__()
        self.state = state
        self._check_token = check_token
        state.on_available = self._pump
        state.on_deleted = self._detach_consumers
        self.host = host
        self.port = port
        self.container = Container(self)
        self.injector = EventInjector()
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._connections: set[Any] = set()
        self._acceptor: Any = None
        self._tick_task: Any = None
        self._tag = 0
        self._last_idle_check = 0.0
        self.ready: Future[int] = Future()

    # ---- thread plumbing -----------------------------------------------------------------
    def run(self) -> None:
        """Run the reactor until :meth:`shutdown` (call on the broker's own thread)."""
        try:
            self.container.run()
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            raise
        finally:
            for fd in self.injector.pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the reactor thread; the future holds its result."""
        future: Future[Any] = Future()
        self._calls.put((fn, future))
        self.injector.trigger(ApplicationEvent(_CALL_EVENT))
        return future

    def on_loopback_call(self, _event: Any) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def on_reactor_init(self, event: Any) -> None:
        self.container.selectable(self.injector)
        try:
            self.listen()
        except OSError as exc:
            self.ready.set_exception(exc)
            self.container.stop()
            return
        self._tick_task = self.container.schedule(_TICK, self)
        self.ready.set_result(self.port)

    def listen(self) -> None:
        if self._acceptor is not None:
            return
        self._acceptor = self.container.listen(f"{self.host}:{self.port}")
        self.port = self._acceptor._selectable.getsockname()[1]
        _log.info("loopback Service Bus listening on %s:%s", self.host, self.port)

    def close_listener(self) -> None:
        """Close the listening socket now (proton would close it a few events later)."""
        if self._acceptor is not None:
            selectable = self._acceptor._selectable
            self._acceptor.close()
            selectable.close()
            self._acceptor = None

    def cut_connections(self) -> int:
        """Drop every connection at the TCP level, as a network failure would."""
        count = 0
        for conn in list(self._connections):
            self._forget_connection(conn)
            transport = conn.transport
            if transport is None:
                continue
            selectable = getattr(transport, "_selectable", None)
            transport.close_head()
            transport.close_tail()
            if selectable is not None:
                selectable.terminate()
                selectable._transport = None
                transport._selectable = None
                selectable.update()
            count += 1
        return count

    def shutdown(self) -> None:
        """Close the listener and every connection, then stop the reactor."""
        self.close_listener()
        self.cut_connections()
        if self._tick_task is not None:
            self._tick_task.cancel()
        self.injector.close()
        self.container.stop()

    @_guarded
    def on_timer_task(self, _event: Any) -> None:
        self._tick_task = self.container.schedule(_TICK, self)
        now = self.state.clock()
        self.state.expire_locks(now)
        if abs(now - self._last_idle_check) >= 1.0:
            self._last_idle_check = now
            self.state.drop_expired(now)
            gone = self.state.expire_idle(now)
            for path in gone:
                _log.info("deleted idle subscription %s", path)

    # ---- endpoints -----------------------------------------------------------------------
    @_guarded
    def on_connection_init(self, event: Any) -> None:
        conn = event.connection
        conn.consumer_links = []
        self._connections.add(conn)  # from accept on, so that stop() closes every socket

    @_guarded
    def on_connection_remote_open(self, event: Any) -> None:
        conn = event.connection
        _log.debug("connection opened (%d open)", len(self._connections))
        if conn.state & Endpoint.LOCAL_UNINIT:
            conn.open()

    @_guarded
    def on_session_remote_open(self, event: Any) -> None:
        session = event.session
        if session.state & Endpoint.LOCAL_UNINIT:
            session.open()

    @_guarded
    def on_link_remote_open(self, event: Any) -> None:
        link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if link.is_sender:
            self._open_outgoing(link)
        else:
            self._open_incoming(link)

    def _refuse(self, link: Any, path: str) -> None:
        link.open()
        link.condition = Condition(
            _NOT_FOUND,
            f"The messaging entity '{path}' could not be found. "
            "Create it first (LoopbackServiceBus.create_topic / create_subscription, "
            "or the administration client).",
        )
        link.close()
        _log.info("refused link %r: unknown entity %r", link.name, path)

    def _open_incoming(self, link: Any) -> None:
        """A client sender: publishes to an entity, or sends $cbs / $management requests."""
        path = _address_path(link.remote_target.address)
        if path == "$cbs":
            link.role = "cbs"
        elif path.lower().endswith("/$management"):
            entity = self.state.resolve(path[: -len("/$management")])
            if entity is None:
                self._refuse(link, path)
                return
            link.role = "management"
            link.entity = entity
        else:
            target = self.state.resolve(path)
            if target is None or (isinstance(target, Entity) and target.dead_letter is None):
                self._refuse(link, path)
                return
            link.role = "publish"
            link.entity = target
            link.max_message_size = MAX_MESSAGE_SIZE
        link.open()
        link.flow(_PUBLISH_CREDIT if link.role == "publish" else _REQUEST_CREDIT)

    def _open_outgoing(self, link: Any) -> None:
        """A client receiver: consumes an entity, or takes $cbs / $management replies."""
        path = _address_path(link.remote_source.address)
        conn = link.connection
        if path == "$cbs" or path.lower().endswith("/$management"):
            link.role = "reply"
            replies = getattr(conn, "reply_links", None)
            if replies is None:
                replies = conn.reply_links = {}
            replies[link.remote_target.address or path] = link
            replies[path] = link
            link.open()
            return
        entity = self.state.resolve(path)
        if not isinstance(entity, Entity):
            self._refuse(link, path)
            return
        link.role = "consume"
        link.entity = entity
        if link.remote_snd_settle_mode == Link.SND_SETTLED:
            link.snd_settle_mode = Link.SND_SETTLED
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        link.open()
        entity.consumers.append(link)
        entity.last_activity = self.state.clock()
        conn.consumer_links.append(link)

    def _detach_consumers(self, entity: Entity) -> None:
        """Detach every receiver of a deleted entity with amqp:not-found, as Service Bus does."""
        for link in list(entity.consumers):
            self._drop_consumer(link)
            link.condition = Condition(
                _NOT_FOUND, f"The messaging entity '{entity.path}' was deleted."
            )
            link.close()

    def _drop_consumer(self, link: Any) -> None:
        entity = getattr(link, "entity", None)
        if isinstance(entity, Entity) and link in entity.consumers:
            entity.consumers.remove(link)
            entity.last_activity = self.state.clock()

    def _forget_connection(self, conn: Any) -> None:
        self._connections.discard(conn)
        for link in getattr(conn, "consumer_links", ()):
            self._drop_consumer(link)
        conn.consumer_links = []

    @_guarded
    def on_link_remote_close(self, event: Any) -> None:
        link = event.link
        if getattr(link, "role", None) == "consume":
            self._drop_consumer(link)
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()

    @_guarded
    def on_session_remote_close(self, event: Any) -> None:
        if not event.session.state & Endpoint.LOCAL_CLOSED:
            event.session.close()

    @_guarded
    def on_connection_remote_close(self, event: Any) -> None:
        conn = event.connection
        self._forget_connection(conn)
        if not conn.state & Endpoint.LOCAL_CLOSED:
            conn.close()

    @_guarded
    def on_transport_closed(self, event: Any) -> None:
        conn = event.connection
        if conn is not None:
            self._forget_connection(conn)
            _log.debug("connection closed (%d open)", len(self._connections))

    # ---- deliveries ----------------------------------------------------------------------
    @_guarded
    def on_delivery(self, event: Any) -> None:
        delivery = event.delivery
        link = delivery.link
        if link.is_receiver:
            self._incoming(link, delivery)
        else:
            self._settlement(link, delivery)

    @_guarded
    def on_link_flow(self, event: Any) -> None:
        link = event.link
        if link.is_sender and getattr(link, "role", None) == "consume":
            self._pump(link.entity)
            link.drained()

    def _incoming(self, link: Any, delivery: Any) -> None:
        if delivery.partial:
            return
        data = link.recv(delivery.pending)
        link.advance()
        role = getattr(link, "role", None)
        try:
            if role == "publish":
                self._publish(link, data)
            elif role == "cbs":
                self._cbs(link, data)
            elif role == "management":
                self._management(link, data)
            delivery.update(Delivery.ACCEPTED)
        except AmqpDecodeError as exc:
            delivery.local.condition = Condition("amqp:decode-error", str(exc))
            delivery.update(Delivery.REJECTED)
        except _Refused as exc:
            delivery.local.condition = Condition(exc.condition, exc.description)
            delivery.update(Delivery.REJECTED)
        except Exception as exc:  # a request proton cannot decode, or a bug: answer, go on
            _log.warning("loopback Service Bus rejected a %s transfer: %r", role, exc)
            delivery.local.condition = Condition("amqp:internal-error", repr(exc))
            delivery.update(Delivery.REJECTED)
        delivery.settle()
        full = _PUBLISH_CREDIT if role == "publish" else _REQUEST_CREDIT
        if link.credit < full // 2:
            link.flow(full - link.credit)

    def _publish(self, link: Any, data: bytes) -> None:
        target: Entity | Topic = link.entity
        if getattr(target, "deleted", False) or (
            isinstance(target, Topic) and self.state.topics.get(target.name.lower()) is not target
        ):
            raise _Refused(_NOT_FOUND, f"The messaging entity '{link.target.address}' was deleted.")
        if len(data) > MAX_MESSAGE_SIZE:
            raise _Refused(
                "amqp:link:message-size-exceeded",
                f"The message is {len(data)} bytes; the limit is {MAX_MESSAGE_SIZE}.",
            )
        inner = split_batch(data)
        messages = [parse_message(m) for m in inner] if inner else [parse_message(data)]
        self.state.publish(target, messages)

    def _reply(self, link: Any, key: str, request: Message, reply: Message) -> None:
        replies: dict[str, Any] = getattr(link.connection, "reply_links", {})
        out = replies.get(key)
        if out is None:
            _log.warning("no reply link %r for request %r", key, request.id)
            return
        reply.correlation_id = request.id
        reply.address = key
        self._tag += 1
        delivery = out.delivery(self._tag.to_bytes(8, "big"))
        out.send(reply.encode())
        out.advance()
        delivery.settle()

    def _cbs(self, link: Any, data: bytes) -> None:
        request = Message()
        request.decode(data)
        refused = self._check_token(request.body if isinstance(request.body, str) else "")
        if refused is None:
            status = {"status-code": 202, "status-description": "Accepted"}
        else:
            _log.info("refused a CBS token: %s", refused)
            status = {"status-code": 401, "status-description": refused}
        self._reply(link, "$cbs", request, Message(properties=status))

    def _management(self, link: Any, data: bytes) -> None:
        request = Message()
        request.decode(data)
        entity: Entity | Topic = link.entity
        properties: dict[str, Any] = dict(request.properties or {})
        operation = str(properties.get(_OPERATION, ""))
        body: dict[Any, Any] = request.body if isinstance(request.body, dict) else {}
        status, description, condition = 200, "OK", None
        value: dict[str, Any] | None = None
        if not isinstance(entity, Entity) or entity.deleted:
            status, description, condition = 404, "The messaging entity was not found.", _NOT_FOUND
        elif operation == "com.microsoft:renew-lock":
            now = self.state.clock()
            expirations = []
            for token in _tokens(body):
                until = self.state.renew(entity, token, now)
                if until is None:
                    status, condition = 410, _LOCK_LOST
                    description = "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue."
                    break
                expirations.append(timestamp(int(until * 1000)))
            if condition is None:
                value = {"expirations": Array(Data.NULL, Data.TIMESTAMP, *expirations)}
        elif operation == "com.microsoft:update-disposition":
            outcome = _DISPOSITIONS.get(str(body.get("disposition-status", "")))
            if outcome is None:
                status, condition = 400, "amqp:invalid-field"
                description = f"Unknown disposition-status {body.get('disposition-status')!r}."
            for token in _tokens(body):
                if condition is not None:
                    break
                if not self.state.settle(
                    entity,
                    token,
                    outcome or "abandon",
                    reason=_opt_str(body.get("deadletter-reason")),
                    description=_opt_str(body.get("deadletter-description")),
                ):
                    status, condition = 410, _LOCK_LOST
                    description = "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue."
        elif operation == "com.microsoft:peek-message":
            start = int(body.get("from-sequence-number", 0) or 0)
            count = int(body.get("message-count", 1) or 1)
            entries = self.state.peek(entity, start, count, self.state.clock())
            if entries:
                value = {"messages": [{"message": e.encode(locked=False)} for e in entries]}
            else:
                status, description = 204, "No messages to peek."
        else:
            status, condition = 501, "amqp:not-implemented"
            description = f"The loopback broker does not implement {operation!r}."
        answer: dict[str, Any] = {"statusCode": status, "statusDescription": description}
        if condition is not None:
            answer["errorCondition"] = symbol(condition)
        reply = Message(properties=answer, body=value)
        self._reply(link, str(request.reply_to or ""), request, reply)

    def _pump(self, entity: Entity) -> None:
        """Deliver available messages to the entity's receivers, round robin by credit."""
        consumers = entity.consumers
        if not consumers or not entity.available:
            return
        now = self.state.clock()
        state = self.state
        while entity.available:
            count = len(consumers)
            start = entity.round_robin
            link = None
            for i in range(count):
                candidate = consumers[(start + i) % count]
                if candidate.credit > 0:
                    link = candidate
                    entity.round_robin = (start + i + 1) % count
                    break
            if link is None:
                return
            entry = state.next_available(entity, now)
            if entry is None:
                return
            entity.last_activity = state.clock()
            if link.snd_settle_mode == Link.SND_SETTLED:
                state.remove(entity, entry)
                self._tag += 1
                delivery = link.delivery(self._tag.to_bytes(16, "little"))
                link.send(entry.encode(locked=False))
                link.advance()
                delivery.settle()
            else:
                token = state.lock(entity, entry, now)
                delivery = link.delivery(token.bytes_le)
                delivery.lock_token = token
                link.send(entry.encode(locked=True))
                link.advance()

    def _settlement(self, link: Any, delivery: Any) -> None:
        """A receiver settled a peek-locked message on its link: apply and echo the outcome."""
        remote = delivery.remote_state
        token = getattr(delivery, "lock_token", None)
        if token is None or not remote or remote == Delivery.RECEIVED:
            return
        entity: Entity = link.entity
        reason = description = None
        if remote == Delivery.ACCEPTED:
            outcome = "complete"
        elif remote == Delivery.REJECTED:
            outcome = "dead-letter"
            condition = delivery.remote.condition
            if condition is not None:
                info = condition.info or {}
                reason = _opt_str(info.get("DeadLetterReason"))
                description = _opt_str(info.get("DeadLetterErrorDescription"))
                if description is None:
                    description = condition.description
        elif remote == Delivery.MODIFIED:
            outcome = "abandon" if delivery.remote.failed else "release"
        else:
            outcome = "release"
        done = self.state.settle(entity, token, outcome, reason=reason, description=description)
        if delivery.settled:
            delivery.settle()
            return
        if done:
            if remote == Delivery.MODIFIED:
                delivery.local.failed = delivery.remote.failed
                delivery.local.undeliverable = delivery.remote.undeliverable
            delivery.update(remote)
        else:
            delivery.local.condition = Condition(
                _LOCK_LOST,
                "The lock supplied is invalid. Either the lock expired, or the message has "
                "already been removed from the queue.",
            )
            delivery.update(Delivery.REJECTED)
        delivery.settle()


class _Refused(Exception):
    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description


def _tokens(body: dict[Any, Any]) -> list[uuid.UUID]:
    raw = body.get("lock-tokens")
    items = raw.elements if isinstance(raw, Array) else (raw or [])
    out = []
    for item in items:
        if isinstance(item, uuid.UUID):
            out.append(item)
        elif isinstance(item, bytes) and len(item) == 16:
            out.append(uuid.UUID(bytes=item))
        else:
            out.append(uuid.UUID(str(item)))
    return out


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
