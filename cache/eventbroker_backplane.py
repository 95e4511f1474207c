"""`EventBrokerBackplane`: the original design's backplane on an `eventbroker.EventBroker`.

Backplane messages travel as one fixed event id raised by one fixed raiser id, broadcast to every
other instance. Beyond the original: when the broker reports that events may have been missed
(a sequence gap, a reconnect, a recreated subscription) the cache expires every L1 entry (values
kept for fail-safe); the broker's connection signal drives auto-recovery replay; a broker that
cannot accept a message makes `publish` raise `BackplaneError` (the cache queues the message).

Coalescing (see docs/cache-backplane.md): a message published while the backplane sent
nothing for `coalesce_window` seconds leaves at once (leading edge: no added latency when
traffic is light); messages published while a window is open wait in a pack that leaves when
the window closes or when it holds `coalesce_max_messages`, as one envelope (`action="pack"`)
or a few when it would exceed the broker's `max_message_bytes`. Packs are sent only while every
instance heard from says (its heartbeats' `protocol`) that it reads them.

This is the only module of `cache` that imports `eventbroker`.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring
from typing import Any

import attrs
from cattrs.gen import make_dict_unstructure_fn, override

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
from eventbroker._envelope import converter

from ._backplane import (
    BackplaneConnectionInfo,
    BackplaneMessage,
    BackplaneMessageAction,
    BackplaneSubscriptionOptions,
)
from ._diagnostics import LogLimiter
from ._errors import BackplaneError
from ._options import EntryOptions, _seconds
from ._settings import EnvSettings, env, integer, number

logger = logging.getLogger(__name__)

EVENT_ID = uuid.UUID("A1B2C3D4-E5F6-4A5B-8C9D-0E1F2A3B4C5D")
"""The original design's backplane event id."""
RAISER_ID = uuid.UUID("E8B2B7D1-8A7E-4C2E-9C8D-6B7C1A2B3C4D")
"""The original design's raiser id."""

PACK_ACTION = "pack"
"""The `action` of a wire message that carries several messages in `items`."""
PACK_PROTOCOL = 2
"""The lowest `InstanceInfo.protocol` (eventbroker's `PROTOCOL`) of a release that reads packs."""
MAX_PACK_ITEMS = 10_000
"""A received pack with more items is refused whole (the messages-lost path)."""
_ENVELOPE_MARGIN = 2048
"""Bytes kept free in a pack's envelope for the envelope's own fields (ids, times, trace)."""

_BACK_ONLINE = {
    ConnectionState.CONNECTED: False,
    ConnectionState.RECONNECTED: True,
    ConnectionState.SUBSCRIPTION_RECREATED: True,
}
_ACTIONS = {action.value: action for action in BackplaneMessageAction}
_ENTRY_ACTIONS = frozenset(
    {
        BackplaneMessageAction.ENTRY_SET,
        BackplaneMessageAction.ENTRY_REMOVE,
        BackplaneMessageAction.ENTRY_EXPIRE,
    }
)


@attrs.frozen
class BackplaneOptions(EnvSettings):
    """Options of an `EventBrokerBackplane`; `from_env()` reads the ``CACHE_BACKPLANE_*``
    variables."""

    coalesce_window: float = attrs.field(
        default=0.002,
        converter=_seconds,
        validator=number(minimum=0, maximum=1, what="a number of seconds", note="0: no packs"),
        metadata=env("CACHE_BACKPLANE_COALESCE_WINDOW"),
    )
    """How long messages published after a send wait to leave together (0: one envelope per
    message, as releases before packs did)."""
    coalesce_max_messages: int = attrs.field(
        default=100,
        validator=integer(minimum=2, maximum=MAX_PACK_ITEMS),
        metadata=env("CACHE_BACKPLANE_COALESCE_MAX_MESSAGES"),
    )
    """A pack leaves as soon as it holds this many messages."""


@attrs.frozen
class BackplaneWireMessage:
    """A `BackplaneMessage` as the event's param (plain JSON fields, versioned).

    Changes are additive within version 1: new `action` values (``tag_remove``,
    ``tag_expire``, ``pack``) are not understood by a release that does not know them (before
    packs: ignored, logged once a minute; since: the messages-lost path), and every field an
    older release sends is still read the same way."""

    cache_key: str
    action: str
    source_id: str = ""
    timestamp: float = 0.0
    """A pack: its newest message's."""
    cache_name: str = ""
    """The sending cache's name ("" from a publisher without a cache: matches every cache)."""
    version: int = 1
    items: Any = None
    """A pack's messages, flat: ``[cache_key, action, timestamp, cache_key, ...]`` (one level
    of nesting keeps the receiver's depth check on its fast path); absent otherwise. Read by
    `decode_pack`, which checks every item."""

    @classmethod
    def from_message(cls, message: BackplaneMessage, cache_name: str) -> BackplaneWireMessage:
        return cls(
            message.cache_key,
            message.action.value,
            message.source_id,
            message.timestamp,
            cache_name,
        )

    @classmethod
    def pack(cls, messages: Sequence[BackplaneMessage], cache_name: str) -> BackplaneWireMessage:
        """Messages of one source as one wire message."""
        return cls(
            "",
            PACK_ACTION,
            messages[0].source_id,
            max(m.timestamp for m in messages),
            cache_name,
            items=[f for m in messages for f in (m.cache_key, m.action.value, m.timestamp)],
        )

    def to_message(self) -> BackplaneMessage:
        return BackplaneMessage(
            cache_key=self.cache_key,
            action=BackplaneMessageAction(self.action),
            source_id=self.source_id,
            timestamp=self.timestamp,
        )


# `items` is left out of single messages (what an older release sends and reads)
converter.register_unstructure_hook(
    BackplaneWireMessage,
    make_dict_unstructure_fn(BackplaneWireMessage, converter, items=override(omit_if_default=True)),
)


def decode_pack(wire: BackplaneWireMessage) -> tuple[list[BackplaneMessage], int, int]:
    """A pack's messages, the number of items refused (not ``str, str, number``; all of them
    when `items` is not a list of at most `MAX_PACK_ITEMS` triples) and the number with an
    action this release does not know. Total: never raises."""
    items = wire.items
    if type(items) is not list:
        return [], 1, 0
    count, extra = divmod(len(items), 3)
    if count > MAX_PACK_ITEMS:
        return [], count, 0
    source = wire.source_id if type(wire.source_id) is str else ""
    messages: list[BackplaneMessage] = []
    append = messages.append
    trusted = BackplaneMessage.trusted
    refused, unknown = 1 if extra else 0, 0
    actions = _ACTIONS
    for key, name, stamp in zip(items[0::3], items[1::3], items[2::3], strict=False):
        kind = type(stamp)
        if type(key) is not str or type(name) is not str or (kind is not float and kind is not int):
            refused += 1
            continue
        action = actions.get(name)
        if action is None:
            unknown += 1
            continue
        try:
            append(trusted(key, action, source, float(stamp)))
        except OverflowError:  # an int beyond float
            refused += 1
    return messages, refused, unknown


def item_bytes(message: BackplaneMessage) -> int:
    """An upper bound of the bytes `message` takes in a pack's ``items`` (its JSON, a comma)."""
    key = encode_basestring(message.cache_key)
    size = len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass"))
    return size + len(message.action.value) + 29  # quotes, commas, a float of <= 24 chars


def split_packs(
    messages: Sequence[BackplaneMessage], max_count: int, max_bytes: int
) -> list[tuple[int, int]]:
    """`messages` cut, in order, into ``(start, stop)`` runs of at most `max_count` messages of
    one source whose items fit `max_bytes`; a message too large to share an envelope is a run
    of its own (sent as a single message)."""
    runs: list[tuple[int, int]] = []
    start = size = 0
    for index, message in enumerate(messages):
        cost = item_bytes(message)
        if index > start and (
            index - start >= max_count
            or size + cost > max_bytes
            or message.source_id != messages[start].source_id
        ):
            runs.append((start, index))
            start, size = index, 0
        size += cost
    if start < len(messages):
        runs.append((start, len(messages)))
    return runs


def _pack_key(message: BackplaneMessage) -> tuple[str, str, str]:
    action = message.action
    kind = "entry" if action in _ENTRY_ACTIONS else action.value
    return kind, message.cache_key, message.source_id


def _replaces(new: BackplaneMessage, old: BackplaneMessage) -> bool:
    """Whether applying `new` alone leaves a receiver as applying `old` then `new` does (same
    key, nothing between them that touches other keys): same action or a remove or expire after
    a set, not older. An expire keeps a mark a set or remove would lose; a set after a remove
    would keep a value the remove dropped."""
    if new.timestamp < old.timestamp:
        return False
    return new.action is old.action or (
        old.action is BackplaneMessageAction.ENTRY_SET and new.action in _ENTRY_ACTIONS
    )


Pending = tuple[BackplaneMessage, EntryOptions]


class Pack:
    """Messages waiting to leave together, in the order published. A newer message for a key
    (entry, tag or clear) replaces an older one when the receiver would end the same
    (`_replaces`), and no clear or tag message came between them (an entry's) or nothing came
    after the older one (a clear's or a tag's). Not thread-safe."""

    __slots__ = ("_barrier", "_index", "items", "live")

    def __init__(self) -> None:
        self.items: list[Pending | None] = []
        self.live = 0
        self._index: dict[tuple[str, str, str], int] = {}
        self._barrier = -1

    def __len__(self) -> int:
        return self.live

    def add(self, message: BackplaneMessage, options: EntryOptions) -> None:
        items = self.items
        key = _pack_key(message)
        at = self._index.get(key)
        entry = key[0] == "entry"
        if at is not None and (at > self._barrier if entry else at == len(items) - 1):
            old = items[at]
            if old is not None and _replaces(message, old[0]):
                items[at] = None
                self.live -= 1
        self._index[key] = len(items)
        if not entry:
            self._barrier = len(items)
        items.append((message, options))
        self.live += 1

    def take(self) -> list[Pending]:
        """Everything waiting, in order; the pack is empty after."""
        taken = [item for item in self.items if item is not None]
        self.items = []
        self.live = 0
        self._index = {}
        self._barrier = -1
        return taken


class _Route(enum.Enum):
    DIRECT = "direct"  # send now, as before packs
    LEAD = "lead"  # send now and open a window
    PACKED = "packed"  # waits in the pack


class EventBrokerBackplane:
    """A `Backplane` over an `EventBroker` (start the broker yourself; one backplane per cache).

    ```python
    backplane = EventBrokerBackplane(registry, broker)
    cache = HybridCache(CacheOptions(name="shop"), backplane=backplane)
    ```

    `coalesce_window` (seconds; 0 turns packs off) and `coalesce_max_messages` win over
    `options` (`BackplaneOptions.from_env()` reads them from the environment). `clock`
    (monotonic seconds) times the window; injectable for tests.
    """

    def __init__(
        self,
        registry: EventRegistry,
        broker: EventBroker,
        *,
        event_id: uuid.UUID | str = EVENT_ID,
        raiser_id: uuid.UUID | str = RAISER_ID,
        coalesce_window: float | None = None,
        coalesce_max_messages: int | None = None,
        options: BackplaneOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.broker = broker
        self.event = registry.get(event_id, param_type=BackplaneWireMessage)
        self.event_id = self.event.id
        self.raiser_id = uuid.UUID(str(raiser_id))
        given: dict[str, Any] = {
            name: value
            for name, value in (
                ("coalesce_window", coalesce_window),
                ("coalesce_max_messages", coalesce_max_messages),
            )
            if value is not None
        }
        self.options = attrs.evolve(options if options is not None else BackplaneOptions(), **given)
        self.refused_items = 0
        """Pack items received that could not be read (a wrong shape or type)."""
        self._options: BackplaneSubscriptionOptions | None = None
        self._subscriptions: list[Subscription] = []
        self._log = LogLimiter(logger, time.monotonic)  # once per cause per minute
        self._clock = clock
        self._cond = threading.Condition()
        self._pack = Pack()
        self._busy = False  # a send of this backplane is under way (keeps packs in order)
        self._quiet_until = float("-inf")  # the open window's end
        self._flusher: threading.Thread | None = None
        self._stopping = False

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
        """Send what waits in the pack, stop listening and stop the flusher thread."""
        self.flush()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self._subscriptions = []
        self._options = None

    def publish(self, message: BackplaneMessage, options: EntryOptions) -> None:
        """Raise the backplane event with `RAISE_BROADCAST` now, or add `message` to the pack
        (see the module doc; nothing with `options.skip_backplane_notifications`).
        `BackplaneError` when the broker refuses a message sent now; a pack the broker refuses
        later goes to the cache's auto-recovery queue."""
        if options.skip_backplane_notifications:
            return
        route = self._route(message, options)
        if route is _Route.PACKED:
            return
        try:
            self._raise_now(self._wire(message))
        finally:
            if route is _Route.LEAD:
                self._sent()

    async def publish_async(self, message: BackplaneMessage, options: EntryOptions) -> None:
        """`publish` for asyncio code."""
        if options.skip_backplane_notifications:
            return
        route = self._route(message, options)
        if route is _Route.PACKED:
            return
        try:
            await self.event.raise_async(
                self.raiser_id, self._wire(message), EventRaiseOption.RAISE_BROADCAST
            )
        except PublishError as exc:
            raise _refused(exc) from exc
        finally:
            if route is _Route.LEAD:
                self._sent()

    def _raise_now(self, wire: BackplaneWireMessage) -> None:
        try:
            self.event.raise_(self.raiser_id, wire, EventRaiseOption.RAISE_BROADCAST)
        except PublishError as exc:
            raise _refused(exc) from exc

    def flush(self) -> None:
        """Send what waits in the pack now (at shutdown, in tests). A refused pack goes to the
        cache's auto-recovery queue."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            if not self._pack:
                return
            batch = self._pack.take()
            self._busy = True
        self._send_batch(batch)

    # ---------------------------------------------------------------- packs, for a sender

    def envelopes(self, messages: Sequence[BackplaneMessage]) -> list[Sequence[BackplaneMessage]]:
        """How `messages` travel now: in packs within the limits while packs are on and every
        instance reads them, else one per message (`CacheInvalidator` sends these)."""
        if self.options.coalesce_window <= 0 or not self._packs_readable():
            return [(m,) for m in messages]
        budget = self._pack_budget()
        runs = split_packs(messages, self.options.coalesce_max_messages, budget)
        return [messages[start:stop] for start, stop in runs]

    def publish_envelope(self, messages: Sequence[BackplaneMessage]) -> None:
        """Send `messages` now as one envelope (a single message for one; see `envelopes`).
        `BackplaneError` when the broker refuses; `ValueError` when it is too large."""
        if not messages:
            return
        name = self._options.cache_name if self._options is not None else ""
        wire = (
            BackplaneWireMessage.from_message(messages[0], name)
            if len(messages) == 1
            else BackplaneWireMessage.pack(messages, name)
        )
        self._raise_now(wire)

    def _packs_readable(self) -> bool:
        """Whether every instance heard from reads packs (one not yet heard from is assumed
        to). Up to date: the broker keeps the lowest protocol as heartbeats arrive."""
        lowest = self.broker.lowest_peer_protocol
        return lowest is None or lowest >= PACK_PROTOCOL

    def _pack_budget(self) -> int:
        """Bytes a pack's items may take so that its envelope stays within the broker's
        `max_message_bytes`."""
        broker = self.broker
        fixed = (
            broker.options.application_name,
            broker.options.site_id or "",
            broker.host or "",
            self._options.cache_name if self._options is not None else "",
        )
        overhead = _ENVELOPE_MARGIN + sum(len(encode_basestring(t).encode()) for t in fixed)
        return max(broker.options.max_message_bytes - overhead, 64)

    def _route(self, message: BackplaneMessage, options: EntryOptions) -> _Route:
        if self.options.coalesce_window <= 0:
            return _Route.DIRECT
        with self._cond:
            if not self._pack and not self._busy:
                if not self._packs_readable():
                    return _Route.DIRECT
                if self._clock() >= self._quiet_until:
                    self._busy = True
                    return _Route.LEAD
            pack = self._pack
            pack.add(message, options)
            if self._flusher is None:
                self._start_flusher()
            elif len(pack) == 1 or len(pack) >= self.options.coalesce_max_messages:
                self._cond.notify_all()  # a new deadline, or full: the flusher looks again
            return _Route.PACKED

    def _sent(self) -> None:
        """A send is over: the window opens now."""
        with self._cond:
            self._busy = False
            self._quiet_until = self._clock() + self.options.coalesce_window
            self._cond.notify_all()

    def _start_flusher(self) -> None:
        self._stopping = False
        thread = threading.Thread(target=self._run_flusher, name="cache-backplane-flush")
        thread.daemon = True
        self._flusher = thread
        thread.start()

    def _run_flusher(self) -> None:
        """Send the pack when its window closes or it is full; ends after `unsubscribe`
        once nothing waits."""
        cond = self._cond
        while True:
            with cond:
                while True:
                    if self._pack and not self._busy:
                        if self._stopping or len(self._pack) >= self.options.coalesce_max_messages:
                            break
                        wait = self._quiet_until - self._clock()
                        if wait <= 0:
                            break
                        cond.wait(wait)
                    elif self._stopping and not self._pack:
                        self._flusher = None
                        return
                    else:
                        cond.wait()
                batch = self._pack.take()
                self._busy = True
            self._send_batch(batch)

    def _send_batch(self, batch: list[Pending]) -> None:
        """Send what was taken from the pack (this backplane's `_busy` is set; cleared here).
        Never raises: what the broker refuses goes to the publish-failed handler."""
        try:
            messages = [message for message, _ in batch]
            sent = 0
            for group in self.envelopes(messages):
                try:
                    self.publish_envelope(group)
                except BackplaneError as exc:
                    self._publish_failed(batch[sent:], exc)
                    return
                except (TypeError, ValueError) as exc:  # too large even alone: retry won't help
                    self._log.log(
                        logging.ERROR,
                        ("refused", type(exc).__name__),
                        "backplane message for %r refused (%s); not queued",
                        group[0].cache_key[:100],
                        exc,
                    )
                sent += len(group)
        except Exception:  # never kill the flusher
            logger.exception("backplane: sending a pack failed")
        finally:
            self._sent()

    def _publish_failed(self, items: list[Pending], exc: BackplaneError) -> None:
        options = self._options
        handler = None if options is None else options.publish_failed_handler
        if handler is None:
            self._log.warn(
                "pack-lost",
                "backplane: %d message(s) of a pack could not be sent and no cache queues "
                "them (%s)",
                len(items),
                exc,
            )
            return
        handler(items, exc)

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
        if wire.action == PACK_ACTION:
            self._on_pack(wire, options)
            return
        try:
            message = wire.to_message()
        except (TypeError, ValueError):  # a newer peer: every such message would log
            self._unreadable(options, f"action {str(wire.action)[:40]!r}")
            return
        options.incoming_message_handler(message)

    def _on_pack(self, wire: BackplaneWireMessage, options: BackplaneSubscriptionOptions) -> None:
        messages, refused, unknown = decode_pack(wire)
        if messages:
            batch = options.incoming_messages_handler
            if batch is not None:
                batch(messages)
            else:
                for message in messages:
                    options.incoming_message_handler(message)
        if refused:
            self.refused_items += refused
            self._unreadable(options, "unreadable items in a pack")
        elif unknown:
            self._unreadable(options, "unknown actions in a pack")

    def _unreadable(self, options: BackplaneSubscriptionOptions, cause: str) -> None:
        """A message this release cannot read may have been an invalidation: take the
        messages-lost path (expire every L1 entry, values kept for fail-safe)."""
        self._log.warn(
            cause,
            "backplane message not understood (%s: a newer release, or a bad sender); "
            "expiring local entries as if messages were lost",
            cause,
        )
        if options.messages_lost_handler is not None:
            options.messages_lost_handler()

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


def _refused(exc: PublishError) -> BackplaneError:
    return BackplaneError(f"event broker cannot publish backplane message: {exc}")
