"""State machine of the loopback Service Bus broker: no message is ever lost or duplicated."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventbroker.testing._servicebus_codec import StoredMessage
from eventbroker.testing._servicebus_state import (
    BrokerState,
    Entity,
    EntityProperties,
    MessageNotFound,
    Session,
    SessionCannotBeLocked,
    SessionRequired,
)

LOCK = 10.0
MAX_DELIVERIES = 3


class BrokerModel(RuleBasedStateMachine):
    """Publish, lock, settle and let locks expire in any order; every message a subscription
    got is, at every step, exactly once: available, locked, dead-lettered or completed."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000.0
        self.state = BrokerState(
            lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES, clock=lambda: self.now
        )
        self.state.create_topic("t")
        self.subs = [self.state.create_subscription("t", name) for name in ("a", "b")]
        # receivers may also take messages from the dead-letter queues (indexes 2 and 3)
        self.queues = [*self.subs, *(s.dead_letter for s in self.subs if s.dead_letter)]
        self.published = 0
        self.completed: dict[str, set[int]] = {"a": set(), "b": set()}

    def _name(self, entity: Entity) -> str:
        return entity.path.split("/")[2]  # t/Subscriptions/<name>[/$DeadLetterQueue]

    @staticmethod
    def _marker(message: StoredMessage) -> int:
        return int.from_bytes(message.bare[-4:], "big")

    @rule(count=st.integers(1, 3))
    def publish(self, count: int) -> None:
        batch = []
        for _ in range(count):
            self.published += 1
            batch.append(StoredMessage(b"\x00\x53\x75\xa0\x04" + self.published.to_bytes(4, "big")))
        self.state.publish(self.state.topics["t"], batch)

    @rule(index=st.integers(0, 3))
    def lock_next(self, index: int) -> None:
        sub = self.queues[index]
        entry = self.state.next_available(sub, self.now)
        if entry is not None:
            self.state.lock(sub, entry, self.now)

    @precondition(lambda self: any(q.locked for q in self.queues))
    @rule(
        pick=st.integers(0, 100),
        outcome=st.sampled_from(["complete", "abandon", "release", "dead-letter", "defer"]),
    )
    def settle(self, pick: int, outcome: str) -> None:
        held = [(q, token) for q in self.queues for token in q.locked]
        queue, token = held[pick % len(held)]
        marker = self._marker(queue.locked[token].message)
        assert self.state.settle(queue, token, outcome, reason="r", description="d")
        if outcome == "complete":
            self.completed[self._name(queue)].add(marker)
        assert not self.state.settle(queue, token, "complete")  # a lock settles once

    @rule(index=st.integers(0, 3), pick=st.integers(0, 100), lock=st.booleans())
    def receive_deferred(self, index: int, pick: int, lock: bool) -> None:
        queue = self.queues[index]
        deferred = sorted(n for n, e in queue.messages.items() if e.deferred and not e.lock_token)
        if not deferred:
            with pytest.raises(MessageNotFound):
                self.state.receive_deferred(queue, [10**6], self.now, lock=lock)
            return
        number = deferred[pick % len(deferred)]
        ((entry, token),) = self.state.receive_deferred(queue, [number], self.now, lock=lock)
        if lock:
            assert token is not None and queue.locked[token] is entry
        else:
            assert number not in queue.messages
            self.completed[self._name(queue)].add(self._marker(entry.message))

    @rule(seconds=st.floats(0, 2 * LOCK))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.state.expire_locks(self.now)

    @rule(index=st.integers(0, 3))
    def unknown_lock_is_lost(self, index: int) -> None:
        assert not self.state.settle(self.queues[index], uuid.uuid4(), "complete")

    @invariant()
    def every_message_exactly_once(self) -> None:
        for sub in self.subs:
            assert sub.dead_letter is not None
            live = [self._marker(e.message) for e in sub.messages.values()]
            dead = [self._marker(e.message) for e in sub.dead_letter.messages.values()]
            done = sorted(self.completed[self._name(sub)])
            assert sorted(live + dead + done) == list(range(1, self.published + 1))

    @invariant()
    def locks_and_availability_agree(self) -> None:
        for sub in self.queues:
            locked = {id(e) for e in sub.locked.values()}
            assert locked == {id(e) for e in sub.messages.values() if e.lock_token is not None}
            available = {id(e) for e in sub.available}
            waiting = {
                id(e) for e in sub.messages.values() if e.lock_token is None and not e.deferred
            }
            assert waiting <= available
            if sub.dead_letter is not None:  # a DLQ keeps what fails there
                assert all(e.attempts < MAX_DELIVERIES for e in sub.messages.values())
            assert all(e.locked_until > self.now for e in sub.locked.values())


BrokerModel.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestBrokerModel = BrokerModel.TestCase


def test_a_released_session_gives_its_messages_back_in_order() -> None:
    state = BrokerState(lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES)
    queue = state.create_queue("q", EntityProperties(requires_session=True))
    now = 1_000.0
    state.publish(
        queue,
        [StoredMessage(b"\x00\x53\x75\xa0\x01" + bytes([i]), session_id="s") for i in range(3)],
        now,
    )
    session = state.accept_session(queue, None, "receiver", now)
    assert session is not None and session.id == "s"
    for _ in range(3):
        entry = state.next_available(queue, now, session)
        assert entry is not None
        state.lock(queue, entry, now)
    state.release_session(queue, session, now)
    again = state.accept_session(queue, "s", "another receiver", now)
    assert again is session
    taken = [state.next_available(queue, now, session) for _ in range(3)]
    assert [(e.sequence_number, e.attempts) for e in taken if e] == [(1, 1), (2, 1), (3, 1)]


def test_scheduled_messages_wait_for_their_time_and_keep_their_number() -> None:
    state = BrokerState(lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES)
    queue = state.create_queue("q")
    now = 1_000.0
    state.publish(queue, [StoredMessage(b"\x00\x53\x75\xa0\x01a")], now)
    later = StoredMessage(b"\x00\x53\x75\xa0\x01b", scheduled_ms=int((now + 30) * 1000))
    (number,) = state.schedule(queue, [later], now)
    state.publish(queue, [StoredMessage(b"\x00\x53\x75\xa0\x01c")], now)
    state.activate_scheduled(now + 29)
    assert number in queue.scheduled and number not in queue.messages
    state.activate_scheduled(now + 30)
    assert not queue.scheduled
    order = [state.next_available(queue, now + 30) for _ in range(3)]
    assert [e.sequence_number for e in order if e] == [1, number, 3] == [1, 2, 3]


def test_expired_messages_are_swept_or_dead_lettered() -> None:
    now = [1_000.0]
    state = BrokerState(lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES, clock=lambda: now[0])
    state.create_topic("t")
    plain = state.create_subscription("t", "plain")
    keep = state.create_subscription(
        "t",
        "keep",
        EntityProperties(
            default_message_time_to_live=60, dead_lettering_on_message_expiration=True
        ),
    )
    state.publish(state.topics["t"], [StoredMessage(b"\x00\x53\x75\xa0\x01x", ttl_ms=30_000)])
    now[0] += 31
    state.drop_expired(now[0])
    assert plain.messages == {}
    assert keep.messages == {}
    assert keep.dead_letter is not None
    (dead,) = keep.dead_letter.messages.values()
    assert b"TTLExpiredException" in dead.message.bare


def test_topic_time_to_live_caps_its_subscriptions() -> None:
    now = [1_000.0]
    state = BrokerState(lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES, clock=lambda: now[0])
    state.create_topic("t", EntityProperties(default_message_time_to_live=60))
    sub = state.create_subscription("t", "s")
    state.publish(state.topics["t"], [StoredMessage(b"\x00\x53\x75\xa0\x01x")])
    now[0] += 61
    assert state.next_available(sub, now[0]) is None
    assert sub.messages == {}


SESSIONS = ("a", "b", "c")


class SessionQueueModel(RuleBasedStateMachine):
    """A queue that requires sessions, with deferral and scheduled messages: two receivers
    accept sessions (by name or the next free one), take messages, settle, defer, take
    deferred ones back, close; time passes and locks expire. At every step each message sent
    or scheduled is exactly once: scheduled, live, dead-lettered, completed or cancelled; a
    session's messages come in sequence order, and only to the receiver holding it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000.0
        self.state = BrokerState(
            lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES, clock=lambda: self.now
        )
        self.queue = self.state.create_queue(
            "q",
            EntityProperties(
                lock_duration=LOCK, max_delivery_count=MAX_DELIVERIES, requires_session=True
            ),
        )
        self.sent = 0
        self.done: set[int] = set()  # completed, cancelled or removed by receive-and-delete
        self.holding: dict[str, Session | None] = {"r1": None, "r2": None}

    def _message(self, session: str | None, scheduled_ms: int | None = None) -> StoredMessage:
        self.sent += 1
        return StoredMessage(
            b"\x00\x53\x75\xa0\x04" + self.sent.to_bytes(4, "big"),
            session_id=session,
            scheduled_ms=scheduled_ms,
        )

    @staticmethod
    def _marker(entry_message: StoredMessage) -> int:
        return int.from_bytes(entry_message.bare[-4:], "big")

    def _holders(self) -> list[str]:
        return [r for r in self.holding if self._mine(r) is not None]

    def _mine(self, receiver: str) -> Session | None:
        session = self.holding[receiver]
        if session is not None and session.holder is receiver and session.held(self.now):
            return session
        return None

    @rule(session=st.sampled_from(SESSIONS), count=st.integers(1, 3))
    def send(self, session: str, count: int) -> None:
        self.state.publish(self.queue, [self._message(session) for _ in range(count)], self.now)

    @rule()
    def send_without_session_is_refused(self) -> None:
        with pytest.raises(SessionRequired):
            self.state.publish(self.queue, [StoredMessage(b"\x00\x53\x75\xa0\x01x")], self.now)

    @rule(session=st.sampled_from(SESSIONS), delay=st.floats(0, 3 * LOCK))
    def schedule(self, session: str, delay: float) -> None:
        message = self._message(session, int((self.now + delay) * 1000))
        (number,) = self.state.schedule(self.queue, [message], self.now)
        assert number in self.queue.scheduled

    @precondition(lambda self: self.queue.scheduled)
    @rule(pick=st.integers(0, 100))
    def cancel(self, pick: int) -> None:
        numbers = sorted(self.queue.scheduled)
        number = numbers[pick % len(numbers)]
        marker = self._marker(self.queue.scheduled[number].message)
        self.state.cancel_scheduled(self.queue, [number])
        self.done.add(marker)
        with pytest.raises(MessageNotFound):
            self.state.cancel_scheduled(self.queue, [number])

    @precondition(lambda self: len(self._holders()) < 2)
    @rule(pick=st.integers(0, 1), name=st.none() | st.sampled_from(SESSIONS))
    def accept(self, pick: int, name: str | None) -> None:
        free = [r for r in self.holding if self._mine(r) is None]
        receiver = free[pick % len(free)]
        other = self._mine("r2" if receiver == "r1" else "r1")
        if name is not None and other is not None and other.id == name:
            with pytest.raises(SessionCannotBeLocked):
                self.state.accept_session(self.queue, name, receiver, self.now)
            return
        session = self.state.accept_session(self.queue, name, receiver, self.now)
        if session is not None:
            assert other is None or other is not session
        self.holding[receiver] = session

    @precondition(lambda self: self._holders())
    @rule(pick=st.integers(0, 1), delete=st.booleans())
    def receive(self, pick: int, delete: bool) -> None:
        holders = self._holders()
        session = self._mine(holders[pick % len(holders)])
        assert session is not None
        waiting = sorted(
            e.sequence_number
            for e in self.queue.messages.values()
            if e.session_id == session.id and e.lock_token is None and not e.deferred
        )
        entry = self.state.next_available(self.queue, self.now, session)
        if entry is None:
            assert waiting == []
            return
        assert entry.session_id == session.id
        assert entry.sequence_number == waiting[0]  # in order within the session
        if delete:
            self.state.remove(self.queue, entry)
            self.done.add(self._marker(entry.message))
        else:
            self.state.lock(self.queue, entry, self.now)

    @precondition(lambda self: self.queue.locked)
    @rule(
        pick=st.integers(0, 100),
        outcome=st.sampled_from(["complete", "abandon", "release", "dead-letter", "defer"]),
    )
    def settle(self, pick: int, outcome: str) -> None:
        tokens = list(self.queue.locked)
        token = tokens[pick % len(tokens)]
        entry = self.queue.locked[token]
        assert entry.session_id is not None
        assert self.queue.sessions[entry.session_id].held(self.now)
        assert self.state.settle(self.queue, token, outcome, reason="r", description="d")
        if outcome == "complete":
            self.done.add(self._marker(entry.message))
        assert not self.state.settle(self.queue, token, "complete")

    @precondition(lambda self: self._holders())
    @rule(receiver=st.integers(0, 1), pick=st.integers(0, 100), lock=st.booleans())
    def receive_deferred(self, receiver: int, pick: int, lock: bool) -> None:
        holders = self._holders()
        session = self._mine(holders[receiver % len(holders)])
        deferred = sorted(
            n for n, e in self.queue.messages.items() if e.deferred and e.lock_token is None
        )
        if session is None or not deferred:
            return
        number = deferred[pick % len(deferred)]
        entry = self.queue.messages[number]
        if entry.session_id != session.id:
            with pytest.raises(MessageNotFound):
                self.state.receive_deferred(
                    self.queue, [number], self.now, lock=lock, session_id=session.id
                )
            return
        ((got, token),) = self.state.receive_deferred(
            self.queue, [number], self.now, lock=lock, session_id=session.id
        )
        assert got is entry
        if lock:
            assert token is not None and entry.deferred
        else:
            assert token is None and number not in self.queue.messages
            self.done.add(self._marker(entry.message))

    @precondition(lambda self: self._holders())
    @rule(pick=st.integers(0, 1))
    def close(self, pick: int) -> None:
        holders = self._holders()
        receiver = holders[pick % len(holders)]
        session = self._mine(receiver)
        assert session is not None
        self.state.release_session(self.queue, session, self.now)
        self.holding[receiver] = None

    @precondition(lambda self: self._holders())
    @rule(pick=st.integers(0, 1))
    def renew(self, pick: int) -> None:
        holders = self._holders()
        session = self._mine(holders[pick % len(holders)])
        assert session is not None
        assert self.state.renew_session(self.queue, session, self.now) > self.now

    @rule(seconds=st.floats(0, 2 * LOCK))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.state.expire_locks(self.now)
        lost = self.state.expire_session_locks(self.now)
        assert all(entity is self.queue for entity, _holder in lost)
        self.state.activate_scheduled(self.now)

    @invariant()
    def every_message_exactly_once(self) -> None:
        dlq = self.queue.dead_letter
        assert dlq is not None
        scheduled = [self._marker(s.message) for s in self.queue.scheduled.values()]
        live = [self._marker(e.message) for e in self.queue.messages.values()]
        dead = [self._marker(e.message) for e in dlq.messages.values()]
        assert sorted(scheduled + live + dead + sorted(self.done)) == list(range(1, self.sent + 1))

    @invariant()
    def session_locks_agree(self) -> None:
        for entry in self.queue.locked.values():
            assert entry.session_id is not None
            session = self.queue.sessions[entry.session_id]
            assert session.holder is not None
            assert entry.locked_until == session.locked_until
        for session in self.queue.sessions.values():
            waiting = [
                e
                for e in session.available
                if self.queue.messages.get(e.sequence_number) is e
                and e.lock_token is None
                and not e.deferred
            ]
            assert all(e.session_id == session.id for e in waiting)
            assert [e.sequence_number for e in waiting] == sorted(
                e.sequence_number for e in waiting
            )
            expected = {
                id(e)
                for e in self.queue.messages.values()
                if e.session_id == session.id and e.lock_token is None and not e.deferred
            }
            assert expected <= {id(e) for e in session.available}


SessionQueueModel.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
TestSessionQueueModel = SessionQueueModel.TestCase
