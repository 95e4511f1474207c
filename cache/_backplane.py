"""The backplane: protocol, messages and `MemoryBackplane` (the auto-recovery queue and service
are in `_auto_recovery.py`).

The protocol is FusionCache's `IFusionCacheBackplane` as the original design uses it:
`subscribe(options)`, `unsubscribe()`, `publish(message, options)` and
`async publish_async(message, options)`; publishing with `options.skip_backplane_notifications`
does nothing. A backplane that cannot publish raises (any exception): the cache then queues the
message for auto-recovery and replays it when the backplane calls its connect handler again.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import attrs

from ._errors import BackplaneError
from ._options import EntryOptions

logger = logging.getLogger(__name__)


class BackplaneMessageAction(enum.Enum):
    """What happened to an entry on the instance that sent the message."""

    ENTRY_SET = "entry_set"
    """A new value was set: mark the local copy stale so the next read takes it from L2."""
    ENTRY_REMOVE = "entry_remove"
    """The entry was removed: remove the local copy."""
    ENTRY_EXPIRE = "entry_expire"
    """The entry is stale: mark the local copy stale, keeping its value for fail-safe."""
    CLEAR = "clear"
    """The whole cache was cleared: expire every local entry older than the message."""
    TAG_REMOVE = "tag_remove"
    """Every entry carrying the tag `cache_key` and older than the message is removed."""
    TAG_EXPIRE = "tag_expire"
    """Every entry carrying the tag `cache_key` and older than the message is expired (values
    kept for fail-safe). Older releases ignore both tag actions (an unknown action)."""


def _now() -> float:
    return time.time()


@attrs.frozen
class BackplaneMessage:
    """One change notification. `source_id` is the sending cache's `instance_id`."""

    cache_key: str = attrs.field(validator=attrs.validators.instance_of(str))
    action: BackplaneMessageAction = attrs.field(
        validator=attrs.validators.instance_of(BackplaneMessageAction)
    )
    source_id: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    """Optional with `EventBrokerBackplane`: the broker never echoes a message to its sender."""
    timestamp: float = attrs.field(factory=_now, converter=float)
    """When the change happened (seconds since the epoch); older local entries are affected."""

    @classmethod
    def trusted(
        cls, cache_key: str, action: BackplaneMessageAction, source_id: str, timestamp: float
    ) -> BackplaneMessage:
        """A message from fields already checked (a received pack's), without the checks."""
        message = object.__new__(cls)
        set_field = object.__setattr__
        set_field(message, "cache_key", cache_key)
        set_field(message, "action", action)
        set_field(message, "source_id", source_id)
        set_field(message, "timestamp", timestamp)
        return message


@attrs.frozen
class BackplaneConnectionInfo:
    """Passed to the connect handler: the backplane is (again) able to publish and receive."""

    is_reconnection: bool


@attrs.frozen
class BackplaneSubscriptionOptions:
    """What a cache hands its backplane on `subscribe`."""

    cache_name: str
    cache_instance_id: str
    incoming_message_handler: Callable[[BackplaneMessage], None]
    """Called (from any thread) for every message of another instance."""
    connect_handler: Callable[[BackplaneConnectionInfo], None] | None = None
    """Called when the backplane is connected again: the cache replays its auto-recovery queue."""
    messages_lost_handler: Callable[[], None] | None = None
    """Called when messages may have been lost (a gap, a reconnect): the cache expires every
    local entry, keeping the values for fail-safe. An extension of the original protocol."""
    incoming_messages_handler: Callable[[Sequence[BackplaneMessage]], None] | None = None
    """Optional: called with the messages of one pack (a backplane that coalesces), in order;
    the same as calling `incoming_message_handler` for each, with the per-call work done once.
    Without it the backplane calls `incoming_message_handler` per message."""
    publish_failed_handler: (
        Callable[[Sequence[tuple[BackplaneMessage, EntryOptions]], Exception], None] | None
    ) = None
    """Optional: called by a backplane that sends later than `publish` returned (a pack) with
    the messages it could not send and why; the cache queues them for auto-recovery, as it
    does for a `publish` that raises."""


@runtime_checkable
class Backplane(Protocol):
    """Carries `BackplaneMessage`s between the caches of several instances.

    Optional: an `is_connected` property (`bool`, or `None` when unknown) that
    `HybridCache.health()` reports; without it the cache judges by its last publish.
    """

    def subscribe(self, options: BackplaneSubscriptionOptions) -> None: ...

    def unsubscribe(self) -> None: ...

    def publish(self, message: BackplaneMessage, options: EntryOptions) -> None: ...

    async def publish_async(self, message: BackplaneMessage, options: EntryOptions) -> None: ...


@runtime_checkable
class PackingBackplane(Protocol):
    """A backplane that can send several messages as one envelope (`EventBrokerBackplane`):
    `CacheInvalidator` sends its keys through it."""

    def envelopes(self, messages: Sequence[BackplaneMessage]) -> list[Sequence[BackplaneMessage]]:
        """`messages` grouped as they would travel now, in order."""
        ...

    def publish_envelope(self, messages: Sequence[BackplaneMessage]) -> None:
        """Send one group of `envelopes` now; `BackplaneError` when refused."""
        ...


class MemoryBackplaneHub:
    """Connects `MemoryBackplane`s in one process. `connected = False` makes publishes fail
    (and drops nothing silently); setting it back to `True` calls every connect handler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: list[MemoryBackplane] = []
        self._connected = True

    @property
    def connected(self) -> bool:
        return self._connected

    @connected.setter
    def connected(self, value: bool) -> None:
        was = self._connected
        self._connected = value
        if value and not was:
            for member in self._snapshot():
                member._connected_again()

    def _snapshot(self) -> list[MemoryBackplane]:
        with self._lock:
            return list(self._members)

    def _join(self, member: MemoryBackplane) -> None:
        with self._lock:
            if member not in self._members:
                self._members.append(member)

    def _leave(self, member: MemoryBackplane) -> None:
        with self._lock:
            if member in self._members:
                self._members.remove(member)

    def _broadcast(self, sender: MemoryBackplane, message: BackplaneMessage) -> None:
        if not self._connected:
            raise BackplaneError("memory backplane hub is disconnected")
        for member in self._snapshot():
            if member is not sender:
                member._deliver(message)


_default_hub = MemoryBackplaneHub()


class MemoryBackplane:
    """A backplane for caches in one process; delivery is synchronous, on the publisher's thread."""

    def __init__(self, hub: MemoryBackplaneHub | None = None) -> None:
        self.hub = hub if hub is not None else _default_hub
        self._options: BackplaneSubscriptionOptions | None = None

    def subscribe(self, options: BackplaneSubscriptionOptions) -> None:
        self._options = options
        self.hub._join(self)
        if options.connect_handler is not None and self.hub.connected:
            options.connect_handler(BackplaneConnectionInfo(is_reconnection=False))

    def unsubscribe(self) -> None:
        self.hub._leave(self)
        self._options = None

    @property
    def is_connected(self) -> bool:
        """Whether the hub is connected (publishes go through)."""
        return self.hub.connected

    def publish(self, message: BackplaneMessage, options: EntryOptions) -> None:
        if options.skip_backplane_notifications:
            return
        self.hub._broadcast(self, message)

    async def publish_async(self, message: BackplaneMessage, options: EntryOptions) -> None:
        self.publish(message, options)

    def _deliver(self, message: BackplaneMessage) -> None:
        options = self._options
        if options is not None:
            options.incoming_message_handler(message)

    def _connected_again(self) -> None:
        options = self._options
        if options is not None and options.connect_handler is not None:
            options.connect_handler(BackplaneConnectionInfo(is_reconnection=True))
