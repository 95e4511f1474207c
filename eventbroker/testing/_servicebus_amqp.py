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
from ._servicebus_frames import RepairingTransport
from ._servicebus_state import (
    BrokerState,
    Entity,
    Entry,
    MessageNotFound,
    Session,
    SessionCannotBeLocked,
    SessionLockLost,
    SessionRequired,
    StateError,
    Topic,
)

__all__ = ["MAX_MESSAGE_SIZE", "AmqpBroker"]

_log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 256 * 1024  # Standard tier
_PUBLISH_CREDIT = 1000
_REQUEST_CREDIT = 100
_TICK = 0.05
_LOCK_LOST = "com.microsoft:message-lock-lost"
_LOCK_LOST_TEXT = (
    "The lock supplied is invalid. Either the lock expired, or the message has already been "
    "removed from the queue."
)
_NOT_FOUND = "amqp:not-found"
_NOT_ALLOWED = "amqp:not-allowed"
_TIMEOUT = "com.microsoft:timeout"
_CALL_EVENT = "loopback_call"
_SESSION_FILTER = "com.microsoft:session-filter"
_SESSION_LOCKED_UNTIL = "com.microsoft:locked-until-utc"
_LINK_TIMEOUT = "com.microsoft:timeout"
_ACCEPT_SESSION_TIMEOUT = 60.0  # when the receiver gives none, as Service Bus
_NO_SESSION = (
    "No session with messages became available in time for the receiver of the next "
    "available session."
)
_DOTNET_EPOCH_TICKS = 621355968000000000  # 0001-01-01 to 1970-01-01 in 100 ns ticks
_CONDITIONS: dict[type[StateError], tuple[int, str]] = {
    MessageNotFound: (404, "com.microsoft:message-not-found"),
    SessionLockLost: (410, "com.microsoft:session-lock-lost"),
    SessionCannotBeLocked: (410, "com.microsoft:session-cannot-be-locked"),
    SessionRequired: (400, "com.microsoft:argument-error"),
}

_OPERATION = "operation"
_DISPOSITIONS = {
    "completed": "complete",
    "abandoned": "abandon",
    "suspended": "dead-letter",
    "defered": "defer",  # sic: the SDK's (and Service Bus') spelling
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
        self._waiting: dict[Any, float] = {}  # session receivers waiting for a session: deadline
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
        self.state.activate_scheduled(now)
        for entity, holder in self.state.expire_session_locks(now):
            self._detach(
                holder,
                "com.microsoft:session-lock-lost",
                f"The session lock of a session of '{entity.path}' expired; accept it again.",
            )
        for link, deadline in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[link]
                self._no_session(link, now)
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
    def on_connection_bound(self, event: Any) -> None:
        """Put `RepairingTransport` between the socket and proton (see _servicebus_frames)."""
        selectable: Any = getattr(event.transport, "_selectable", None)
        current = getattr(selectable, "_transport", None)
        if current is not None and not isinstance(current, RepairingTransport):
            selectable._transport = RepairingTransport(current)

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
        self._refuse_link(
            link,
            _NOT_FOUND,
            f"The messaging entity '{path}' could not be found. "
            "Create it first (LoopbackServiceBus.create_topic / create_subscription, "
            "or the administration client).",
        )

    def _refuse_link(self, link: Any, condition: str, description: str) -> None:
        link.open()
        self._detach(link, condition, description)
        _log.info("refused link %r: %s", link.name, description)

    def _detach(self, link: Any, condition: str, description: str) -> None:
        """Close ``link`` with an error, as Service Bus detaches a link it ends."""
        if getattr(link, "role", None) == "consume":
            self._drop_consumer(link)
        if link.state & Endpoint.LOCAL_CLOSED:
            return
        link.condition = _error(condition, description)
        link.close()

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
            link.entity = entity  # a topic's takes schedule-message and cancel-scheduled-message
        elif getattr(link.remote_target, "type", None) == 3:  # PN_COORDINATOR: transactions
            self._refuse_link(
                link,
                "amqp:not-implemented",
                "The loopback broker does not implement transactions (a coordinator link).",
            )
            return
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
        link.sb_session = None
        if link.remote_snd_settle_mode == Link.SND_SETTLED:
            link.snd_settle_mode = Link.SND_SETTLED
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        filters = _source_filters(link)
        if _SESSION_FILTER in filters:
            if not entity.requires_session:
                self._refuse_link(
                    link,
                    _NOT_ALLOWED,
                    f"It is not possible for an entity that does not require sessions "
                    f"('{entity.path}') to create a session receiver.",
                )
                return
            session_id = filters[_SESSION_FILTER]
            self._accept_session(link, None if session_id is None else str(session_id))
            return
        if entity.requires_session:
            self._refuse_link(
                link,
                _NOT_ALLOWED,
                f"It is not possible for an entity that requires sessions ('{entity.path}') to "
                "create a receiver without a session: give a session id, or "
                "NEXT_AVAILABLE_SESSION.",
            )
            return
        self._start_consuming(link)

    def _start_consuming(self, link: Any) -> None:
        entity: Entity = link.entity
        link.open()
        entity.consumers.append(link)
        entity.last_activity = self.state.clock()
        link.connection.consumer_links.append(link)

    def _accept_session(self, link: Any, session_id: str | None) -> None:
        """Lock a session for a session receiver and open its link; with no session free
        yet, leave the attach unanswered until one is (or until its timeout)."""
        entity: Entity = link.entity
        now = self.state.clock()
        try:
            session = self.state.accept_session(entity, session_id, link, now)
        except SessionCannotBeLocked as exc:
            self._refuse_link(link, "com.microsoft:session-cannot-be-locked", str(exc))
            return
        if session is None:
            timeout = _ACCEPT_SESSION_TIMEOUT
            properties = link.remote_properties
            if isinstance(properties, dict) and properties.get(_LINK_TIMEOUT) is not None:
                timeout = int(properties[_LINK_TIMEOUT]) / 1000.0
            self._waiting[link] = now + timeout
            return
        self._waiting.pop(link, None)
        link.sb_session = session
        link.source.filter.clear()
        link.source.filter.put_dict({symbol(_SESSION_FILTER): session.id})
        link.properties = {symbol(_SESSION_LOCKED_UNTIL): _ticks(session.locked_until)}
        self._start_consuming(link)
        self._deliver(entity, link, session)

    def _no_session(self, link: Any, now: float) -> None:
        """Answer a receiver for the next available session that found none in time: attach
        (with an empty session id), then detach with ``com.microsoft:timeout``.

        The SDK reads one frame at a time and counts the receiver open after the attach, so
        it meets the timeout on its first operation: receiving raises the detach's
        `OperationTimeoutError`, and a session request (set-session-state, ...) naming that
        link is answered with the same condition.
        """
        link.source.filter.clear()
        link.source.filter.put_dict({symbol(_SESSION_FILTER): ""})
        # a lock time ahead, so that the SDK sends its first request and meets the timeout
        lock_duration = link.entity.properties.lock_duration
        link.properties = {symbol(_SESSION_LOCKED_UNTIL): _ticks(now + lock_duration)}
        link.open()
        timed_out = getattr(link.connection, "sessionless_links", None)
        if timed_out is None:
            timed_out = link.connection.sessionless_links = set()
        timed_out.add(link.name)
        self._detach(link, _TIMEOUT, _NO_SESSION)

    def _offer_sessions(self, entity: Entity) -> None:
        """Give sessions with messages to receivers waiting for the next available one."""
        for link in [w for w in self._waiting if w.entity is entity]:
            if link not in self._waiting:
                continue  # answered meanwhile
            if link.state & Endpoint.REMOTE_CLOSED:
                del self._waiting[link]
                continue
            self._accept_session(link, None)
            if link in self._waiting:
                return  # no session left

    def _detach_consumers(self, entity: Entity) -> None:
        """Detach every receiver of a deleted entity with amqp:not-found, as Service Bus does."""
        for link in list(entity.consumers):
            self._drop_consumer(link)
            link.condition = _error(
                _NOT_FOUND, f"The messaging entity '{entity.path}' was deleted."
            )
            link.close()

    def _drop_consumer(self, link: Any) -> None:
        self._waiting.pop(link, None)
        entity = getattr(link, "entity", None)
        if isinstance(entity, Entity) and link in entity.consumers:
            entity.consumers.remove(link)
            entity.last_activity = self.state.clock()
        session: Session | None = getattr(link, "sb_session", None)
        if session is not None and isinstance(entity, Entity):
            link.sb_session = None
            if session.holder == link:
                self.state.release_session(entity, session, self.state.clock())

    def _forget_connection(self, conn: Any) -> None:
        self._connections.discard(conn)
        for link in getattr(conn, "consumer_links", ()):
            self._drop_consumer(link)
        conn.consumer_links = []
        for link in [w for w in self._waiting if w.connection == conn]:
            del self._waiting[link]

    @_guarded
    def on_link_remote_close(self, event: Any) -> None:
        link = event.link
        if getattr(link, "role", None) == "consume":
            self._drop_consumer(link)
        if link.state & Endpoint.LOCAL_UNINIT:  # a session receiver that gave up waiting
            link.open()
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
            delivery.local.condition = _error("amqp:decode-error", str(exc))
            delivery.update(Delivery.REJECTED)
        except _Refused as exc:
            delivery.local.condition = _error(exc.condition, exc.description)
            delivery.update(Delivery.REJECTED)
        except Exception as exc:  # a request proton cannot decode, or a bug: answer, go on
            _log.warning("loopback Service Bus rejected a %s transfer: %r", role, exc)
            delivery.local.condition = _error("amqp:internal-error", repr(exc))
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
        try:
            self.state.publish(target, messages)
        except SessionRequired as exc:
            raise _Refused(_CONDITIONS[SessionRequired][1], str(exc)) from None

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
        target: Entity | Topic = link.entity
        properties: dict[str, Any] = dict(request.properties or {})
        operation = str(properties.get(_OPERATION, ""))
        body: dict[Any, Any] = request.body if isinstance(request.body, dict) else {}
        handler = _OPERATIONS.get(operation)
        status, description, condition = 200, "OK", None
        value: dict[str, Any] | None = None
        if target.deleted:
            status, description, condition = 404, "The messaging entity was not found.", _NOT_FOUND
        elif handler is None:
            status, condition = 501, "amqp:not-implemented"
            description = f"The loopback broker does not implement {operation!r}."
        elif "session-id" in body and str(properties.get("associated-link-name", "")) in getattr(
            link.connection, "sessionless_links", ()
        ):
            status, condition, description = 408, _TIMEOUT, _NO_SESSION
        elif isinstance(target, Topic) and operation not in _TOPIC_OPERATIONS:
            status, condition = 400, _NOT_ALLOWED
            description = f"{operation!r} needs a queue or subscription, not topic {target.name!r}."
        else:
            try:
                reply = handler(self, link, target, body)
            except StateError as exc:
                status, condition = _CONDITIONS.get(type(exc), (400, "amqp:invalid-field"))
                description = str(exc)
            except _Refused as exc:
                status, condition, description = exc.status, exc.condition, exc.description
            else:
                if reply is None:
                    status, description = 204, "No messages."
                else:
                    value = reply or None
        answer: dict[str, Any] = {"statusCode": status, "statusDescription": description}
        if condition is not None:
            answer["errorCondition"] = symbol(condition)
        self._reply(
            link, str(request.reply_to or ""), request, Message(properties=answer, body=value)
        )

    # Each operation returns the response body: a dict (empty for none), or None for 204.
    def _op_renew_lock(self, link: Any, entity: Entity, body: dict[Any, Any]) -> dict[str, Any]:
        now = self.state.clock()
        expirations = []
        for token in _tokens(body):
            until = self.state.renew(entity, token, now)
            if until is None:
                raise _Refused(*_lock_lost(entity), 410)
            expirations.append(timestamp(int(until * 1000)))
        return {"expirations": Array(Data.NULL, Data.TIMESTAMP, *expirations)}

    def _op_update_disposition(
        self, link: Any, entity: Entity, body: dict[Any, Any]
    ) -> dict[str, Any]:
        outcome = _DISPOSITIONS.get(str(body.get("disposition-status", "")))
        if outcome is None:
            raise _Refused(
                "amqp:invalid-field",
                f"Unknown disposition-status {body.get('disposition-status')!r}.",
                400,
            )
        self._session_of(link, entity, body)
        for token in _tokens(body):
            if not self.state.settle(
                entity,
                token,
                outcome,
                reason=_opt_str(body.get("deadletter-reason")),
                description=_opt_str(body.get("deadletter-description")),
            ):
                raise _Refused(*_lock_lost(entity), 410)
        return {}

    def _op_peek(self, link: Any, entity: Entity, body: dict[Any, Any]) -> dict[str, Any] | None:
        start = int(body.get("from-sequence-number", 0) or 0)
        count = int(body.get("message-count", 1) or 1)
        session_id = _opt_str(body.get("session-id"))
        entries = self.state.peek(entity, start, count, self.state.clock(), session_id)
        if not entries:
            return None
        return {"messages": [{"message": e.encode(locked=False)} for e in entries]}

    def _op_receive_deferred(
        self, link: Any, entity: Entity, body: dict[Any, Any]
    ) -> dict[str, Any]:
        session = self._session_of(link, entity, body)
        numbers = _longs(body.get("sequence-numbers"))
        lock = int(body.get("receiver-settle-mode", 1) or 0) == 1  # second: peek-lock
        taken = self.state.receive_deferred(
            entity,
            numbers,
            self.state.clock(),
            lock=lock,
            session_id=None if session is None else session.id,
        )
        messages = []
        for entry, token in taken:
            item: dict[str, Any] = {"message": entry.encode(locked=token is not None)}
            if token is not None:
                item["lock-token"] = token
            messages.append(item)
        return {"messages": messages}

    def _op_schedule(
        self, link: Any, target: Entity | Topic, body: dict[Any, Any]
    ) -> dict[str, Any]:
        raw = body.get("messages") or []
        messages = []
        for item in raw if isinstance(raw, list) else []:
            encoded = item.get("message") if isinstance(item, dict) else None
            if not isinstance(encoded, bytes | memoryview | bytearray):
                raise _Refused(
                    "amqp:invalid-field", "each scheduled message needs 'message' bytes", 400
                )
            if len(encoded) > MAX_MESSAGE_SIZE:
                raise _Refused(
                    "amqp:link:message-size-exceeded",
                    f"The message is {len(encoded)} bytes; the limit is {MAX_MESSAGE_SIZE}.",
                    400,
                )
            messages.append(parse_message(bytes(encoded)))
        numbers = self.state.schedule(target, messages, self.state.clock())
        return {"sequence-numbers": Array(Data.NULL, Data.LONG, *numbers)}

    def _op_cancel_scheduled(
        self, link: Any, target: Entity | Topic, body: dict[Any, Any]
    ) -> dict[str, Any]:
        self.state.cancel_scheduled(target, _longs(body.get("sequence-numbers")))
        return {}

    def _op_renew_session_lock(
        self, link: Any, entity: Entity, body: dict[Any, Any]
    ) -> dict[str, Any]:
        session = self._required_session(link, entity, body)
        until = self.state.renew_session(entity, session, self.state.clock())
        return {"expiration": timestamp(int(until * 1000))}

    def _op_get_session_state(
        self, link: Any, entity: Entity, body: dict[Any, Any]
    ) -> dict[str, Any]:
        session = self._required_session(link, entity, body)
        return {"session-state": session.state}

    def _op_set_session_state(
        self, link: Any, entity: Entity, body: dict[Any, Any]
    ) -> dict[str, Any]:
        session = self._required_session(link, entity, body)
        state = body.get("session-state")
        if state is not None and not isinstance(state, bytes | memoryview | bytearray):
            raise _Refused("amqp:invalid-field", "session-state must be binary or null", 400)
        self.state.set_session_state(
            session, None if state is None else bytes(state), self.state.clock()
        )
        return {}

    def _op_list_sessions(
        self, link: Any, entity: Entity, body: dict[Any, Any]
    ) -> dict[str, Any] | None:
        if not entity.requires_session:
            raise _Refused(
                _NOT_ALLOWED, f"'{entity.path}' does not require sessions: it has none.", 400
            )
        updated = body.get("last-updated-time")
        updated_ms = int(updated) if updated is not None else _MAX_DATETIME_MS
        skip = int(body.get("skip", 0) or 0)
        top = int(body.get("top", 100) or 100)
        ids = self.state.list_sessions(
            entity, None if updated_ms >= _MAX_DATETIME_MS else updated_ms / 1000.0, skip, top
        )
        if not ids:
            return None
        return {"skip": skip + len(ids), "sessions-ids": ids}

    def _session_of(self, link: Any, entity: Entity, body: dict[Any, Any]) -> Session | None:
        """The session a request names (``session-id``), which a receiver on the request's
        connection must hold; None when it names none."""
        session_id = _opt_str(body.get("session-id"))
        if session_id is None:
            return None
        conn = link.connection
        return self.state.held_session(
            entity,
            session_id,
            lambda holder: getattr(holder, "connection", None) == conn,
            self.state.clock(),
        )

    def _required_session(self, link: Any, entity: Entity, body: dict[Any, Any]) -> Session:
        session = self._session_of(link, entity, body)
        if session is None:
            raise _Refused("amqp:invalid-field", "the request needs a 'session-id'", 400)
        return session

    def _pump(self, entity: Entity) -> None:
        """Deliver available messages to the entity's receivers, round robin by credit (to
        the receiver holding each session, in an entity that requires sessions)."""
        if entity.requires_session:
            for link in list(entity.consumers):
                session = link.sb_session
                if session is not None:
                    self._deliver(entity, link, session)
            if self._waiting:
                self._offer_sessions(entity)
            return
        consumers = entity.consumers
        if not consumers or not entity.available:
            return
        state = self.state
        now = state.clock()
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
            self._send(entity, link, entry, now)

    def _deliver(self, entity: Entity, link: Any, session: Session) -> None:
        now = self.state.clock()
        while link.credit > 0 and session.holder == link:
            entry = self.state.next_available(entity, now, session)
            if entry is None:
                return
            self._send(entity, link, entry, now)

    def _send(self, entity: Entity, link: Any, entry: Entry, now: float) -> None:
        state = self.state
        entity.last_activity = now
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
            if delivery.remote.undeliverable:
                outcome = "defer"  # the SDK's defer: modified, undeliverable here
            else:
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
            delivery.local.condition = _error(*_lock_lost(entity))
            delivery.update(Delivery.REJECTED)
        delivery.settle()


class _Refused(Exception):
    def __init__(self, condition: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description
        self.status = status


_MAX_DATETIME_MS = 253402300800000  # DateTime.MaxValue: "no last-updated-time filter"
_TOPIC_OPERATIONS = frozenset(
    {"com.microsoft:schedule-message", "com.microsoft:cancel-scheduled-message"}
)
_OPERATIONS: dict[str, Callable[..., dict[str, Any] | None]] = {
    "com.microsoft:renew-lock": AmqpBroker._op_renew_lock,
    "com.microsoft:update-disposition": AmqpBroker._op_update_disposition,
    "com.microsoft:peek-message": AmqpBroker._op_peek,
    "com.microsoft:receive-by-sequence-number": AmqpBroker._op_receive_deferred,
    "com.microsoft:schedule-message": AmqpBroker._op_schedule,
    "com.microsoft:cancel-scheduled-message": AmqpBroker._op_cancel_scheduled,
    "com.microsoft:renew-session-lock": AmqpBroker._op_renew_session_lock,
    "com.microsoft:get-session-state": AmqpBroker._op_get_session_state,
    "com.microsoft:set-session-state": AmqpBroker._op_set_session_state,
    "com.microsoft:get-message-sessions": AmqpBroker._op_list_sessions,
}


_ERROR_INFO: Any = {symbol("com.microsoft:tracking-id"): "loopback"}


def _lock_lost(entity: Entity) -> tuple[str, str]:
    """The condition of a lost lock: a session's, in an entity that requires sessions."""
    if entity.requires_session:
        return (
            "com.microsoft:session-lock-lost",
            "The session lock was lost (it expired, or its receiver closed): accept the "
            "session again.",
        )
    return _LOCK_LOST, _LOCK_LOST_TEXT


def _error(condition: str, description: str) -> Condition:
    """An AMQP error with all three fields: the SDK reads ``info`` by position and, on a
    rejected send, waits forever when it is left out (proton leaves out an empty one).
    Service Bus puts a tracking id there."""
    return Condition(condition, description, _ERROR_INFO)


def _ticks(moment: float) -> int:
    """``moment`` (seconds since the epoch) in .NET ticks, as Service Bus writes link times."""
    return int(moment * 10_000_000) + _DOTNET_EPOCH_TICKS


def _source_filters(link: Any) -> dict[str, Any]:
    """The filter map a receiver attached with (symbol keys as str); {} when none."""
    data = link.remote_source.filter
    data.rewind()
    if not data.next():
        return {}
    value = data.get_object()
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _longs(raw: Any) -> list[int]:
    items = raw.elements if isinstance(raw, Array) else (raw or [])
    return [int(item) for item in items]


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
