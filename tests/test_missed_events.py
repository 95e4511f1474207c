"""Duplicates, reordering and losses: exactly the right `event_missed` set, never a double dispatch."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventMissedEventArgs,
    EventRegistry,
    HubFaults,
    InMemoryHub,
    InMemoryTransport,
    MissedReason,
)
from eventbroker._envelope import VERSION, Envelope, EnvelopeCodec, normalize_keys
from eventbroker._sequence import Gap, SequenceTracker

from ._support import FakeClock, ManualTransport, wait_until

EVENT = uuid.UUID(int=7)
TIMEOUT = 5.0


def expected_gaps(source: str, received: set[int]) -> set[tuple[str, int, int]]:
    """The ranges between the lowest and highest received number that never arrived."""
    gaps: set[tuple[str, int, int]] = set()
    if not received:
        return gaps
    run: list[int] = []
    for n in range(min(received), max(received) + 1):
        if n in received:
            if run:
                gaps.add((source, run[0], run[-1]))
                run = []
        else:
            run.append(n)
    return gaps


def as_numbers(gaps: set[tuple[str, int, int]]) -> set[tuple[str, int]]:
    return {(s, n) for s, first, last in gaps for n in range(first, last + 1)}


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=60))
def test_tracker_reports_exactly_the_numbers_never_seen(arrivals: list[int]) -> None:
    tracker = SequenceTracker(TIMEOUT)
    for n in arrivals:
        tracker.observe("s", n, 0.0)
    assert tracker.expired(TIMEOUT - 0.001) == []
    reported = {(g.source, g.first, g.last) for g in tracker.expired(TIMEOUT)}
    assert as_numbers(reported) == as_numbers(expected_gaps("s", set(arrivals)))
    assert tracker.expired(TIMEOUT * 10) == []  # each gap once


def test_a_late_arrival_within_the_timeout_is_not_a_miss() -> None:
    tracker = SequenceTracker(TIMEOUT)
    tracker.observe("s", 1, 0.0)
    tracker.observe("s", 4, 0.0)
    tracker.observe("s", 2, 4.0)
    assert tracker.open_gaps() == [Gap("s", 3, 3)]
    tracker.observe("s", 3, 4.9)
    assert tracker.expired(100.0) == []


class Receiver:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.transport = ManualTransport()
        self.broker = EventBroker(
            self.transport,
            EventBrokerOptions(secret="test-secret-0123456789", missed_event_timeout=TIMEOUT),
            clock=self.clock,
        )
        registry = EventRegistry(self.broker)
        self.dispatched: Counter[str] = Counter()
        self.missed: list[EventMissedEventArgs] = []
        self.event_missed: list[EventMissedEventArgs] = []
        registry.get(EVENT).raised.subscribe(lambda n: self.dispatched.update([n.message_id or ""]))
        registry.get(EVENT).missed.subscribe(self.event_missed.append)
        self.broker.event_missed.subscribe(self.missed.append)
        self.broker.start()
        self.codec = EnvelopeCodec(
            normalize_keys("test-secret-0123456789"), max_message_bytes=1 << 16, replay_window=300
        )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.broker.stop()


@settings(
    max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(
    count=st.integers(min_value=1, max_value=30),
    fates=st.lists(st.sampled_from(["ok", "ok", "ok", "drop", "dup"]), min_size=30, max_size=30),
    order=st.randoms(use_true_random=False),
)
def test_drop_duplicate_reorder_yield_exactly_the_right_missed_set(
    receiver: Receiver, count: int, fates: list[str], order: object
) -> None:
    source = uuid.uuid4().hex
    receiver.missed.clear()
    receiver.event_missed.clear()
    receiver.dispatched.clear()
    bodies: list[tuple[int, bytes]] = []
    for n in range(1, count + 1):
        body = receiver.codec.encode(
            Envelope(
                VERSION,
                uuid.uuid4().hex,
                EVENT,
                EVENT,
                source,
                "default",
                None,
                n,
                receiver.clock(),
                n,
                "k",
            )
        )
        fate = fates[n - 1]
        if fate != "drop":
            bodies.append((n, body))
        if fate == "dup":
            bodies.append((n, body))
    order.shuffle(bodies)  # type: ignore[attr-defined]
    for _, body in bodies:
        assert receiver.transport.feed(body) is None
        receiver.clock.advance(0.01)  # everything arrives well within the timeout
    assert receiver.broker.check_missed_events() == []
    receiver.clock.advance(TIMEOUT)
    reported = receiver.broker.check_missed_events()

    received = {n for n, _ in bodies}
    want = expected_gaps(source, received)
    got = {(m.source_instance_id, m.first_sequence, m.last_sequence) for m in reported}
    assert as_numbers(got) == as_numbers(want)  # type: ignore[arg-type]
    assert all(m.reason is MissedReason.GAP for m in reported)
    assert set(receiver.dispatched.values()) <= {1}  # never a duplicate dispatch
    assert len(receiver.dispatched) == len(received)
    receiver.broker.check_missed_events()
    # event_missed and the event's own missed signal fire once per gap.
    wait_until(lambda: len(receiver.missed) == len(reported) == len(receiver.event_missed))


def test_random_faults_on_the_hub_never_dispatch_twice_and_report_every_gap() -> None:
    clock = FakeClock()
    hub = InMemoryHub(HubFaults(drop=0.1, duplicate=0.2, reorder=0.2, seed=1234))
    sender = EventBroker(
        InMemoryTransport(hub), EventBrokerOptions(secret="test-secret-0123456789"), clock=clock
    )
    receiver = EventBroker(
        InMemoryTransport(hub),
        EventBrokerOptions(secret="test-secret-0123456789", missed_event_timeout=TIMEOUT),
        clock=clock,
    )
    seqs: Counter[int] = Counter()
    missed: list[EventMissedEventArgs] = []
    receiver.event_received.subscribe(lambda a: seqs.update([a.sequence]))
    receiver.event_missed.subscribe(missed.append)
    with sender, receiver:
        for n in range(500):
            sender.raise_event(EVENT, EVENT, n)
        hub.drain()
        clock.advance(TIMEOUT)
        reported = receiver.check_missed_events()
        wait_until(lambda: len(missed) == len(reported))
    assert set(seqs.values()) == {1}
    assert receiver.stats.duplicates > 0  # the hub did duplicate, and they were dropped
    want = expected_gaps(sender.instance_id, set(seqs))
    got = {(m.source_instance_id, m.first_sequence, m.last_sequence) for m in reported}
    assert want and as_numbers(got) == as_numbers(want)  # type: ignore[arg-type]


def test_delayed_delivery_arrives_once_and_out_of_order_within_the_timeout_is_no_miss() -> None:
    clock = FakeClock()
    hub = InMemoryHub(HubFaults(delay=0.05, seed=7))
    sender = EventBroker(
        InMemoryTransport(hub), EventBrokerOptions(secret="test-secret-0123456789"), clock=clock
    )
    receiver = EventBroker(
        InMemoryTransport(hub), EventBrokerOptions(secret="test-secret-0123456789"), clock=clock
    )
    order: list[int] = []
    receiver.event_received.subscribe(lambda a: order.append(a.sequence))
    with sender, receiver:
        for n in range(100):
            sender.raise_event(EVENT, EVENT, n)
        hub.drain()
        clock.advance(TIMEOUT * 2)
        assert receiver.check_missed_events() == []
    assert sorted(order) == list(range(1, 101))
    assert order != sorted(order)  # the delays really reordered them


def test_fault_probabilities_are_validated() -> None:
    with pytest.raises(ValueError, match=r"HubFaults.drop is a probability in \[0, 1\], got 1.5"):
        HubFaults(drop=1.5)
    with pytest.raises(ValueError, match=r"HubFaults\.delay must be >= 0"):
        HubFaults(delay=-1)
