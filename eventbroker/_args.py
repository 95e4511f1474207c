"""What handlers receive: notifications of raised, received and missed events."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from typing import Any

import attrs


class EventRaiseOption(enum.Enum):
    """Where a raised event goes (Optimizely's `EventRaiseOption`)."""

    RAISE_LOCAL = "local"
    """This instance's handlers only."""
    RAISE_BROADCAST = "broadcast"
    """This instance's handlers and every other instance's."""


class MissedReason(enum.Enum):
    """Why events may have been missed."""

    GAP = "gap"
    """A sequence gap from one source was not filled within `missed_event_timeout`."""
    RECONNECT = "reconnect"
    """The transport was disconnected and came back: anything sent meanwhile may be lost."""
    SUBSCRIPTION_RECREATED = "subscription_recreated"
    """This instance's subscription vanished (auto-deleted while idle) and was created again."""


@attrs.frozen
class EventNotification:
    """Passed to `Event.raised` handlers, for local raises and remote messages alike."""

    event_id: uuid.UUID
    raiser_id: uuid.UUID
    param: Any
    source_instance_id: str
    """The instance that raised the event (this instance's id for a local raise)."""
    is_local: bool
    message_id: str | None
    """The envelope's id; None for a `RAISE_LOCAL` raise (nothing went on the wire)."""
    sent_at: float
    """Seconds since the epoch when the event was raised."""


@attrs.frozen
class EventReceivedEventArgs:
    """Passed to `EventBroker.event_received` handlers: one verified message from another instance."""

    event_id: uuid.UUID
    raiser_id: uuid.UUID
    param: Any
    source_instance_id: str
    application_name: str
    site_id: str | None
    message_id: str
    sequence: int
    sent_at: float


@attrs.frozen
class EventMissedEventArgs:
    """Passed to `event_missed` / `Event.missed` handlers: some events may never arrive."""

    reason: MissedReason
    source_instance_id: str | None = None
    """The instance whose messages are missing (None for a reconnect)."""
    first_sequence: int | None = None
    last_sequence: int | None = None
    """The missing range, inclusive (None for a reconnect)."""


@attrs.frozen
class MessageRefusedEventArgs:
    """Passed to `EventBroker.message_refused` handlers: one incoming message was refused."""

    reason: str
    """The cause, as counted in `BrokerStats.rejected`: bad_signature, unknown_key, malformed, ..."""
    description: str
    """What was wrong, in words (never a secret)."""
    sender: Mapping[str, str]
    """What the message says of its sender (any of instance_id, host, application_name,
    key_id): unverified for the causes found before the signature check; empty when unknown."""
    received_at: float
    """When it was refused (seconds since the epoch, the broker's clock)."""
