"""A loopback Azure Service Bus broker for tests and local multi-process development.

It speaks the AMQP 1.0 subset the ``azure-servicebus`` SDK uses (sync and ``aio`` clients) and
answers the administration client's ATOM calls on a plain-HTTP port, so the production code
path runs unchanged against it: only the connection string differs.

Run ``python -m eventbroker.testing.servicebus_broker`` to start one and print the
``export EVENTBROKER_SERVICEBUS_...`` lines that point the library at it (with ``--background``
it detaches, so ``eval "$(python -m eventbroker.testing.servicebus_broker --background)"``
works), or use :class:`LoopbackServiceBus` (a context manager) in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import attrs

from cache._settings import INTEGER, NUMBER, read_variable

from ._servicebus_admin import AdminServer
from ._servicebus_admin_client import administration_client
from ._servicebus_amqp import AmqpBroker
from ._servicebus_auth import check_token
from ._servicebus_codec import encode_delivery
from ._servicebus_state import (
    MAX_NAME_LENGTH,
    BrokerState,
    Entity,
    EntityProperties,
    SessionRequired,
)

__all__ = [
    "DeadLetter",
    "EntityProperties",
    "LoopbackServiceBus",
    "ServiceBusEntityError",
    "administration_client",
    "main",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_CALL_TIMEOUT = 10.0
_NOT_DURATIONS = frozenset(
    {"max_delivery_count", "dead_lettering_on_message_expiration", "requires_session"}
)


class ServiceBusEntityError(ValueError):
    """A loopback broker entity is missing, already exists or has an invalid name."""


@attrs.frozen
class DeadLetter:
    """A message in a dead-letter queue, as the broker holds it."""

    body: bytes
    reason: str | None
    description: str | None
    message_id: str | None
    application_properties: dict[str, Any]
    delivery_count: int
    sequence_number: int


def _seconds(value: float | datetime.timedelta) -> float:
    return value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 260 or name.startswith("/") or name.endswith("/"):
        raise ServiceBusEntityError(f"invalid {kind} name {name!r}")
    if kind == "subscription" and (len(name) > MAX_NAME_LENGTH or "/" in name):
        raise ServiceBusEntityError(
            f"invalid subscription name {name!r}: at most {MAX_NAME_LENGTH} characters, no '/'"
        )


class LoopbackServiceBus:
    """An in-process Service Bus broker on loopback (AMQP + an HTTP administration endpoint).

    Every public method is thread-safe: it runs on the broker's reactor thread and waits for
    the result. Durations are seconds (a ``timedelta`` is accepted too).

    ``clock`` (default :func:`time.time`, seconds since the epoch) is the broker's notion of
    now: enqueued times, message expiry, lock expiry and AutoDeleteOnIdle. Tests can pass a
    clock that runs ahead of real time (e.g. ``time.time() + offset``) to expire messages,
    locks and idle subscriptions without sleeping.

    Shared access signatures are checked as Service Bus does, against
    ``shared_access_key_name`` / ``shared_access_key`` (the ones `connection_string` carries):
    a wrong key gets 401 from the admin endpoint and from CBS. Tokens from an azure-identity
    credential cannot be checked and are accepted.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_port: int = 0,
        *,
        lock_duration: float = 60.0,
        max_delivery_count: int = 10,
        clock: Callable[[], float] = time.time,
        shared_access_key_name: str = "loopback",
        shared_access_key: str = "loopback",
    ) -> None:
        self.host = host
        self._keys = {shared_access_key_name: shared_access_key}
        self._port = port
        self._admin_port = admin_port
        self._settings = (float(lock_duration), int(max_delivery_count), clock)
        self._state = BrokerState(
            lock_duration=float(lock_duration),
            max_delivery_count=int(max_delivery_count),
            clock=clock,
        )
        self._amqp: AmqpBroker | None = None
        self._thread: threading.Thread | None = None
        self._admin: AdminServer | None = None
        self._lifecycle = threading.RLock()  # start / stop / direct state access while stopped
        self._reopen_timer: threading.Timer | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Open the AMQP listener and the admin endpoint (idempotent)."""
        with self._lifecycle:
            if self._amqp is not None:
                return
            amqp = AmqpBroker(self._state, self.host, self._port, self._check_token)
            thread = threading.Thread(
                target=amqp.run, name=f"loopback-servicebus:{self._port}", daemon=True
            )
            thread.start()
            try:
                self._port = amqp.ready.result(timeout=_CALL_TIMEOUT)
            except OSError as exc:
                thread.join(timeout=_CALL_TIMEOUT)
                raise OSError(
                    exc.errno,
                    f"the loopback Service Bus cannot listen on {self.host}:{self._port} ({exc}); "
                    "pick another port, or 0 for any free one",
                ) from exc
            self._amqp, self._thread = amqp, thread
            try:
                self._admin = AdminServer(self, self.host, self._admin_port)
            except OSError as exc:
                self.stop()
                raise OSError(
                    exc.errno,
                    f"the loopback Service Bus admin endpoint cannot listen on "
                    f"{self.host}:{self._admin_port} ({exc}); pick another port, or 0 for any free one",
                ) from exc
            self._admin_port = self._admin.port
            _log.info("loopback Service Bus started: %s", self.connection_string)

    def stop(self) -> None:
        """Close every connection and both listeners (the sockets really close); keep state."""
        with self._lifecycle:
            if self._reopen_timer is not None:
                self._reopen_timer.cancel()
                self._reopen_timer = None
            if self._admin is not None:
                self._admin.close()
                self._admin = None
            amqp, thread = self._amqp, self._thread
            self._amqp = self._thread = None
            if amqp is None or thread is None:
                return
            if thread.is_alive():
                amqp.call(amqp.shutdown).result(timeout=_CALL_TIMEOUT)
                thread.join(timeout=_CALL_TIMEOUT)
            for entity in self._state.entities():
                entity.consumers.clear()
                if entity.dead_letter is not None:
                    entity.dead_letter.consumers.clear()
            _log.info("loopback Service Bus stopped")

    def restart(self, *, keep_state: bool = True) -> None:
        """Stop and start again on the same ports; ``keep_state=False`` forgets every entity
        and message, as a broker without persistence would."""
        with self._lifecycle:
            self.stop()
            if not keep_state:
                lock_duration, max_delivery_count, clock = self._settings
                self._state = BrokerState(
                    lock_duration=lock_duration,
                    max_delivery_count=max_delivery_count,
                    clock=clock,
                )
            self.start()

    def __repr__(self) -> str:
        state = "running" if self._amqp is not None else "stopped"
        return f"<LoopbackServiceBus {state} amqp={self.host}:{self._port} admin={self.admin_endpoint}>"

    def __enter__(self) -> LoopbackServiceBus:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The AMQP port (known once started when constructed with port 0)."""
        return self._port

    @property
    def admin_port(self) -> int:
        """The plain-HTTP administration port."""
        return self._admin_port

    @property
    def connection_string(self) -> str:
        """A connection string the SDK accepts: plain TCP thanks to ``UseDevelopmentEmulator``."""
        [(name, key)] = self._keys.items()
        return (
            f"Endpoint=sb://{self.host}:{self._port};SharedAccessKeyName={name};"
            f"SharedAccessKey={key};UseDevelopmentEmulator=true"
        )

    @property
    def admin_endpoint(self) -> str:
        """Base URL of the plain-HTTP administration endpoint (ATOM, like Service Bus)."""
        return f"http://{self.host}:{self._admin_port}"

    # ---- faults ----------------------------------------------------------------------------
    def cut_connections(self) -> int:
        """Drop every open connection now (TCP close, no AMQP close); returns how many."""
        return self._call(lambda amqp: amqp.cut_connections())

    def refuse_connections(self, seconds: float) -> None:
        """Cut every connection and keep the AMQP listener closed for ``seconds``."""
        self._call(_go_down)
        with self._lifecycle:
            if self._reopen_timer is not None:
                self._reopen_timer.cancel()
            self._reopen_timer = threading.Timer(seconds, self._reopen)
            self._reopen_timer.daemon = True
            self._reopen_timer.start()

    @contextlib.contextmanager
    def connections_refused(self) -> Iterator[None]:
        """Cut every connection and refuse new ones until the block ends."""
        self._call(_go_down)
        try:
            yield
        finally:
            self._reopen()

    def _reopen(self) -> None:
        with self._lifecycle:
            self._reopen_timer = None
            if self._amqp is not None:
                self._call(lambda amqp: amqp.listen())

    # ---- entities --------------------------------------------------------------------------
    def create_topic(self, name: str) -> None:
        """Create a topic; raises :class:`ServiceBusEntityError` when it exists."""
        _check_name("topic", name)

        def run(state: BrokerState) -> None:
            try:
                state.create_topic(name)
            except KeyError:
                raise ServiceBusEntityError(f"entity {name!r} already exists") from None

        self._with_state(run)

    def create_queue(self, name: str, **properties: Any) -> None:
        """Create a queue; ``properties`` as for :meth:`create_subscription`."""
        _check_name("queue", name)
        props = self._properties(properties)

        def run(state: BrokerState) -> None:
            try:
                state.create_queue(name, props)
            except KeyError:
                raise ServiceBusEntityError(f"entity {name!r} already exists") from None

        self._with_state(run)

    def create_subscription(self, topic: str, name: str, **properties: Any) -> None:
        """Create a subscription of ``topic``.

        ``properties``: ``lock_duration``, ``max_delivery_count``,
        ``default_message_time_to_live``, ``auto_delete_on_idle`` (seconds or timedelta),
        ``dead_lettering_on_message_expiration``, ``requires_session``; unset ones take the
        broker's defaults.
        """
        _check_name("subscription", name)
        props = self._properties(properties)

        def run(state: BrokerState) -> None:
            if topic.lower() not in state.topics:
                raise ServiceBusEntityError(f"topic {topic!r} does not exist")
            try:
                state.create_subscription(topic, name, props)
            except KeyError:
                raise ServiceBusEntityError(
                    f"subscription {name!r} of topic {topic!r} already exists"
                ) from None

        self._with_state(run)

    def _properties(self, given: dict[str, Any]) -> EntityProperties:
        known = {f.name for f in attrs.fields(EntityProperties)}
        unknown = set(given) - known
        if unknown:
            raise TypeError(f"unknown entity properties {sorted(unknown)}; known: {sorted(known)}")
        values: dict[str, Any] = {
            key: (_seconds(v) if key not in _NOT_DURATIONS else v)
            for key, v in given.items()
            if v is not None
        }
        return attrs.evolve(self._state.defaults, **values)

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its subscriptions."""
        self._with_state(lambda s: s.delete_topic(name), missing=f"topic {name!r}")

    def delete_queue(self, name: str) -> None:
        """Delete a queue."""
        self._with_state(lambda s: s.delete_queue(name), missing=f"queue {name!r}")

    def delete_subscription(self, topic: str, name: str) -> None:
        """Delete a subscription (its receivers get no more messages)."""
        self._with_state(
            lambda s: s.delete_subscription(topic, name),
            missing=f"subscription {name!r} of topic {topic!r}",
        )

    def topic_names(self) -> list[str]:
        """Names of every topic."""
        return self._with_state(lambda s: [t.name for t in s.topics.values()])

    def queue_names(self) -> list[str]:
        """Names of every queue."""
        return self._with_state(lambda s: [q.path for q in s.queues.values()])

    def subscription_names(self, topic: str) -> list[str]:
        """Names of the subscriptions of ``topic``."""
        return self._with_state(
            lambda s: [
                e.path.rsplit("/", 1)[1] for e in s.topics[topic.lower()].subscriptions.values()
            ],
            missing=f"topic {topic!r}",
        )

    def message_count(self, entity_path: str) -> int:
        """Messages held (available or locked) by a queue, subscription or dead-letter queue,
        e.g. ``"orders/Subscriptions/web-1"``."""

        def run(state: BrokerState) -> int:
            entity = state.resolve(entity_path)
            if not isinstance(entity, Entity):
                raise ServiceBusEntityError(f"no queue or subscription {entity_path!r}")
            now = state.clock()
            return sum(1 for e in entity.messages.values() if e.lock_token or e.expires_at > now)

        return self._with_state(run)

    def dead_letters(self, topic: str, subscription: str) -> list[DeadLetter]:
        """The messages in a subscription's dead-letter queue (they stay there)."""
        return self.dead_letters_of(f"{topic}/Subscriptions/{subscription}")

    def dead_letters_of(self, entity_path: str) -> list[DeadLetter]:
        """The messages in the dead-letter queue of a queue or subscription path."""
        from proton import Message

        def run(state: BrokerState) -> list[bytes]:
            entity = state.resolve(entity_path)
            if not isinstance(entity, Entity) or entity.dead_letter is None:
                raise ServiceBusEntityError(f"no queue or subscription {entity_path!r}")
            return [
                encode_delivery(
                    e.message,
                    sequence_number=e.sequence_number,
                    enqueued_ms=e.enqueued_ms,
                    delivery_count=e.attempts,
                )
                for e in entity.dead_letter.messages.values()
            ]

        out = []
        for raw in self._with_state(run):
            message = Message()
            message.decode(raw)
            props: dict[str, Any] = dict(message.properties or {})
            annotations: dict[Any, Any] = dict(message.annotations or {})
            body = message.body
            if isinstance(body, memoryview):
                body = bytes(body)
            elif isinstance(body, str):
                body = body.encode("utf-8")
            elif not isinstance(body, bytes):
                body = repr(body).encode("utf-8")
            out.append(
                DeadLetter(
                    body=body,
                    reason=props.get("DeadLetterReason"),
                    description=props.get("DeadLetterErrorDescription"),
                    message_id=None if message.id is None else str(message.id),
                    application_properties=props,
                    delivery_count=message.delivery_count,
                    sequence_number=int(annotations["x-opt-sequence-number"]),
                )
            )
        return out

    def inject(
        self,
        topic: str,
        body: bytes,
        *,
        message_id: str | None = None,
        subject: str | None = None,
        content_type: str | None = None,
        session_id: str | None = None,
        **properties: Any,
    ) -> None:
        """Put a raw message (data body, ``properties`` as application properties) on a topic
        or queue, bypassing every client: for poison-message tests. ``session_id`` is needed
        by an entity that requires sessions."""
        from proton import Message

        from ._servicebus_codec import parse_message

        message = Message(
            body=bytes(body),
            inferred=True,
            id=message_id,
            subject=subject,
            content_type=content_type,
            properties=properties or None,
        )
        if session_id is not None:
            message.group_id = session_id
        stored = parse_message(message.encode())

        def run(state: BrokerState) -> None:
            target = state.resolve(topic)
            if target is None:
                raise ServiceBusEntityError(f"no topic or queue {topic!r}")
            try:
                state.publish(target, [stored])
            except SessionRequired as exc:
                raise ServiceBusEntityError(f"{exc} Pass session_id=...") from None

        self._with_state(run)

    def expire_idle_subscriptions(self) -> list[str]:
        """Delete now every subscription idle past its AutoDeleteOnIdle (by ``clock``);
        returns their paths (``<topic>/Subscriptions/<name>``)."""
        return self._with_state(lambda s: s.expire_idle(s.clock()))

    # ---- plumbing --------------------------------------------------------------------------
    def _check_token(self, token: str) -> str | None:
        """Why a client's token is refused (admin ``Authorization`` or CBS put-token), or None."""
        return check_token(token, self._keys, time.time())

    def _call(self, fn: Callable[[AmqpBroker], _T]) -> _T:
        amqp = self._amqp
        if amqp is None:
            raise RuntimeError("the loopback Service Bus is not running; call start() first")
        if threading.current_thread() is self._thread:
            return fn(amqp)
        result: _T = amqp.call(lambda: fn(amqp)).result(timeout=_CALL_TIMEOUT)
        return result

    def _with_state(self, fn: Callable[[BrokerState], _T], *, missing: str | None = None) -> _T:
        """Run ``fn`` on the state: on the reactor thread when running, else under the lock."""

        def guarded(state: BrokerState) -> _T:
            try:
                return fn(state)
            except KeyError:
                if missing is None:
                    raise
                raise ServiceBusEntityError(f"{missing} does not exist") from None

        with self._lifecycle:
            amqp = self._amqp
            if amqp is None or threading.current_thread() is self._thread:
                return guarded(self._state)
        result: _T = amqp.call(lambda: guarded(amqp.state)).result(timeout=_CALL_TIMEOUT)
        return result


@contextlib.contextmanager
def broker_process(*topics: str, cwd: str | None = None) -> Iterator[tuple[str, str]]:
    """The command line's broker in a child process (its own GIL, as in multi-process use).

    Yields (connection string, admin endpoint) as the command line prints them; the process
    is terminated on exit. `SystemExit` when it does not start.
    """
    command = [sys.executable, "-m", "eventbroker.testing.servicebus_broker", "--port", "0"]
    for topic in topics:
        command += ["--topic", topic]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd
    )
    try:
        assert process.stdout is not None
        printed = read_exports(process.stdout)
        if printed is None:
            raise SystemExit("the loopback Service Bus broker did not start (python-qpid-proton?)")
        yield printed[_CONNECTION_STRING], printed[_ADMIN_ENDPOINT]
    finally:
        process.terminate()
        process.wait(10)


_CONNECTION_STRING = "EVENTBROKER_SERVICEBUS_CONNECTION_STRING"
_ADMIN_ENDPOINT = "EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT"


def export_lines(broker: LoopbackServiceBus, topics: list[str]) -> list[str]:
    """``export NAME=value`` lines for a shell: the settings `ServiceBusOptions.from_env` reads."""
    values = {_CONNECTION_STRING: broker.connection_string}
    if len(topics) == 1:
        values["EVENTBROKER_SERVICEBUS_TOPIC"] = topics[0]
    values[_ADMIN_ENDPOINT] = broker.admin_endpoint  # last: readers stop at it
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]


def read_exports(lines: Iterable[str]) -> dict[str, str] | None:
    """The variables of the ``export`` lines the command line prints, read up to the admin
    endpoint (the last one always printed); None when the output ends first."""
    found: dict[str, str] = {}
    for line in lines:
        words = shlex.split(line, comments=True)
        if len(words) != 2 or words[0] != "export":
            continue
        name, _, value = words[1].partition("=")
        found[name] = value
        if _CONNECTION_STRING in found and _ADMIN_ENDPOINT in found:
            return found
    return None


def _start_in_background(argv: list[str]) -> int:
    """Run the broker as a detached child process; print its exports, its pid and its log."""
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the child writes it after we exit
        prefix="loopback-servicebus-", suffix=".log", delete=False
    )
    with log:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventbroker.testing.servicebus_broker", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,  # outlives this shell command
        )
    assert process.stdout is not None
    lines: list[str] = []
    with process.stdout:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if read_exports(lines) is not None:
                break
    if read_exports(lines) is None:
        process.wait(10)
        with open(log.name, encoding="utf-8", errors="replace") as errors:
            sys.stderr.write(errors.read())
        print("error: the loopback Service Bus broker did not start", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    print(f"export EVENTBROKER_LOOPBACK_PID={process.pid}")
    print(f"export EVENTBROKER_LOOPBACK_LOG={shlex.quote(log.name)}")
    print(f"# running in the background; stop it: kill {process.pid}")
    return 0


def _go_down(amqp: AmqpBroker) -> None:
    amqp.close_listener()
    amqp.cut_connections()


_DEFAULT_PORT = 5672  # AMQP's, like Microsoft's emulator


def main(argv: list[str] | None = None) -> int:
    """Command line: start a broker, print how to reach it, run until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m eventbroker.testing.servicebus_broker",
        description="Run a loopback Azure Service Bus broker (AMQP + admin HTTP) on 127.0.0.1.",
    )
    try:
        host = read_variable("EVENTBROKER_LOOPBACK_HOST", default="127.0.0.1")
        port = read_variable("EVENTBROKER_LOOPBACK_PORT", INTEGER)
        admin_port = read_variable("EVENTBROKER_LOOPBACK_ADMIN_PORT", INTEGER, default=0)
        topics = read_variable("EVENTBROKER_LOOPBACK_TOPICS", default="")
        lock_duration = read_variable("EVENTBROKER_LOOPBACK_LOCK_DURATION", NUMBER, default=60.0)
        max_delivery_count = read_variable(
            "EVENTBROKER_LOOPBACK_MAX_DELIVERY_COUNT", INTEGER, default=10
        )
    except ValueError as exc:
        parser.error(str(exc))
    parser.add_argument(
        "--host",
        default=host,
        help="listen address (default 127.0.0.1; env EVENTBROKER_LOOPBACK_HOST)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=port,
        help="AMQP port (default 5672, or any free port when 5672 is taken; 0 = any free "
        "port; env EVENTBROKER_LOOPBACK_PORT)",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=admin_port,
        help="admin HTTP port (default 0 = any free port; env EVENTBROKER_LOOPBACK_ADMIN_PORT)",
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=[t.strip() for t in topics.split(",") if t.strip()],
        help="create this topic at start (repeatable; env EVENTBROKER_LOOPBACK_TOPICS, comma-separated)",
    )
    parser.add_argument(
        "--lock-duration",
        type=float,
        default=lock_duration,
        help="peek-lock duration in seconds (default 60; env EVENTBROKER_LOOPBACK_LOCK_DURATION)",
    )
    parser.add_argument(
        "--max-delivery-count",
        type=int,
        default=max_delivery_count,
        help="deliveries before dead-lettering (default 10; env EVENTBROKER_LOOPBACK_MAX_DELIVERY_COUNT)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    parser.add_argument(
        "--background",
        action="store_true",
        help='run in a background process, print its exports and exit: eval "$(python -m '
        'eventbroker.testing.servicebus_broker --background)"',
    )
    args = parser.parse_args(argv)
    if args.background:
        given = sys.argv[1:] if argv is None else argv
        return _start_in_background([a for a in given if a != "--background"])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # proton logs every accepted connection, and peers that vanish
        logging.getLogger("proton").setLevel(logging.CRITICAL)

    def make(port: int) -> LoopbackServiceBus:
        return LoopbackServiceBus(
            args.host,
            port,
            args.admin_port,
            lock_duration=args.lock_duration,
            max_delivery_count=args.max_delivery_count,
        )

    broker = make(_DEFAULT_PORT if args.port is None else args.port)
    try:
        try:
            broker.start()
        except OSError:
            if args.port is not None:  # a port the user chose: no silent fallback
                raise
            logging.getLogger(__name__).warning(
                "port %d is taken (another AMQP broker?); using a free port instead",
                _DEFAULT_PORT,
            )
            broker = make(0)
            broker.start()
    except OSError as error:  # a taken port: say so in one line, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    with broker:
        for topic in args.topic:
            broker.create_topic(topic)
        for line in export_lines(broker, args.topic):
            print(line, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
