"""Entities, messages and locks of the loopback Service Bus broker (no I/O, one thread).

A message in a queue or subscription is, at any time, exactly one of: scheduled (held until its
enqueue time, outside ``Entity.messages``), available (waiting in its queue, or in its session's),
locked (by a peek-lock receiver, or by the session lock of a session receiver), or deferred
(only ``receive-by-sequence-number`` gets it). Settling, dead-lettering or expiry removes it.
Methods that are new with sessions, deferral and scheduling take ``now`` instead of reading the
clock, so that the model test drives time.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from ._servicebus_codec import (
    AmqpDecodeError,
    StoredMessage,
    encode_delivery,
    set_application_properties,
    with_dead_letter_properties,
)
from ._servicebus_rules import DEFAULT_RULE, MessageView, Rule, message_view

__all__ = [
    "BrokerState",
    "Entity",
    "EntityProperties",
    "Entry",
    "MessageNotFound",
    "Session",
    "SessionCannotBeLocked",
    "SessionLockLost",
    "SessionRequired",
    "Topic",
]

MAX_NAME_LENGTH = 50
MIN_AUTO_DELETE_ON_IDLE = 300.0
# Service Bus' "never" for durations: TimeSpan.MaxValue
FOREVER = 10675199 * 86400.0


class StateError(Exception):
    """A request the state refuses; the AMQP layer answers it with a Service Bus condition."""


class MessageNotFound(StateError):
    """A sequence number names no deferred (or scheduled) message."""


class SessionLockLost(StateError):
    """The session is not (or no longer) locked by the one asking."""


class SessionCannotBeLocked(StateError):
    """Another receiver holds the session's lock."""


class SessionRequired(StateError):
    """A message without a session id sent to an entity that requires sessions."""


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
    requires_session: bool = False


class Entry:
    """One message in one queue or subscription."""

    __slots__ = (
        "attempts",
        "deferred",
        "enqueued_ms",
        "expires_at",
        "lock_token",
        "locked_until",
        "message",
        "sequence_number",
        "session_id",
    )

    def __init__(
        self,
        message: StoredMessage,
        sequence_number: int,
        enqueued: float,
        ttl: float,
        session_id: str | None = None,
    ) -> None:
        self.message = message
        self.sequence_number = sequence_number
        self.enqueued_ms = int(enqueued * 1000)
        self.expires_at = enqueued + ttl
        self.attempts = 0
        self.lock_token: uuid.UUID | None = None
        self.locked_until = 0.0
        self.deferred = False
        self.session_id = session_id  # set in entities that require sessions

    def encode(self, *, locked: bool) -> bytes:
        return encode_delivery(
            self.message,
            sequence_number=self.sequence_number,
            enqueued_ms=self.enqueued_ms,
            delivery_count=self.attempts,
            locked_until_ms=int(self.locked_until * 1000) if locked else None,
            first_acquirer=self.attempts == 0,
        )


def insert_in_order(waiting: deque[Entry], entry: Entry) -> None:
    """Put ``entry`` back among the waiting messages by sequence number (a returned message
    is usually among the oldest: the scan stops early)."""
    number = entry.sequence_number
    for index, other in enumerate(waiting):
        if other.sequence_number > number:
            waiting.insert(index, entry)
            return
    waiting.append(entry)


class Session:
    """A session of an entity that requires sessions: its own FIFO, state and lock."""

    __slots__ = ("available", "holder", "id", "locked_until", "state", "state_updated")

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.available: deque[Entry] = deque()
        self.holder: object | None = None  # who holds the lock (an AMQP link; compared with ==)
        self.locked_until = 0.0
        self.state: bytes | None = None
        self.state_updated = 0.0

    def held(self, now: float) -> bool:
        return self.holder is not None and self.locked_until > now


class Scheduled:
    """A message held until its scheduled enqueue time (``sequence_number`` is reserved)."""

    __slots__ = ("due", "message", "sequence_number")

    def __init__(self, message: StoredMessage, sequence_number: int, due: float) -> None:
        self.message = message
        self.sequence_number = sequence_number
        self.due = due


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
        self.sessions: dict[str, Session] = {}  # entities that require sessions only
        self.scheduled: dict[int, Scheduled] = {}  # queues only (a topic holds its own)

    @property
    def requires_session(self) -> bool:
        return self.properties.requires_session

    def session(self, session_id: str) -> Session:
        """The session ``session_id`` (created on first use, as on Service Bus)."""
        found = self.sessions.get(session_id)
        if found is None:
            found = self.sessions[session_id] = Session(session_id)
        return found

    def queue_of(self, entry: Entry) -> deque[Entry]:
        """Where ``entry`` waits while available: its session's queue or the entity's."""
        if entry.session_id is not None:
            return self.session(entry.session_id).available
        return self.available

    def queues(self) -> Iterator[deque[Entry]]:
        yield self.available
        for session in self.sessions.values():
            yield session.available

    def enqueue(
        self,
        message: StoredMessage,
        now: float,
        max_ttl: float = FOREVER,
        sequence_number: int | None = None,
    ) -> Entry:
        """Store ``message``; it lives for the least of its own time-to-live, this entity's
        DefaultMessageTimeToLive and ``max_ttl`` (the topic's). ``sequence_number``: one
        reserved when the message was scheduled.

        Raises `SessionRequired` for a message without a session id when this entity
        requires sessions.
        """
        self.check_sessions([message])
        session_id = message.session_id if self.requires_session else None
        ttl = min(self.properties.default_message_time_to_live, max_ttl)
        if message.ttl_ms is not None:
            ttl = min(ttl, message.ttl_ms / 1000.0)
        if sequence_number is None:
            sequence_number = self.reserve_sequence()
        entry = Entry(message, sequence_number, now, ttl, session_id)
        self.messages[entry.sequence_number] = entry
        waiting = self.queue_of(entry)
        if waiting and waiting[-1].sequence_number > sequence_number:
            insert_in_order(waiting, entry)  # a scheduled message, numbered when scheduled
        else:
            waiting.append(entry)
        return entry

    def check_sessions(self, messages: list[StoredMessage]) -> None:
        """`SessionRequired` when this entity requires sessions and a message has none."""
        if self.requires_session and any(m.session_id is None for m in messages):
            raise SessionRequired(
                f"The SessionId was not set on a message, and it cannot be sent to the "
                f"entity '{self.path}': it requires sessions."
            )

    def reserve_sequence(self) -> int:
        number = self.next_sequence
        self.next_sequence += 1
        return number


class Topic:
    """A topic: fans every message out to its subscriptions."""

    def __init__(self, name: str, properties: EntityProperties, now: float) -> None:
        self.name = name
        self.properties = properties
        self.subscriptions: dict[str, Entity] = {}  # lower-case name -> subscription
        self.created_at = now
        self.scheduled: dict[int, Scheduled] = {}
        self.next_sequence = 1
        self.deleted = False

    def reserve_sequence(self) -> int:
        number = self.next_sequence
        self.next_sequence += 1
        return number


def _acted_on(message: StoredMessage, rule: Rule, view: MessageView) -> StoredMessage:
    """The copy of ``message`` a subscription gets from a rule with an action (SET / REMOVE
    of application properties); the message itself if proton cannot decode it."""
    assert rule.action is not None
    values, removed = rule.action(view)
    try:
        bare = set_application_properties(message.bare, values, removed)
    except AmqpDecodeError:
        return message
    return message.with_bare(bare, {})


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
        self._schedule_heap: list[tuple[float, int, int, Entity | Topic]] = []
        self._schedule_order = 0  # ties in the heaps never compare entities
        self._session_heap: list[tuple[float, int, Entity, Session]] = []
        # hooks for the AMQP layer: messages became available / an entity was deleted
        self.on_available: Callable[[Entity], None] = lambda _entity: None
        self.on_deleted: Callable[[Entity], None] = lambda _entity: None

    # ---- entity management -------------------------------------------------------------
    def _new_entity(self, path: str, properties: EntityProperties) -> Entity:
        now = self.clock()
        dlq = Entity(
            f"{path}/$DeadLetterQueue",
            attrs.evolve(properties, default_message_time_to_live=FOREVER, requires_session=False),
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
        topic.deleted = True
        topic.scheduled.clear()
        for sub in topic.subscriptions.values():
            self._mark_deleted(sub)

    def delete_queue(self, name: str) -> None:
        self._mark_deleted(self.queues.pop(name.lower()))

    def delete_subscription(self, topic: str, name: str) -> None:
        self._mark_deleted(self.topics[topic.lower()].subscriptions.pop(name.lower()))

    def _mark_deleted(self, entity: Entity) -> None:
        entity.scheduled.clear()
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
    def publish(
        self, target: Entity | Topic, messages: list[StoredMessage], now: float | None = None
    ) -> None:
        """Enqueue ``messages`` on a queue, or fan them out to a topic's subscriptions (each
        subscription takes those one of its rules matches). A message scheduled for later is
        held until then (as `schedule` does).

        Raises `SessionRequired` (and stores none of them) when a queue requires sessions and a
        message has no session id; a subscription that requires sessions dead-letters such a
        message instead, as the topic cannot refuse it for one subscription.
        """
        if now is None:
            now = self.clock()
        due_ms = now * 1000
        later = [m for m in messages if m.scheduled_ms is not None and m.scheduled_ms > due_ms]
        if later and isinstance(target, Entity):
            target.check_sessions(messages)  # all or nothing
        if later:
            self.schedule(target, later, now)
            messages = [m for m in messages if m not in later]
        if not messages:
            return
        if not isinstance(target, Topic):
            target.check_sessions(messages)
            for message in messages:
                target.enqueue(message, now)
            self.on_available(target)
            return
        views: list[MessageView | None] = [None] * len(messages)
        topic_ttl = target.properties.default_message_time_to_live
        for entity in target.subscriptions.values():
            rules = list(entity.rules.values())
            takes_all = any(r.accepts_all for r in rules) and all(r.action is None for r in rules)
            taken = False
            for i, message in enumerate(messages):
                copy = message
                if not takes_all:
                    view = views[i]
                    if view is None:
                        view = views[i] = _view(message)
                    rule = next((r for r in rules if r.matches(view)), None)
                    if rule is None:
                        continue
                    if rule.action is not None:
                        copy = _acted_on(message, rule, view)
                try:
                    entity.enqueue(copy, now, topic_ttl)
                except SessionRequired as exc:
                    self._dead_letter_message(entity, message, "SessionIdIsMissing", str(exc), now)
                    continue
                taken = True
            if taken:
                self.on_available(entity)

    def next_available(
        self, entity: Entity, now: float, session: Session | None = None
    ) -> Entry | None:
        """Pop the next deliverable message (of ``session``, in an entity that requires
        sessions), dropping expired ones."""
        available = entity.available if session is None else session.available
        while available:
            entry = available.popleft()
            if (
                entity.messages.get(entry.sequence_number) is not entry
                or entry.lock_token is not None
                or entry.deferred
            ):
                continue  # settled, re-locked or deferred meanwhile
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
        """Lock ``entry`` for a peek-lock receiver; a message of a session shares its
        session's lock (and is released with it)."""
        token = uuid.uuid4()
        entry.lock_token = token
        entity.locked[token] = entry
        if entry.session_id is not None:
            entry.locked_until = entity.session(entry.session_id).locked_until
            return token
        entry.locked_until = now + entity.properties.lock_duration
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
        """Apply complete / abandon / release / defer / dead-letter to a locked message.

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
        elif outcome == "defer":
            entry.deferred = True
        else:  # abandon
            self._failed_attempt(entity, entry)
        return True

    def _held(self, entity: Entity, token: uuid.UUID) -> Entry | None:
        """The entry ``token`` still locks, or None; a lock past its time is lost right here
        (the periodic expiry may not have run yet)."""
        entry = entity.locked.get(token)
        if entry is None:
            return None
        now = self.clock()
        if entry.session_id is not None:
            session = entity.session(entry.session_id)
            if not session.held(now):
                self.release_session(entity, session, now)
                return None
            return entry
        if entry.locked_until <= now:
            del entity.locked[token]
            entry.lock_token = None
            self._failed_attempt(entity, entry)
            return None
        return entry

    def renew(self, entity: Entity, token: uuid.UUID, now: float) -> float | None:
        entry = self._held(entity, token)
        if entry is None:
            return None
        if entry.session_id is not None:  # Service Bus: renew the session lock instead
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
        if entry.deferred:  # back among the deferred: only its sequence number gets it
            return
        insert_in_order(entity.queue_of(entry), entry)
        self.on_available(entity)

    def dead_letter(
        self, entity: Entity, entry: Entry, reason: str | None, description: str | None
    ) -> None:
        dlq = entity.dead_letter
        if dlq is None:  # dead-lettering from a dead-letter queue: the message stays there
            self._make_available(entity, entry)
            return
        entity.messages.pop(entry.sequence_number, None)
        moved = self._dead_letter_message(entity, entry.message, reason, description, self.clock())
        moved.attempts = entry.attempts

    def _dead_letter_message(
        self,
        entity: Entity,
        message: StoredMessage,
        reason: str | None,
        description: str | None,
        now: float,
    ) -> Entry:
        dlq = entity.dead_letter
        assert dlq is not None
        moved = dlq.enqueue(
            with_dead_letter_properties(message, entity.path, reason, description), now
        )
        self.on_available(dlq)
        return moved

    def expire_locks(self, now: float) -> None:
        """Lose every message lock whose time has passed: the message counts a failed attempt.
        (Session locks expire in `expire_session_locks`.)"""
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
            for available in entity.queues():
                while available and available[0].expires_at <= now:
                    entry = available.popleft()
                    live = entity.messages.get(entry.sequence_number) is entry
                    if live and entry.lock_token is None and not entry.deferred:
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

    def peek(
        self,
        entity: Entity,
        from_sequence: int,
        count: int,
        now: float,
        session_id: str | None = None,
    ) -> list[Entry]:
        """Up to ``count`` live messages (available, locked or deferred; of one session when
        ``session_id`` is given) from ``from_sequence`` on, in sequence order."""
        candidates = (
            entry
            for seq, entry in entity.messages.items()
            if seq >= from_sequence
            and entry.expires_at > now
            and (session_id is None or entry.session_id == session_id)
        )
        return heapq.nsmallest(max(count, 0), candidates, key=lambda e: e.sequence_number)

    # ---- deferral ------------------------------------------------------------------------
    def receive_deferred(
        self,
        entity: Entity,
        sequence_numbers: list[int],
        now: float,
        *,
        lock: bool,
        session_id: str | None = None,
    ) -> list[tuple[Entry, uuid.UUID | None]]:
        """Take deferred messages by sequence number: locked (they stay deferred until
        settled) or, with ``lock=False``, removed. `MessageNotFound` names the first
        number that is not a deferred message free to take (of ``session_id``, if given)."""
        found = []
        for number in sequence_numbers:
            entry = entity.messages.get(number)
            if (
                entry is None
                or not entry.deferred
                or entry.lock_token is not None
                or entry.expires_at <= now
                or (session_id is not None and entry.session_id != session_id)
            ):
                raise MessageNotFound(
                    f"No deferred message with sequence number {number} in '{entity.path}'."
                )
            found.append(entry)
        entity.last_activity = now
        out: list[tuple[Entry, uuid.UUID | None]] = []
        for entry in found:
            if lock:
                out.append((entry, self.lock(entity, entry, now)))
            else:
                self.remove(entity, entry)
                out.append((entry, None))
        return out

    # ---- scheduled messages --------------------------------------------------------------
    def schedule(
        self, target: Entity | Topic, messages: list[StoredMessage], now: float
    ) -> list[int]:
        """Hold ``messages`` until their scheduled enqueue time (now when they have none);
        returns the sequence numbers that `cancel_scheduled` takes."""
        if isinstance(target, Entity):
            target.check_sessions(messages)
        numbers = []
        for message in messages:
            due = now if message.scheduled_ms is None else message.scheduled_ms / 1000.0
            number = target.reserve_sequence()
            target.scheduled[number] = Scheduled(message, number, due)
            self._schedule_order += 1
            heapq.heappush(self._schedule_heap, (due, self._schedule_order, number, target))
            numbers.append(number)
        return numbers

    def cancel_scheduled(self, target: Entity | Topic, sequence_numbers: list[int]) -> None:
        """Forget scheduled messages; `MessageNotFound` (and nothing cancelled) when a number
        is not a message still waiting for its time."""
        for number in sequence_numbers:
            if number not in target.scheduled:
                name = target.name if isinstance(target, Topic) else target.path
                raise MessageNotFound(
                    f"No scheduled message with sequence number {number} in '{name}'."
                )
        for number in sequence_numbers:
            target.scheduled.pop(number, None)

    def activate_scheduled(self, now: float) -> None:
        """Enqueue every scheduled message whose time has come."""
        heap = self._schedule_heap
        while heap and heap[0][0] <= now:
            _due, _order, number, target = heapq.heappop(heap)
            held = target.scheduled.pop(number, None)
            if held is None or target.deleted:
                continue  # cancelled or gone
            message = held.message
            if isinstance(target, Topic):
                self.publish(target, [message], now)
                continue
            try:
                target.enqueue(message, now, sequence_number=number)
            except SessionRequired:  # checked when scheduled; kept for safety
                continue
            self.on_available(target)

    # ---- sessions ------------------------------------------------------------------------
    def accept_session(
        self, entity: Entity, session_id: str | None, holder: object, now: float
    ) -> Session | None:
        """Lock a session for ``holder``: the one named (`SessionCannotBeLocked` while
        another receiver holds it), or with None the next session with messages waiting that
        nobody holds (None when there is none yet)."""
        session: Session | None
        if session_id is not None:
            session = entity.session(session_id)
            if session.held(now) and session.holder != holder:
                raise SessionCannotBeLocked(
                    f"The requested session '{session_id}' cannot be accepted. It may be "
                    "locked by another receiver."
                )
            if session.holder is not None and session.holder != holder:
                self.release_session(entity, session, now)  # its lock expired
        else:
            session = self._next_free_session(entity, now)
            if session is None:
                return None
        session.holder = holder
        self._lock_session(entity, session, now)
        entity.last_activity = now
        return session

    def _lock_session(self, entity: Entity, session: Session, now: float) -> float:
        session.locked_until = now + entity.properties.lock_duration
        self._schedule_order += 1
        heapq.heappush(
            self._session_heap, (session.locked_until, self._schedule_order, entity, session)
        )
        return session.locked_until

    def _next_free_session(self, entity: Entity, now: float) -> Session | None:
        best: tuple[int, Session] | None = None
        for session in entity.sessions.values():
            if session.held(now):
                continue
            head = self._head(entity, session, now)
            if head is not None and (best is None or head.sequence_number < best[0]):
                best = (head.sequence_number, session)
        if best is None:
            return None
        session = best[1]
        if session.holder is not None:
            self.release_session(entity, session, now)  # its lock expired
        return session

    def _head(self, entity: Entity, session: Session, now: float) -> Entry | None:
        """The next deliverable message of ``session``, left in place (stale ones dropped)."""
        entry = self.next_available(entity, now, session)
        if entry is not None:
            session.available.appendleft(entry)
        return entry

    def release_session(self, entity: Entity, session: Session, now: float) -> None:
        """Unlock ``session`` (its receiver closed, or its lock expired): the messages it
        had locked count a failed delivery attempt and wait again."""
        session.holder = None
        session.locked_until = 0.0
        for token, entry in list(entity.locked.items()):
            if entry.session_id == session.id:
                del entity.locked[token]
                entry.lock_token = None
                self._failed_attempt(entity, entry)
        if self._head(entity, session, now) is not None:
            self.on_available(entity)

    def held_session(
        self, entity: Entity, session_id: str, holder: Callable[[object], bool], now: float
    ) -> Session:
        """The session ``session_id`` when its lock is held by a receiver ``holder`` accepts;
        else `SessionLockLost`."""
        session = entity.sessions.get(session_id)
        if session is None or not session.held(now) or not holder(session.holder):
            raise SessionLockLost(
                f"The session lock of session '{session_id}' was lost or is not held by "
                "this client. Accept the session again."
            )
        return session

    def renew_session(self, entity: Entity, session: Session, now: float) -> float:
        """Extend a held session's lock (and so its messages' locks)."""
        self._lock_session(entity, session, now)
        for entry in entity.locked.values():
            if entry.session_id == session.id:
                entry.locked_until = session.locked_until
        return session.locked_until

    def set_session_state(self, session: Session, state: bytes | None, now: float) -> None:
        session.state = state
        session.state_updated = now

    def expire_session_locks(self, now: float) -> list[tuple[Entity, object]]:
        """Release every session whose lock has passed; returns (entity, holder) pairs so that
        the AMQP layer can detach those receivers."""
        lost = []
        heap = self._session_heap
        while heap and heap[0][0] <= now:
            locked_until, _order, entity, session = heapq.heappop(heap)
            if session.holder is None or session.locked_until != locked_until or entity.deleted:
                continue  # released, renewed or gone
            lost.append((entity, session.holder))
            self.release_session(entity, session, now)
        return lost

    def list_sessions(
        self, entity: Entity, updated_after: float | None, skip: int, top: int
    ) -> list[str]:
        """Session ids in order of creation: those with messages or state, or (with
        ``updated_after``) those whose state was set after it."""
        if updated_after is None:
            with_messages = {e.session_id for e in entity.messages.values()}
            ids = [
                s.id
                for s in entity.sessions.values()
                if s.id in with_messages or s.state is not None
            ]
        else:
            ids = [
                s.id
                for s in entity.sessions.values()
                if s.state_updated and s.state_updated > updated_after
            ]
        return ids[skip : skip + max(top, 0)]

    def scheduled_count(self, target: Entity | Topic) -> int:
        return len(target.scheduled)
