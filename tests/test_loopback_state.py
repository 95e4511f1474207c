"""State machine of the loopback Service Bus broker: no message is ever lost or duplicated."""

from __future__ import annotations

import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventbroker.testing._servicebus_codec import StoredMessage
from eventbroker.testing._servicebus_state import BrokerState, Entity, EntityProperties

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
        outcome=st.sampled_from(["complete", "abandon", "release", "dead-letter"]),
    )
    def settle(self, pick: int, outcome: str) -> None:
        held = [(q, token) for q in self.queues for token in q.locked]
        queue, token = held[pick % len(held)]
        marker = self._marker(queue.locked[token].message)
        assert self.state.settle(queue, token, outcome, reason="r", description="d")
        if outcome == "complete":
            self.completed[self._name(queue)].add(marker)
        assert not self.state.settle(queue, token, "complete")  # a lock settles once

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
            assert {id(e) for e in sub.messages.values() if e.lock_token is None} <= available
            if sub.dead_letter is not None:  # a DLQ keeps what fails there
                assert all(e.attempts < MAX_DELIVERIES for e in sub.messages.values())
            assert all(e.locked_until > self.now for e in sub.locked.values())


BrokerModel.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestBrokerModel = BrokerModel.TestCase


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
