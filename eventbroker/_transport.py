"""The transport interface: how an `EventBroker` moves signed envelopes between instances.

A transport knows nothing of events, signatures or sequences: it carries opaque bytes. The
broker owns one background asyncio loop (its I/O thread); every `async` method of a transport
is called on that loop, and the transport calls its `TransportSink` from that loop too.

* `start(sink)` connects (creating what it needs, such as a subscription) and begins to
  deliver every message broadcast by *other* instances to `sink.deliver(body)`. When the
  service cannot be reached it returns anyway: it reports `DISCONNECTED`, keeps connecting in
  the background, and reports `RECONNECTED` at its first connection (messages sent meanwhile
  are unknown, so the broker fires `event_missed`). Configuration errors (bad settings,
  refused credentials) raise.
* `publish(message)` is called from any thread; it must not block. It accepts the message
  into a bounded outgoing queue (or raises `PublishError` naming why it cannot), and the
  transport sends it from its loop.
* `sink.deliver(body)` verifies and dispatches synchronously up to the handler hand-off and
  returns a future that resolves to `None` (settle as done) or a `Rejection` (dead-letter with
  its reason) once local dispatch has finished. At-least-once transports settle only then.
* `sink.connection_changed(state)` reports connectivity. `RECONNECTED` and
  `SUBSCRIPTION_RECREATED` mean messages may have been lost: the broker fires `event_missed`.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Protocol, runtime_checkable

import attrs

from ._errors import EventBrokerError


class ConnectionState(enum.Enum):
    """Connectivity reported by a transport to its sink."""

    CONNECTED = "connected"
    """First connection made at start."""
    DISCONNECTED = "disconnected"
    """The connection is down; the transport keeps retrying."""
    RECONNECTED = "reconnected"
    """Back after an outage, or first connection after a start that could not connect:
    messages sent meanwhile may be lost."""
    SUBSCRIPTION_RECREATED = "subscription_recreated"
    """This instance's subscription had vanished (auto-deleted) and was created again."""


@attrs.frozen
class TransportMessage:
    """One outgoing message: the encoded envelope plus the ids a broker may index on."""

    body: bytes
    message_id: str
    """The envelope's message id (Service Bus `message_id`, used for duplicate detection)."""
    source_instance_id: str
    """The sending instance (Service Bus `subject`, used by an optional own-message filter)."""


@attrs.frozen
class Rejection:
    """Why the envelope layer refused a message: the transport dead-letters it with this reason."""

    reason: str
    """A short machine-readable cause, such as ``bad_signature`` or ``malformed``."""
    description: str = ""


class PublishError(EventBrokerError):
    """The transport cannot accept a message now (queue full, broker down past the deadline)."""


class TransportSink(Protocol):
    """What the broker offers its transport. All methods are called on the broker's loop."""

    @property
    def instance_id(self) -> str: ...

    @property
    def application_name(self) -> str: ...

    def deliver(self, body: bytes) -> asyncio.Future[Rejection | None]:
        """Process one received message; the future resolves once local dispatch is done."""
        ...

    def connection_changed(self, state: ConnectionState) -> asyncio.Future[None]:
        """Report connectivity; the future resolves once the broker's handlers have run."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A broadcast channel where each instance receives what every *other* instance publishes."""

    async def start(self, sink: TransportSink) -> None:
        """Connect and begin delivering other instances' messages to `sink`."""
        ...

    def publish(self, message: TransportMessage) -> None:
        """Queue `message` for sending; thread-safe and non-blocking. Raises `PublishError`."""
        ...

    async def stop(self) -> None:
        """Flush pending sends within the transport's deadline, then close everything."""
        ...
