"""An instance that may have missed an event knows it: replays refused for the whole window,
losses at both ends of a stream reported, heartbeats cheap and never dispatched."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache import CacheOptions, EntryOptions, HybridCache
from cache.eventbroker_backplane import EventBrokerBackplane
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventMissedEventArgs,
    EventRaiseOption,
    EventRegistry,
    HubFaults,
    InMemoryHub,
    InMemoryTransport,
    MissedReason,
    TransportMessage,
)
from eventbroker._sequence import Gap, SequenceTracker, Verdict

from ._support import FakeClock, LossyTransport, ManualTransport, is_heartbeat, wait_until

SECRET = "loss-detection-secret-0123456789"
EVENT = uuid.UUID(int=11)
RAISER = uuid.UUID(int=12)
TIMEOUT = 5.0
IDLE = 1.0


# -- replay ---------------------------------------------------------------------------------


def test_a_captured_envelope_sent_again_after_100000_others_is_refused_as_replay() -> None:
    clock = FakeClock()
    sender_transport, receiver_transport = ManualTransport(), ManualTransport()
    options = EventBrokerOptions(secret=SECRET, heartbeat_interval=0, heartbeat_idle_delay=0)
    sender = EventBroker(sender_transport, options, clock=clock)
    receiver = EventBroker(receiver_transport, options, clock=clock)
    got: Counter[str] = Counter()
    receiver.event_received.subscribe(lambda a: got.update([a.message_id]))
    with sender, receiver:
        for n in range(100_001):
            sender.raise_event(EVENT, RAISER, n)
        bodies = [m.body for m in sender_transport.sent]
        captured = bodies[0]
        assert set(receiver_transport.feed_many(bodies)) == {None}
        clock.advance(10)  # well inside the 300 s replay window
        rejection = receiver_transport.feed(captured)
        assert rejection is not None and rejection.reason == "replay"
        wait_until(lambda: sum(got.values()) == 100_001)
    assert set(got.values()) == {1}
    assert receiver.stats.rejected == {"replay": 1}


def test_replays_are_refused_however_long_the_source_was_quiet_within_the_window() -> None:
    clock = FakeClock()
    sender_transport, receiver_transport = ManualTransport(), ManualTransport()
    options = EventBrokerOptions(secret=SECRET, dedup_capacity=1)
    sender = EventBroker(sender_transport, options, clock=clock)
    receiver = EventBroker(receiver_transport, options, clock=clock)
    with sender, receiver:
        first = sender.raise_event(EVENT, RAISER, "a")
        sender.raise_event(EVENT, RAISER, "b")
        bodies = {m.message_id: m.body for m in sender_transport.events()}
        assert receiver_transport.feed_many(list(bodies.values())) == [None, None]
        clock.advance(290)
        rejection = receiver_transport.feed(bodies[first])
        assert rejection is not None and rejection.reason == "replay"
        clock.advance(20)  # now outside the window: refused by its send time
        rejection = receiver_transport.feed(bodies[first])
        assert rejection is not None and rejection.reason == "replay_window"


# -- the tracker against a model ----------------------------------------------------------------

steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.integers(1, 40), st.booleans()),
        st.tuples(st.just("heartbeat"), st.integers(0, 40), st.booleans()),
        st.tuples(st.just("hello"), st.just(0), st.just(False)),
    ),
    max_size=60,
)


@settings(max_examples=500)
@given(steps)
def test_tracker_matches_a_model_of_seen_expected_and_lost_numbers(
    plan: list[tuple[str, int, bool]],
) -> None:
    """Model: the numbers between the stream's known start and the highest number known to be
    sent that never arrived are lost; a number is new once, and never before a known start."""
    tracker = SequenceTracker(TIMEOUT)
    seen: set[int] = set()
    low: int | None = None  # the known start (origin known) or the lowest number heard of
    high = 0
    known = False
    for kind, n, after in plan:
        if kind == "event":
            verdict = tracker.observe("s", n, 0.0, started_after_subscription=after)
            if low is None and not after:
                low = high = n
                want = Verdict.NEW
            else:
                if low is None:
                    low, high, known = 1, 0, True
                elif after and not known:
                    known, low = True, min(low, 1)
                if n > high:
                    want, high = Verdict.NEW, n
                elif n < low:
                    want = Verdict.SEEN if known else Verdict.NEW
                    if not known:
                        low = n
                else:
                    want = Verdict.SEEN if n in seen else Verdict.NEW
            assert verdict is want
            if verdict is Verdict.NEW:
                seen.add(n)
        else:
            hello = kind == "hello"
            tracker.heartbeat("s", n, 0.0, hello=hello, started_after_subscription=after)
            origin = n + 1 if hello else 1 if after else None
            if low is None:
                low = n + 1 if origin is None else origin
                high, known = low - 1, origin is not None
            elif origin is not None and not known:
                known, low = True, min(low, origin)
            high = max(high, n)
    reported = [
        number for gap in tracker.expired(TIMEOUT) for number in range(gap.first, gap.last + 1)
    ]
    lost = set() if low is None else set(range(low, high + 1)) - seen
    assert sorted(reported) == sorted(lost)  # each lost number exactly once
    assert tracker.expired(TIMEOUT * 10) == []


def test_tracker_memory_is_bounded_in_holes_and_sources() -> None:
    tracker = SequenceTracker(TIMEOUT, max_sources=10, max_holes=5)
    for n in range(1, 200, 2):  # every second number lost: 99 holes
        tracker.observe("s", n, 0.0)
    assert len(tracker._sources["s"].holes) == 5
    overflowed = tracker.expired(0.0)  # the dropped holes are reported at once
    assert len(overflowed) == 94 and all(g.first == g.last for g in overflowed)
    assert tracker.observe("s", 2, 0.0) is Verdict.SEEN  # given up on: no longer new
    for source in range(30):
        tracker.observe(f"src{source}", 1, 0.0)
    assert len(tracker) == 10 and tracker.evicted_early == 21


def test_tracker_forgets_a_quiet_source_only_after_its_retention() -> None:
    tracker = SequenceTracker(TIMEOUT, retention=360)
    tracker.observe("s", 1, 0.0)
    tracker.observe("s", 3, 0.0)
    assert tracker.expired(359.0) == [Gap("s", 2, 2)]
    assert "s" in tracker and tracker.observe("s", 1, 359.0) is Verdict.SEEN
    tracker.expired(359.0 + 361)
    assert "s" not in tracker


# -- losses at the edges, on the hub --------------------------------------------------------------


class Pair:
    """A sender and a receiver on one hub with a fake clock; the sender drops what `drop` says."""

    def __init__(self, drop: Callable[[TransportMessage], bool], **options: object) -> None:
        self.clock = FakeClock()
        self.hub = InMemoryHub()
        opts = EventBrokerOptions(
            secret=SECRET,
            missed_event_timeout=TIMEOUT,
            heartbeat_idle_delay=IDLE,
            **options,  # type: ignore[arg-type]
        )
        self.receiver = EventBroker(InMemoryTransport(self.hub), opts, clock=self.clock)
        self.missed: list[EventMissedEventArgs] = []
        self.receiver.event_missed.subscribe(self.missed.append)
        self.got: list[int] = []
        self.receiver.event_received.subscribe(lambda a: self.got.append(a.sequence))
        self.cache = HybridCache(
            CacheOptions(name="web"),
            backplane=EventBrokerBackplane(EventRegistry(self.receiver), self.receiver),
        )
        self.receiver.start()
        self.clock.advance(1)  # the sender starts after the receiver subscribed
        self.sender = EventBroker(LossyTransport(self.hub, drop), opts, clock=self.clock)
        self.sender.start()

    def raise_(self, count: int) -> None:
        for n in range(count):
            self.sender.raise_event(EVENT, RAISER, n)
        self.hub.drain()

    def idle(self) -> None:
        """Let the sender go idle: its idle heartbeat goes out within one maintenance pause."""
        sent = self.sender.stats.heartbeats_sent
        self.clock.advance(IDLE)
        wait_until(lambda: self.sender.stats.heartbeats_sent > sent)
        self.hub.drain()

    def stop(self) -> None:
        self.sender.stop()
        self.receiver.stop()


@pytest.fixture
def make_pair() -> Iterator[Callable[..., Pair]]:
    pairs: list[Pair] = []

    def make(drop: Callable[[TransportMessage], bool], **options: object) -> Pair:
        pairs.append(Pair(drop, **options))
        return pairs[-1]

    yield make
    for pair in pairs:
        pair.stop()


def sequence_of(message: TransportMessage) -> int | None:
    return None if is_heartbeat(message) else int(message.message_id.rsplit(":", 1)[1])


@pytest.mark.parametrize("trial", range(20))
def test_a_lost_last_message_of_a_burst_reaches_event_missed_and_the_cache(
    make_pair: Callable[..., Pair], trial: int
) -> None:
    burst = 1 + trial % 5
    pair = make_pair(lambda m: sequence_of(m) == burst)
    pair.cache.set("price:1", 10, EntryOptions(duration=3600, is_fail_safe_enabled=True))
    pair.raise_(burst)
    assert pair.got == list(range(1, burst))
    pair.idle()  # the idle heartbeat says the sender reached `burst`
    assert pair.receiver.check_missed_events() == []  # not before the timeout
    pair.clock.advance(TIMEOUT)
    wait_until(lambda: len(pair.missed) == 1)  # the broker reports it by itself
    assert (pair.missed[0].reason, pair.missed[0].first_sequence, pair.missed[0].last_sequence) == (
        MissedReason.GAP,
        burst,
        burst,
    )
    wait_until(lambda: pair.cache.get("price:1") is None)


def test_a_lost_last_message_and_a_lost_idle_heartbeat_are_caught_by_presence(
    make_pair: Callable[..., Pair],
) -> None:
    pair = make_pair(lambda m: sequence_of(m) == 3 or b'"kind":"idle"' in m.body)
    pair.raise_(3)
    pair.clock.advance(IDLE)
    wait_until(lambda: pair.sender._heartbeat_sequence == 3)  # the idle one, lost
    pair.hub.drain()
    assert pair.receiver.check_missed_events() == []
    sent = pair.sender.stats.heartbeats_sent
    pair.clock.advance(30)  # the presence heartbeat carries the last number too
    wait_until(lambda: pair.sender.stats.heartbeats_sent > sent)
    pair.hub.drain()
    pair.clock.advance(TIMEOUT)
    wait_until(lambda: [(m.first_sequence, m.last_sequence) for m in pair.missed] == [(3, 3)])


@pytest.mark.parametrize("lose_hello", [False, True])
def test_a_lost_first_message_of_a_sender_that_started_later_is_reported(
    make_pair: Callable[..., Pair], lose_hello: bool
) -> None:
    def drop(m: TransportMessage) -> bool:
        return sequence_of(m) == 1 or (lose_hello and b'"kind":"hello"' in m.body)

    pair = make_pair(drop)
    pair.raise_(4)
    assert pair.got == [2, 3, 4]
    pair.clock.advance(TIMEOUT)
    wait_until(lambda: len(pair.missed) == 1)
    assert (pair.missed[0].first_sequence, pair.missed[0].last_sequence) == (1, 1)


def test_a_sender_that_started_before_the_receiver_is_no_false_gap() -> None:
    clock = FakeClock()
    hub = InMemoryHub()
    opts = EventBrokerOptions(
        secret=SECRET, missed_event_timeout=TIMEOUT, heartbeat_idle_delay=IDLE
    )
    sender = EventBroker(InMemoryTransport(hub), opts, clock=clock)
    receiver = EventBroker(InMemoryTransport(hub), opts, clock=clock)
    missed: list[EventMissedEventArgs] = []
    receiver.event_missed.subscribe(missed.append)
    with sender:
        for n in range(5):  # sent before the receiver existed: not its business
            sender.raise_event(EVENT, RAISER, n)
        hub.drain()
        clock.advance(1)
        with receiver:
            for n in range(5):
                sender.raise_event(EVENT, RAISER, n)
            hub.drain()
            clock.advance(IDLE)
            wait_until(lambda: sender._heartbeat_sequence == 10)
            hub.drain()
            assert receiver.stats.heartbeats_received >= 1
            clock.advance(TIMEOUT)
            assert receiver.check_missed_events() == []
            assert missed == []


def test_no_false_gaps_under_duplicate_and_reorder_load_and_across_reconnects() -> None:
    clock = FakeClock()
    hub = InMemoryHub(HubFaults(duplicate=0.3, reorder=0.3, seed=99))
    opts = EventBrokerOptions(
        secret=SECRET, missed_event_timeout=TIMEOUT, heartbeat_idle_delay=IDLE
    )
    receiver = EventBroker(InMemoryTransport(hub), opts, clock=clock)
    senders = [EventBroker(InMemoryTransport(hub), opts, clock=clock) for _ in range(3)]
    missed: list[EventMissedEventArgs] = []
    got: Counter[tuple[str, int]] = Counter()
    receiver.event_missed.subscribe(missed.append)
    receiver.event_received.subscribe(lambda a: got.update([(a.source_instance_id, a.sequence)]))
    with receiver:
        clock.advance(1)
        for sender in senders:
            sender.start()
        for round_ in range(4):
            for n in range(50):
                senders[n % 3].raise_event(EVENT, RAISER, n)
            hub.drain()
            clock.advance(IDLE)
            wait_until(lambda: all(s._heartbeat_sequence == s._sequence for s in senders))
            hub.drain()
            clock.advance(TIMEOUT)
            assert receiver.check_missed_events() == [], f"round {round_}"
            if round_ == 1:
                hub.go_down()
                hub.come_up()
                hub.drain()
        for sender in senders:
            sender.stop()
    assert set(got.values()) == {1} and len(got) == 200
    assert [m.reason for m in missed] == [MissedReason.RECONNECT]


@settings(max_examples=25, deadline=None)
@given(drop=st.floats(0.05, 0.5), seed=st.integers(0, 2**16))
def test_random_loss_is_always_reported_exactly_with_heartbeats(drop: float, seed: int) -> None:
    clock = FakeClock()
    hub = InMemoryHub()
    opts = EventBrokerOptions(
        secret=SECRET, missed_event_timeout=TIMEOUT, heartbeat_idle_delay=IDLE
    )
    receiver = EventBroker(InMemoryTransport(hub), opts, clock=clock)
    import random

    rnd = random.Random(seed)
    lost: set[int] = set()

    def fate(m: TransportMessage) -> bool:
        n = sequence_of(m)
        if n is not None and rnd.random() < drop:
            lost.add(n)
            return True
        return False

    missed: list[EventMissedEventArgs] = []
    receiver.event_missed.subscribe(missed.append)
    with receiver:
        clock.advance(1)
        with EventBroker(LossyTransport(hub, fate), opts, clock=clock) as sender:
            for n in range(30):
                sender.raise_event(EVENT, RAISER, n)
            hub.drain()
            clock.advance(IDLE)
            wait_until(lambda: sender._heartbeat_sequence == 30)
            hub.drain()
            clock.advance(TIMEOUT)
            receiver.check_missed_events()  # or the broker's own check: handlers run async

            def reported() -> list[int]:
                return sorted(
                    n
                    for m in missed
                    for n in range(m.first_sequence or 0, (m.last_sequence or 0) + 1)
                )

            wait_until(lambda: reported() == sorted(lost))


# -- heartbeats are control messages -----------------------------------------------------------


def test_heartbeats_are_signed_counted_apart_and_never_reach_handlers() -> None:
    clock = FakeClock()
    hub = InMemoryHub()
    opts = EventBrokerOptions(secret=SECRET, heartbeat_interval=30, heartbeat_idle_delay=IDLE)
    a = EventBroker(InMemoryTransport(hub), opts, clock=clock)
    b = EventBroker(InMemoryTransport(hub), opts, clock=clock)
    received: list[object] = []
    b.event_received.subscribe(received.append)
    EventRegistry(b).get(EVENT).raised.subscribe(received.append)
    with a, b:
        a.raise_event(EVENT, RAISER, "x")
        hub.drain()
        for _ in range(3):
            sent = a.stats.heartbeats_sent
            clock.advance(30)
            wait_until(lambda: a.stats.heartbeats_sent > sent)  # noqa: B023
            hub.drain()
        assert len(received) == 2  # the one event, on both signals; no heartbeat
        stats = b.stats
        assert stats.received == 1 and stats.dispatched == 1
        assert stats.heartbeats_received >= 3  # idle and presence (a said hello before b)
        assert a.stats.published == 1


def test_heartbeats_can_be_turned_off() -> None:
    transport = ManualTransport()
    clock = FakeClock()
    opts = EventBrokerOptions(secret=SECRET, heartbeat_interval=0, heartbeat_idle_delay=0)
    with EventBroker(transport, opts, clock=clock) as broker:
        broker.raise_event(EVENT, RAISER, 1)
        clock.advance(3600)
        broker.check_missed_events()
    assert transport.heartbeats() == [] and len(transport.sent) == 1


def test_presence_lists_other_instances_and_drops_silent_ones() -> None:
    clock = FakeClock()
    hub = InMemoryHub()
    opts = EventBrokerOptions(
        secret=SECRET, application_name="shop", site_id="eu", heartbeat_interval=30
    )
    a = EventBroker(InMemoryTransport(hub), opts, clock=clock)
    b = EventBroker(InMemoryTransport(hub), opts, clock=clock)
    c = EventBroker(InMemoryTransport(hub), opts, clock=clock)
    with a, b:
        c.start()
        hub.drain()
        seen = {i.instance_id: i for i in a.instances}
        assert set(seen) == {b.instance_id, c.instance_id}
        info = seen[b.instance_id]
        assert (info.application_name, info.site_id, info.host) == ("shop", "eu", b.host)
        assert info.started_at == b.started_at and info.heartbeat_interval == 30
        b.raise_event(EVENT, RAISER, 1)
        hub.drain()
        assert {i.instance_id: i.last_sequence for i in a.instances}[b.instance_id] == 1
        c.stop()  # its bye removes it at once
        hub.drain()
        assert [i.instance_id for i in a.instances] == [b.instance_id]
        # b goes silent (its heartbeats lost): after three intervals it drops out.
        b.transport.publish = lambda message: None  # type: ignore[method-assign]
        clock.advance(91)
        wait_until(lambda: a.instances == [])
    assert a.instance_info.instance_id == a.instance_id


def test_idle_heartbeats_cost_at_most_one_per_burst() -> None:
    transport = ManualTransport()
    clock = FakeClock()
    opts = EventBrokerOptions(secret=SECRET, heartbeat_interval=30, heartbeat_idle_delay=IDLE)
    with EventBroker(transport, opts, clock=clock) as broker:
        for _ in range(10):  # ten bursts of 20 events, each followed by a quiet second
            for n in range(20):
                broker.raise_event(EVENT, RAISER, n)
            clock.advance(IDLE)
            wait_until(lambda: broker._heartbeat_sequence == broker._sequence)
        kinds = Counter(str(h["kind"]) for h in transport.heartbeats())
    assert kinds == {"hello": 1, "idle": 10}
    assert len(transport.events()) == 200


def test_raise_local_sends_nothing_and_no_heartbeat() -> None:
    transport = ManualTransport()
    clock = FakeClock()
    with EventBroker(transport, EventBrokerOptions(secret=SECRET), clock=clock) as broker:
        EventRegistry(broker).get(EVENT).raise_(RAISER, 1, EventRaiseOption.RAISE_LOCAL)
        clock.advance(IDLE * 2)
        broker.check_missed_events()
    assert [h["kind"] for h in transport.heartbeats()] == ["hello", "bye"]
