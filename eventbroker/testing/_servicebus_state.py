"""Entities, messages and locks of the loopback Service Bus broker (no I/O, one thread)."""

from __future__ import annotations

import heapq
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from ._servicebus_codec import StoredMessage, encode_delivery, with_dead_letter_properties
from ._servicebus_rules import DEFAULT_RULE, MessageView, Rule, message_view

__all__ = [
    "BrokerState",
    "Entity",
    "EntityProperties",
    "Entry",
    "Topic",
]

MAX_NAME_LENGTH = 50
MIN_AUTO_DELETE_ON_IDLE = 300.0
# Service Bus' "never" for durations: TimeSpan.MaxValue
FOREVER = 10675199 * 86400.0


def _positive(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class EntityProperties:
    """Settings of a queue or subscription (durations in seconds)."""

    lock_duration: float = attrs.field(default=60.0, validator=_positive)
    max_delivery_count: int = attrs.field(default=10, validator=_positive)
    default_message_time_to_live: float = attrs.field(default=FOREVER, validator=_positive)
    auto_delete_on_idle: float = attrs.field(default=FOREVER, validator=_positive)
    dead_lettering_on_message_expiration: bool = False


class Entry:
    """One message in one queue or subscription."""

    __slots__ = (
        "attempts",
        "enqueued_ms",
        "expires_at",
        "lock_token",
        "locked_until",
        "message",
        "sequence_number",
    )

    def __init__(
        self, message: StoredMessage, sequence_number: int, enqueued: float, ttl: float
    ) -> None:
        self.message = message
        self.sequence_number = sequence_number
        self.enqueued_ms = int(enqueued * 1000)
        self.expires_at = enqueued + ttl
        self.attempts = 0
        self.lock_token: uuid.UUID | None = None
        self.locked_until = 0.0

    def encode(self, *, locked: bool) -> bytes:
        return encode_delivery(
            self.message,
            sequence_number=self.sequence_number,
            enqueued_ms=self.enqueued_ms,
            delivery_count=self.attempts,
            locked_until_ms=int(self.locked_until * 1000) if locked else None,
            first_acquirer=self.attempts == 0,
        )


class Entity:
    """A message store a receiver can attach to: a queue, a subscription or a dead-letter queue."""

    def __init__(
        self, path: str, properties: EntityProperties, *, dead_letter: Entity | None, now: float
    ) -> None:
        self.path = path
        self.properties = properties
        self.dead_letter = dead_letter
        self.messages: dict[int, Entry] = {}  # every live message, in sequence order
        self.available: deque[Entry] = deque()
        self.locked: dict[uuid.UUID, Entry] = {}
        self.next_sequence = 1
        self.consumers: list[Any] = []  # proton sender links, owned by the AMQP layer
        self.round_robin = 0
        self.last_activity = now
        self.created_at = now
        self.deleted = False
        self.rules: dict[str, Rule] = {"$default": DEFAULT_RULE}  # subscriptions only

    def enqueue(self, message: StoredMessage, now: float, max_ttl: float = FOREVER) -> Entry:
        """Store ``message``; it lives for the least of its own time-to-live, this entity's
        DefaultMessageTimeToLive and ``max_ttl`` (the topic's)."""
        ttl = min(self.properties.default_message_time_to_live, max_ttl)
        if message.ttl_ms is not None:
            ttl = min(ttl, message.ttl_ms / 1000.0)
        entry = Entry(message, self.next_sequence, now, ttl)
        self.next_sequence += 1
        self.messages[entry.sequence_number] = entry
        self.available.append(entry)
        return entry


class Topic:
    """A topic: fans every message out to its subscriptions."""

    def __init__(self, name: str, properties: EntityProperties, now: float) -> None:
        self.name = name
        self.properties = properties
        self.subscriptions: dict[str, Entity] = {}  # lower-case name -> subscription
        self.created_at = now


def _view(message: StoredMessage) -> MessageView:
    try:
        return message_view(message.bare)
    except Exception:  # not decodable by proton: only a TrueFilter takes it
        return {}, {}


class BrokerState:
    """Everything the broker stores. Not thread-safe: the reactor thread owns it."""

    def __init__(
        self,
        *,
        lock_duration: float,
        max_delivery_count: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.defaults = EntityProperties(
            lock_duration=lock_duration, max_delivery_count=max_delivery_count
        )
        self.clock = clock
        self.topics: dict[str, Topic] = {}  # lower-case name -> topic
        self.queues: dict[str, Entity] = {}  # lower-case name -> queue
        self._lock_heap: list[tuple[float, uuid.UUID, Entity]] = []
        # hooks for the AMQP layer: messages became available / an entity was deleted
        self.on_available: Callable[[Entity], None] = lambda _entity: None
        self.on_deleted: Callable[[Entity], None] = lambda _entity: None

    # ---- entity management -------------------------------------------------------------
    def _new_entity(self, path: str, properties: EntityProperties) -> Entity:
        now = self.clock()
        dlq = Entity(
            f"{path}/$DeadLetterQueue",
            attrs.evolve(properties, default_message_time_to_live=FOREVER),
            dead_letter=None,
            now=now,
        )
        return Entity(path, properties, dead_letter=dlq, now=now)

    def create_topic(self, name: str, properties: EntityProperties | None = None) -> Topic:
        key = name.lower()
        if key in self.topics or key in self.queues:
            raise KeyError(name)
        topic = Topic(name, properties or self.defaults, self.clock())
        self.topics[key] = topic
        return topic

    def create_queue(self, name: str, properties: EntityProperties | None = None) -> Entity:
        key = name.lower()
        if key in self.topics or key in self.queues:
            raise KeyError(name)
        queue = self._new_entity(name, properties or self.defaults)
        self.queues[key] = queue
        return queue

    def create_subscription(
        self, topic: str, name: str, properties: EntityProperties | None = None
    ) -> Entity:
        owner = self.topics[topic.lower()]
        key = name.lower()
        if key in owner.subscriptions:
            raise KeyError(name)
        sub = self._new_entity(f"{owner.name}/Subscriptions/{name}", properties or self.defaults)
        owner.subscriptions[key] = sub
        return sub

    def delete_topic(self, name: str) -> None:
        topic = self.topics.pop(name.lower())
        for sub in topic.subscriptions.values():
            self._mark_deleted(sub)

    def delete_queue(self, name: str) -> None:
        self._mark_deleted(self.queues.pop(name.lower()))

    def delete_subscription(self, topic: str, name: str) -> None:
        self._mark_deleted(self.topics[topic.lower()].subscriptions.pop(name.lower()))

    def _mark_deleted(self, entity: Entity) -> None:
        for gone in (entity, entity.dead_letter):
            if gone is not None:
                gone.deleted = True
                self.on_deleted(gone)

    def resolve(self, path: str) -> Entity | Topic | None:
        """Find the entity an AMQP address path names (case-insensitive)."""
        parts = path.strip("/").split("/")
        dead_letter = len(parts) > 1 and parts[-1].lower() == "$deadletterqueue"
        if dead_letter:
            parts = parts[:-1]
        found: Entity | Topic | None = None
        if len(parts) == 1:
            key = parts[0].lower()
            found = self.queues[key] if key in self.queues else self.topics.get(key)
        elif len(parts) == 3 and parts[1].lower() == "subscriptions":
            topic = self.topics.get(parts[0].lower())
            found = topic.subscriptions.get(parts[2].lower()) if topic else None
        if dead_letter:
            return found.dead_letter if isinstance(found, Entity) else None
        return found

    def entities(self) -> Iterator[Entity]:
        yield from self.queues.values()
        for topic in self.topics.values():
            yield from topic.subscriptions.values()

    # ---- messages ------------------------------------------------------------------------
    def publish(self, target: Entity | Topic, messages: list[StoredMessage]) -> None:
        now = self.clock()
        if not isinstance(target, Topic):
            for message in messages:
                target.enqueue(message, now)
            self.on_available(target)
            return
        views: list[MessageView | None] = [None] * len(messages)
        topic_ttl = target.properties.default_message_time_to_live
        for entity in target.subscriptions.values():
            rules = entity.rules.values()
            accepts_all = any(rule.accepts_all for rule in rules)
            taken = False
            for i, message in enumerate(messages):
                if not accepts_all:
                    view = views[i]
                    if view is None:
                        view = views[i] = _view(message)
                    if not any(rule.matches(view) for rule in rules):
                        continue
                entity.enqueue(message, now, topic_ttl)
                taken = True
            if taken:
                self.on_available(entity)

    def next_available(self, entity: Entity, now: float) -> Entry | None:
        """Pop the next deliverable message, dropping expired ones."""
        available = entity.available
        while available:
            entry = available.popleft()
            if entry.sequence_number not in entity.messages or entry.lock_token is not None:
                continue  # settled or re-locked meanwhile
            if entry.expires_at <= now:
                self._expire(entity, entry)
                continue
            return entry
        return None

    def _expire(self, entity: Entity, entry: Entry) -> None:
        del entity.messages[entry.sequence_number]
        if entity.properties.dead_lettering_on_message_expiration:
            self.dead_letter(
                entity, entry, "TTLExpiredException", "The message expired and was dead lettered."
            )

    def lock(self, entity: Entity, entry: Entry, now: float) -> uuid.UUID:
        token = uuid.uuid4()
        entry.lock_token = token
        entry.locked_until = now + entity.properties.lock_duration
        entity.locked[token] = entry
        heapq.heappush(self._lock_heap, (entry.locked_until, token, entity))
        return token

    def remove(self, entity: Entity, entry: Entry) -> None:
        entity.messages.pop(entry.sequence_number, None)

    def settle(
        self,
        entity: Entity,
        token: uuid.UUID,
        outcome: str,
        *,
        reason: str | None = None,
        description: str | None = None,
    ) -> bool:
        """Apply complete / abandon / release / dead-letter to a locked message.

        Returns False when the lock is unknown or already lost.
        """
        entry = self._held(entity, token)
        if entry is None:
            return False
        del entity.locked[token]
        entity.last_activity = self.clock()
        entry.lock_token = None
        if outcome == "complete":
            del entity.messages[entry.sequence_number]
        elif outcome == "dead-letter":
            self.dead_letter(entity, entry, reason, description)
        elif outcome == "release":
            self._make_available(entity, entry)
        else:  # abandon
            self._failed_attempt(entity, entry)
        return True

    def _held(self, entity: Entity, token: uuid.UUID) -> Entry | None:
        """The entry ``token`` still locks, or None; a lock past its time is lost right here
        (the periodic expiry may not have run yet)."""
        entry = entity.locked.get(token)
        if entry is None:
            return None
        if entry.locked_until <= self.clock():
            del entity.locked[token]
            entry.lock_token = None
            self._failed_attempt(entity, entry)
            return None
        return entry

    def renew(self, entity: Entity, token: uuid.UUID, now: float) -> float | None:
        entry = self._held(entity, token)
        if entry is None:
            return None
        entry.locked_until = now + entity.properties.lock_duration
        heapq.heappush(self._lock_heap, (entry.locked_until, token, entity))
        return entry.locked_until

    def _failed_attempt(self, entity: Entity, entry: Entry) -> None:
        entry.attempts += 1
        if entry.attempts >= entity.properties.max_delivery_count:
            self.dead_letter(
                entity,
                entry,
                "MaxDeliveryCountExceeded",
                f"Message could not be consumed after {entry.attempts} delivery attempts.",
            )
        else:
            self._make_available(entity, entry)

    def _make_available(self, entity: Entity, entry: Entry) -> None:
        entity.available.appendleft(entry)
        self.on_available(entity)

    def dead_letter(
        self, entity: Entity, entry: Entry, reason: str | None, description: str | None
    ) -> None:
        dlq = entity.dead_letter
        if dlq is None:  # dead-lettering from a dead-letter queue: the message stays there
            self._make_available(entity, entry)
            return
        entity.messages.pop(entry.sequence_number, None)
        moved = dlq.enqueue(
            with_dead_letter_properties(entry.message, entity.path, reason, description),
            self.clock(),
        )
        moved.attempts = entry.attempts
        self.on_available(dlq)

    def expire_locks(self, now: float) -> None:
        """Lose every lock whose time has passed: the message counts a failed attempt."""
        heap = self._lock_heap
        while heap and heap[0][0] <= now:
            locked_until, token, entity = heapq.heappop(heap)
            entry = entity.locked.get(token)
            if entry is None or entry.locked_until != locked_until or entity.deleted:
                continue  # settled, renewed or gone
            del entity.locked[token]
            entry.lock_token = None
            self._failed_attempt(entity, entry)

    def drop_expired(self, now: float) -> None:
        """Drop expired messages waiting at the head of every queue (the oldest ones), so a
        subscription nobody reads does not grow without bound."""
        for entity in self.entities():
            available = entity.available
            while available and available[0].expires_at <= now:
                entry = available.popleft()
                if entry.sequence_number in entity.messages and entry.lock_token is None:
                    self._expire(entity, entry)

    def expire_idle(self, now: float) -> list[str]:
        """Delete subscriptions idle longer than their AutoDeleteOnIdle; return their paths."""
        gone = []
        for topic in self.topics.values():
            for key, sub in list(topic.subscriptions.items()):
                if sub.consumers or (sub.dead_letter and sub.dead_letter.consumers):
                    sub.last_activity = now
                    continue
                if now - sub.last_activity > sub.properties.auto_delete_on_idle:
                    del topic.subscriptions[key]
                    self._mark_deleted(sub)
                    gone.append(sub.path)
        return gone

    def peek(self, entity: Entity, from_sequence: int, count: int, now: float) -> list[Entry]:
        out = []
        for seq, entry in entity.messages.items():
            if seq < from_sequence or entry.expires_at <= now:
                continue
            out.append(entry)
            if len(out) >= count:
                break
        return out
