"""`EventRegistry` and `Event`: raiseable events by GUID (Optimizely's IEventRegistry / Event)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from ._args import EventMissedEventArgs, EventNotification, EventRaiseOption
from ._broker import EventBroker
from ._envelope import converter, to_wire_param
from ._signal import Signal


def as_uuid(value: object, name: str) -> uuid.UUID:
    """`value` as a UUID (a UUID or its string form); `TypeError` naming the value otherwise."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise TypeError(
        f"{name} must be a UUID (or its string form), got {type(value).__name__}: {value!r}"
    )


class Event:
    """One raiseable event. Get it from `EventRegistry.get`; never construct it yourself."""

    def __init__(self, broker: EventBroker, event_id: uuid.UUID, param_type: Any = None) -> None:
        self._broker = broker
        self.id = event_id
        self.param_type = param_type
        """With a type (an attrs class, say), remote params arrive structured as it via cattrs."""
        self.raised: Signal[EventNotification] = Signal(f"event {event_id}")
        """Handlers get an `EventNotification` for local raises and remote messages alike."""
        self.missed: Signal[EventMissedEventArgs] = Signal(f"event {event_id} (missed)")
        """Handlers learn that messages of this event may have been lost."""

    def _structure(self, param: Any) -> Any:
        return converter.structure(param, self.param_type)

    def _prepare(
        self, raiser_id: object, param: object, option: EventRaiseOption
    ) -> EventNotification | None:
        """Send the event (with `RAISE_BROADCAST`); the local handlers' notification, or None
        when there are no local handlers."""
        raiser = as_uuid(raiser_id, "raiser_id")
        if not isinstance(option, EventRaiseOption):
            raise TypeError(f"option must be an EventRaiseOption, got {option!r}")
        wire_param = to_wire_param(param)  # checks the param even for a local raise
        sent_at = self._broker._clock()
        message_id = None
        if option is EventRaiseOption.RAISE_BROADCAST:
            message_id = self._broker._send(self.id, raiser, wire_param, sent_at)
        if not (self.raised._sync or self.raised._async):
            return None
        return EventNotification(
            event_id=self.id,
            raiser_id=raiser,
            param=param,
            source_instance_id=self._broker.instance_id,
            is_local=True,
            message_id=message_id,
            sent_at=sent_at,
        )

    def raise_(
        self,
        raiser_id: uuid.UUID | str,
        param: object = None,
        option: EventRaiseOption = EventRaiseOption.RAISE_BROADCAST,
    ) -> None:
        """Raise the event: this instance's handlers and, with `RAISE_BROADCAST`, every other's.

        The broadcast is sent before local handlers run, so a `PublishError` (transport cannot
        take it), `TypeError` (param cannot travel) or `ValueError` (too large) leaves nothing
        half done. Plain handlers run on this thread; async ones on the broker loop.
        """
        notification = self._prepare(raiser_id, param, option)
        if notification is not None:
            self._broker._run_local(self.raised.emit_sync(notification))

    async def raise_async(
        self,
        raiser_id: uuid.UUID | str,
        param: object = None,
        option: EventRaiseOption = EventRaiseOption.RAISE_BROADCAST,
    ) -> None:
        """`raise_` for asyncio code: async handlers are awaited on the caller's loop."""
        notification = self._prepare(raiser_id, param, option)
        if notification is not None and (work := self.raised.emit_sync(notification)):
            await asyncio.gather(*work)

    def __repr__(self) -> str:
        return f"<Event {self.id} handlers={len(self.raised)}>"


class EventRegistry:
    """Maps event GUIDs to `Event` objects for one broker (`get` returns the same object)."""

    def __init__(self, broker: EventBroker) -> None:
        if broker._registry is not None:
            raise ValueError(f"{broker!r} already has an EventRegistry: share that one")
        self.broker = broker
        self._events: dict[uuid.UUID, Event] = {}
        self._lock = threading.Lock()
        broker._registry = self

    def get(self, event_id: uuid.UUID | str, param_type: Any = None) -> Event:
        """The event for `event_id`, created on first use.

        `param_type` (an attrs class, or any type cattrs can structure) makes remote params
        arrive as that type. Asking again with a different type is a `ValueError`.
        """
        key = as_uuid(event_id, "event_id")
        event = self._events.get(key)
        if event is None:
            with self._lock:
                event = self._events.get(key)
                if event is None:
                    event = self._events[key] = Event(self.broker, key, param_type)
                    return event
        if param_type is not None and event.param_type != param_type:
            if event.param_type is not None:
                raise ValueError(
                    f"event {key} is registered with param_type {event.param_type!r}, "
                    f"not {param_type!r}"
                )
            event.param_type = param_type
        return event

    def exists(self, event_id: uuid.UUID | str) -> bool:
        """Whether `event_id` has been registered (`get` was called for it)."""
        return as_uuid(event_id, "event_id") in self._events

    def _find(self, event_id: uuid.UUID) -> Event | None:
        return self._events.get(event_id)

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self._events.values()))

    def __len__(self) -> int:
        return len(self._events)
