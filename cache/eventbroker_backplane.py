"""`EventBrokerBackplane`: the original design's backplane on an `eventbroker.EventBroker`.

Backplane messages travel as one fixed event id raised by one fixed raiser id, broadcast to every
other instance. Beyond the original: when the broker reports that events may have been missed
(a sequence gap, a reconnect, a recreated subscription) the cache expires every L1 entry (values
kept for fail-safe); the broker's connection signal drives auto-recovery replay; a broker that
cannot accept a message makes `publish` raise `BackplaneError` (the cache queues the message).

This is the only module of `cache` that imports `eventbroker`.
"""

from __future__ import annotations

import logging
import time
import uuid

import attrs

from eventbroker import (
    ConnectionState,
    EventBroker,
    EventMissedEventArgs,
    EventRaiseOption,
    EventReceivedEventArgs,
    EventRegistry,
    PublishError,
    Subscription,
)
from eventbroker._diagnostics import LogLimiter

from ._backplane import (
    BackplaneConnectionInfo,
    BackplaneMessage,
    BackplaneMessageAction,
    BackplaneSubscriptionOptions,
)
from ._errors import BackplaneError
from ._options import EntryOptions

logger = logging.getLogger(__name__)

EVENT_ID = uuid.UUID("A1B2C3D4-E5F6-4A5B-8C9D-0E1F2A3B4C5D")
"""The original design's backplane event id."""
RAISER_ID = uuid.UUID("E8B2B7D1-8A7E-4C2E-9C8D-6B7C1A2B3C4D")
"""The original design's raiser id."""

_BACK_ONLINE = {
    ConnectionState.CONNECTED: False,
    ConnectionState.RECONNECTED: True,
    ConnectionState.SUBSCRIPTION_RECREATED: True,
}


@attrs.frozen
class BackplaneWireMessage:
    """A `BackplaneMessage` as the event's param (plain JSON fields, versioned).

    Changes are additive within version 1: new `action` values (``tag_remove``,
    ``tag_expire``) are ignored, logged once a minute, by a release that does not know them,
    and every field an older release sends is still read the same way."""

    cache_key: str
    action: str
    source_id: str = ""
    timestamp: float = 0.0
    cache_name: str = ""
    """The sending cache's name ("" from a publisher without a cache: matches every cache)."""
    version: int = 1

    @classmethod
    def from_message(cls, message: BackplaneMessage, cache_name: str) -> BackplaneWireMessage:
        return cls(
            message.cache_key,
            message.action.value,
            message.source_id,
            message.timestamp,
            cache_name,
        )

    def to_message(self) -> BackplaneMessage:
        return BackplaneMessage(
            cache_key=self.cache_key,
            action=BackplaneMessageAction(self.action),
            source_id=self.source_id,
            timestamp=self.timestamp,
        )


class EventBrokerBackplane:
    """A `Backplane` over an `EventBroker` (start the broker yourself; one backplane per cache).

    ```python
    backplane = EventBrokerBackplane(registry, broker)
    cache = HybridCache(CacheOptions(name="shop"), backplane=backplane)
    ```
    """

    def __init__(
        self,
        registry: EventRegistry,
        broker: EventBroker,
        *,
        event_id: uuid.UUID | str = EVENT_ID,
        raiser_id: uuid.UUID | str = RAISER_ID,
    ) -> None:
        self.registry = registry
        self.broker = broker
        self.event = registry.get(event_id, param_type=BackplaneWireMessage)
        self.event_id = self.event.id
        self.raiser_id = uuid.UUID(str(raiser_id))
        self._options: BackplaneSubscriptionOptions | None = None
        self._subscriptions: list[Subscription] = []
        self._log = LogLimiter(logger, time.monotonic)  # once per cause per minute

    @property
    def is_connected(self) -> bool:
        """Whether the broker's transport is connected (what `HybridCache.health()` reports)."""
        return self.broker.connection_state is not ConnectionState.DISCONNECTED

    # ---------------------------------------------------------------- the protocol

    def subscribe(self, options: BackplaneSubscriptionOptions) -> None:
        """Listen to the broker: this event's messages, missed events, connectivity."""
        self.unsubscribe()
        self._options = options
        self._subscriptions = [
            self.broker.event_received.subscribe(self._on_received),
            self.broker.event_missed.subscribe(self._on_missed),
            self.broker.connection_changed.subscribe(self._on_connection_changed),
        ]

    def unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self._subscriptions = []
        self._options = None

    def publish(self, message: BackplaneMessage, options: EntryOptions) -> None:
        """Raise the backplane event with `RAISE_BROADCAST` (nothing with
        `options.skip_backplane_notifications`). `BackplaneError` when the broker refuses."""
        if options.skip_backplane_notifications:
            return
        try:
            self.event.raise_(self.raiser_id, self._wire(message), EventRaiseOption.RAISE_BROADCAST)
        except PublishError as exc:
            raise BackplaneError(f"event broker cannot publish backplane message: {exc}") from exc

    async def publish_async(self, message: BackplaneMessage, options: EntryOptions) -> None:
        """`publish` for asyncio code."""
        if options.skip_backplane_notifications:
            return
        try:
            await self.event.raise_async(
                self.raiser_id, self._wire(message), EventRaiseOption.RAISE_BROADCAST
            )
        except PublishError as exc:
            raise BackplaneError(f"event broker cannot publish backplane message: {exc}") from exc

    # ---------------------------------------------------------------- broker side

    def _wire(self, message: BackplaneMessage) -> BackplaneWireMessage:
        name = self._options.cache_name if self._options is not None else ""
        return BackplaneWireMessage.from_message(message, name)

    def _on_received(self, args: EventReceivedEventArgs) -> None:
        options = self._options
        if options is None or args.event_id != self.event_id:
            return
        wire = args.param
        if not isinstance(wire, BackplaneWireMessage):
            self._log.warn(
                ("param", type(wire).__name__),
                "ignored a backplane event whose param is %r",
                type(wire).__name__,
            )
            return
        if wire.cache_name and wire.cache_name != options.cache_name:
            return
        try:
            message = wire.to_message()
        except ValueError:  # a newer peer: every such message would log
            action = wire.action[:40]
            self._log.warn(
                ("action", action), "ignored backplane messages with unknown action %r", action
            )
            return
        options.incoming_message_handler(message)

    def _on_missed(self, args: EventMissedEventArgs) -> None:
        options = self._options
        if options is not None and options.messages_lost_handler is not None:
            logger.info("backplane: events may have been missed (%s)", args.reason.value)
            options.messages_lost_handler()

    def _on_connection_changed(self, state: ConnectionState) -> None:
        options = self._options
        if options is None or options.connect_handler is None or state not in _BACK_ONLINE:
            return
        options.connect_handler(BackplaneConnectionInfo(is_reconnection=_BACK_ONLINE[state]))
