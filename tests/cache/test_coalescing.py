"""Coalesced backplane messages: packs over real brokers on an `InMemoryHub`.

The sending backplanes use a window of 1 s on a fake clock, so a pack leaves only when the
test calls `flush()` (or it is full): what waits and what leaves is decided by the test.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache import (
    BackplaneMessage,
    BackplaneMessageAction,
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryDistributedCache,
)
from cache._marks import CLEAR
from cache.eventbroker_backplane import (
    EVENT_ID,
    MAX_PACK_ITEMS,
    PACK_ACTION,
    RAISER_ID,
    BackplaneOptions,
    BackplaneWireMessage,
    EventBrokerBackplane,
    Pack,
    decode_pack,
    split_packs,
)
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventReceivedEventArgs,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
)
from eventbroker._envelope import (
    PROTOCOL,
    EnvelopeCodec,
    EnvelopeError,
    Heartbeat,
    HeartbeatKind,
    converter,
    heartbeat_fields,
    normalize_keys,
)

from .conftest import FakeClock, wait_until

A = BackplaneMessageAction
FAIL_SAFE = EntryOptions(duration=60, is_fail_safe_enabled=True)
WINDOW = 1.0  # on a fake clock: the flusher never finds it over by itself
SECRET = "test-secret-0123456789"


class Node:
    """One instance: broker, backplane (window on a fake clock), cache, what it received."""

    def __init__(
        self,
        hub: InMemoryHub,
        l2: MemoryDistributedCache | None,
        *,
        max_message_bytes: int = 256 * 1024,
        old_release: bool = False,
        **backplane: Any,
    ) -> None:
        self.broker = EventBroker(
            InMemoryTransport(hub),
            EventBrokerOptions(
                secret=SECRET, application_name="shop", max_message_bytes=max_message_bytes
            ),
        )
        if old_release:  # its heartbeats do not say a protocol, as before packs
            codec = self.broker._codec
            encode = codec.encode_heartbeat
            codec.encode_heartbeat = lambda h: encode(attrs.evolve(h, protocol=1))  # type: ignore[method-assign]
        self.clock = FakeClock(0.0)
        self.registry = EventRegistry(self.broker)
        self.broker.start()
        self.backplane = EventBrokerBackplane(
            self.registry,
            self.broker,
            **({"coalesce_window": WINDOW, "clock": self.clock} | backplane),
        )
        self.cache = HybridCache(
            CacheOptions(name="shop", default_entry_options=FAIL_SAFE), l2, self.backplane
        )
        self.received: list[EventReceivedEventArgs] = []
        self.broker.event_received.subscribe(self.received.append)

    def wires(self) -> list[BackplaneWireMessage]:
        return [r.param for r in self.received if r.event_id == EVENT_ID]

    def close(self) -> None:
        self.cache.close()
        self.broker.stop()


@pytest.fixture
def hub() -> InMemoryHub:
    return InMemoryHub()


@pytest.fixture
def nodes(hub: InMemoryHub) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.close()


def two(
    hub: InMemoryHub, made: list[Node], *, with_l2: bool = True, **kwargs: Any
) -> tuple[Node, Node]:
    l2 = MemoryDistributedCache() if with_l2 else None
    made.extend([Node(hub, l2, **kwargs), Node(hub, l2)])
    return made[-2], made[-1]


def triples(wire: BackplaneWireMessage) -> list[tuple[Any, ...]]:
    """(cache_key, action, timestamp) of each message a wire message carries."""
    items = wire.items
    if items is None:
        return [(wire.cache_key, wire.action, wire.timestamp)]
    return list(zip(items[0::3], items[1::3], items[2::3], strict=True))


def stale_only(cache: HybridCache, key: str) -> bool:
    """The entry is expired in L1 with its value kept for fail-safe."""
    return not cache.try_get(key).has_value and cache.try_get(key, allow_stale=True).has_value


# ------------------------------------------------------------------------ latency and counts


def test_a_lone_message_leaves_at_once_and_later_ones_wait_for_the_window(
    hub: InMemoryHub, nodes: list[Node]
) -> None:
    a, b = two(hub, nodes)
    a.cache.set("k1", 1)
    hub.drain()  # no flush: the leading edge leaves at once
    assert [(w.action, w.cache_key) for w in b.wires()] == [("entry_set", "k1")]
    a.cache.set("k2", 2)
    a.cache.set("k3", 3)
    hub.drain()
    assert len(b.wires()) == 1  # in the pack, the window open
    a.backplane.flush()
    hub.drain()
    [_, pack] = b.wires()
    assert pack.action == PACK_ACTION and [i[0] for i in triples(pack)] == ["k2", "k3"]
    a.clock.advance(WINDOW)  # quiet for a window: the next one leaves at once again
    a.cache.set("k4", 4)
    hub.drain()
    assert b.wires()[-1].cache_key == "k4"
    assert b.cache.stats.backplane_received == 4


def test_the_flusher_sends_the_pack_when_the_window_closes(
    hub: InMemoryHub, nodes: list[Node]
) -> None:
    l2 = MemoryDistributedCache()
    a = Node(hub, l2, coalesce_window=0.01, clock=time.monotonic)
    b = Node(hub, l2)
    nodes.extend([a, b])
    for i in range(5):
        a.cache.set(f"k{i}", i)
    wait_until(lambda: (hub.drain(), sum(len(triples(w)) for w in b.wires()))[1] == 5)


def test_a_full_pack_leaves_without_waiting(hub: InMemoryHub, nodes: list[Node]) -> None:
    a, b = two(hub, nodes, coalesce_max_messages=10)
    for i in range(11):
        a.cache.set(f"k{i}", i)
    wait_until(lambda: (hub.drain(), len(b.wires()))[1] == 2)  # 1 alone, then a full pack
    assert [len(triples(w)) for w in b.wires()] == [1, 10]


# ------------------------------------------------------------------------ per-key semantics


def test_a_remove_after_a_set_in_one_pack_removes(hub: InMemoryHub, nodes: list[Node]) -> None:
    a, b = two(hub, nodes)
    b.cache.get_or_set("k", lambda: "v1")
    a.cache.set("other", 0)  # opens the window
    a.cache.set("k", "v2")
    a.cache.remove("k")
    a.cache.set("j", 1)
    a.backplane.flush()
    hub.drain()
    assert [(i[0], i[1]) for i in triples(b.wires()[-1])] == [
        ("k", "entry_remove"),
        ("j", "entry_set"),
    ]
    assert not b.cache.try_get("k", allow_stale=True).has_value
    assert b.cache.get_or_set("k", lambda: "from-source") == "from-source"


def test_a_set_after_a_remove_in_one_pack_keeps_both(hub: InMemoryHub, nodes: list[Node]) -> None:
    a, b = two(hub, nodes)
    b.cache.get_or_set("k", lambda: "v1")
    a.cache.set("other", 0)
    a.cache.remove("k")
    a.cache.set("k", "v3")
    a.backplane.flush()
    hub.drain()
    items = triples(b.wires()[-1])
    assert [(i[0], i[1]) for i in items] == [("k", "entry_remove"), ("k", "entry_set")]
    assert items[0][2] <= items[1][2]  # each keeps its own time
    assert b.cache.get("k") == "v3"  # removed locally, read again from L2


def test_repeated_sets_of_a_key_travel_once_with_the_newest_time(
    hub: InMemoryHub, nodes: list[Node]
) -> None:
    a, b = two(hub, nodes)
    b.cache.get_or_set("k", lambda: "v0")
    a.cache.set("other", 0)
    for i in range(50):
        a.cache.set("k", i)
    a.cache.set("j", 1)
    a.backplane.flush()
    hub.drain()
    pack = b.wires()[-1]
    assert [i[0] for i in triples(pack)] == ["k", "j"]  # the newest k, at its place in time
    assert triples(pack)[0][2] <= triples(pack)[1][2] == pack.timestamp
    assert b.cache.get("k") == 49


def test_tags_and_clear_inside_a_pack(hub: InMemoryHub, nodes: list[Node]) -> None:
    a, b = two(hub, nodes)
    b.cache.set("p1", 1, tags=["products"])
    b.cache.set("s1", 1, tags=["sale"])
    b.cache.set("plain", 1)
    a.cache.set("other", 0)
    a.cache.remove_by_tag("products")
    a.cache.expire_by_tag("sale")
    a.backplane.flush()
    hub.drain()
    assert [i[1] for i in triples(b.wires()[-1])] == ["tag_remove", "tag_expire"]
    assert not b.cache.try_get("p1", allow_stale=True).has_value
    assert stale_only(b.cache, "s1")
    assert b.cache.try_get("plain").has_value
    a.clock.advance(WINDOW)
    a.cache.set("other", 1)  # leaves alone; the next ones wait
    b.cache.set("late", 2)
    a.cache.clear(allow_fail_safe=True)
    a.cache.set("after", 3)
    a.backplane.flush()
    hub.drain()
    assert [i[1] for i in triples(b.wires()[-1])] == ["clear", "entry_set"]
    assert stale_only(b.cache, "plain") and stale_only(b.cache, "late")


# ------------------------------------------------------------------------ equivalence (property)

KEYS = ("k0", "k1", "k2")
TAGS = ("t0", "t1")
BASE = 1_700_000_000.0
_times = st.sampled_from([BASE + x / 2 for x in range(11)])
_entry_messages = st.builds(
    lambda action, key, at: BackplaneMessage(key, action, "peer", at),
    st.sampled_from([A.ENTRY_SET, A.ENTRY_REMOVE, A.ENTRY_EXPIRE]),
    st.sampled_from(KEYS),
    _times,
)
_tag_messages = st.builds(
    lambda action, tag, at: BackplaneMessage(tag, action, "peer", at),
    st.sampled_from([A.TAG_REMOVE, A.TAG_EXPIRE]),
    st.sampled_from(TAGS),
    _times,
)
_clears = st.builds(lambda at: BackplaneMessage("", A.CLEAR, "peer", at), _times)
_messages = st.lists(
    st.one_of(_entry_messages, _entry_messages, _tag_messages, _clears), max_size=14
)
_seeds = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.integers(0, 10),
        st.lists(st.sampled_from(TAGS), max_size=2, unique=True),
        st.booleans(),
    ),
    max_size=5,
)


def _receiver(seeds: list[tuple[str, int, list[str], bool]]) -> HybridCache:
    clock = FakeClock(BASE)
    cache = HybridCache(CacheOptions(name="shop"), clock=clock)
    for key, at, tags, fail_safe in sorted(seeds, key=lambda s: s[1]):
        clock.now = BASE + at / 2
        options = FAIL_SAFE if fail_safe else EntryOptions(duration=60)
        cache.set(key, f"{key}@{at}", options, tags=tags)
    clock.now = BASE + 20
    return cache


def _state(cache: HybridCache) -> object:
    entries = {
        key: (
            e.value,
            e.timestamp,
            e.logical_expiration,
            e.physical_expiration,
            e.invalidated_at,
            e.stale,
            e.tags,
        )
        for key, e in cache._memory.entries.items()
    }
    marks = cache._marks
    return (
        entries,
        {key: marks.key_expired_at(key) for key in KEYS},
        {tag: (marks.tag(tag).expired, marks.tag(tag).removed) for tag in (*TAGS, CLEAR)},
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_seeds, _messages)
def test_a_pack_leaves_a_receiver_as_the_single_messages_do(
    seeds: list[tuple[str, int, list[str], bool]], messages: list[BackplaneMessage]
) -> None:
    singles, packed = _receiver(seeds), _receiver(seeds)
    try:
        for message in messages:
            singles._on_backplane_message(message)
        pack = Pack()
        for message in messages:
            pack.add(message, FAIL_SAFE)
        taken = [m for m, _ in pack.take()]
        if taken:  # through the wire form and back
            wire = BackplaneWireMessage.pack(taken, "shop")
            back = converter.structure(converter.unstructure(wire), BackplaneWireMessage)
            received, refused, unknown = decode_pack(back)
            assert (refused, unknown) == (0, 0) and received == taken
            packed._on_backplane_messages(received)
        assert _state(packed) == _state(singles)
    finally:
        singles.close()
        packed.close()


# ------------------------------------------------------------------------ failures and limits


def test_a_pack_the_broker_refuses_waits_for_auto_recovery(
    hub: InMemoryHub, nodes: list[Node]
) -> None:
    a, b = two(hub, nodes)
    b.cache.get_or_set("k1", lambda: "old")
    b.cache.get_or_set("k2", lambda: "old")
    a.cache.set("other", 0)
    hub.drain()
    hub.go_down()
    a.cache.set("k1", "new")
    a.cache.set("k2", "new")
    a.cache.set("k1", "newer")
    a.backplane.flush()  # refused: the messages go to the auto-recovery queue
    assert a.cache.auto_recovery_pending == ["k2", "k1"]
    before = len(b.wires())
    hub.come_up()  # RECONNECTED: a replays its queue (one leaves at once, one waits)
    wait_until(lambda: not a.cache.auto_recovery_pending)
    a.backplane.flush()
    hub.drain()
    keys = [i[0] for w in b.wires()[before:] for i in triples(w)]
    assert sorted(keys) == ["k1", "k2"]
    assert b.cache.get("k1") == "newer" and b.cache.get("k2") == "new"


def test_a_pack_over_the_envelope_limit_is_split_and_every_key_arrives_once(
    hub: InMemoryHub, nodes: list[Node]
) -> None:
    a, b = two(hub, nodes, max_message_bytes=8192, coalesce_max_messages=MAX_PACK_ITEMS)
    a.cache.set("first", 0)
    keys = [f"product:{i}:détail" for i in range(5000)]
    for key in keys:
        a.cache.set(key, 1)
    long_key = "x" * 7000  # too long to share an envelope: travels alone
    a.cache.set(long_key, 1)
    a.backplane.flush()
    hub.drain()
    wires = b.wires()
    arrived = [i[0] for w in wires[1:] for i in triples(w)]
    assert arrived == [*keys, long_key]
    assert wires[-1].action == "entry_set" and wires[-1].cache_key == long_key
    assert 5000 / 200 < len(wires) - 2 < 5000 / 50  # packs of about 100 keys in 8 KiB


def test_split_packs_respects_count_bytes_and_source() -> None:
    def msg(key: str, source: str = "s") -> BackplaneMessage:
        return BackplaneMessage(key, A.ENTRY_SET, source, 1.0)

    messages = [msg("a"), msg("b"), msg("c", "t"), msg("x" * 500), msg("d"), msg("e")]
    assert split_packs(messages, 2, 300) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert split_packs([], 2, 300) == []


# ------------------------------------------------------------------------ rolling deployments


def test_an_old_release_peer_gets_single_messages(hub: InMemoryHub, nodes: list[Node]) -> None:
    a, b = two(hub, nodes)
    old = Node(hub, MemoryDistributedCache(), old_release=True)
    nodes.append(old)
    hub.drain()  # a hears old's hello: protocol 1
    assert {i.protocol for i in a.broker.instances} == {1, PROTOCOL}
    for i in range(3):
        a.cache.set(f"k{i}", i)
    hub.drain()  # no flush needed: nothing waits
    assert [(w.action, w.cache_key) for w in old.wires()] == [
        ("entry_set", "k0"),
        ("entry_set", "k1"),
        ("entry_set", "k2"),
    ]
    assert all(w.items is None for w in b.wires())


def test_packs_stop_the_moment_an_old_release_is_heard_and_resume_when_it_leaves(
    hub: InMemoryHub, nodes: list[Node]
) -> None:
    a, b = two(hub, nodes)
    a.cache.set("k0", 0)  # leaves at once
    a.cache.set("k1", 1)
    a.cache.set("k1b", 1)
    a.backplane.flush()  # a pack: every peer heard from reads packs
    hub.drain()
    assert [w.action for w in b.wires()] == ["entry_set", PACK_ACTION]
    old = Node(hub, MemoryDistributedCache(), old_release=True)
    nodes.append(old)
    hub.drain()  # a hears old's hello; a's clock has not moved: nothing is cached from before
    assert a.broker.lowest_peer_protocol == 1
    a.cache.set("k2", 2)
    a.cache.set("k3", 3)
    hub.drain()  # each left alone, at once
    assert [(w.action, w.cache_key) for w in old.wires()] == [
        ("entry_set", "k2"),
        ("entry_set", "k3"),
    ]
    old.broker.stop()  # its bye: every peer left reads packs again
    nodes.remove(old)
    old.cache.close()
    hub.drain()
    assert a.broker.lowest_peer_protocol == PROTOCOL
    a.clock.advance(WINDOW)
    a.cache.set("k4", 4)  # leads a new window
    a.cache.set("k5", 5)
    a.cache.set("k6", 6)
    a.backplane.flush()
    hub.drain()
    assert [w.action for w in b.wires()[-2:]] == ["entry_set", PACK_ACTION]


def test_heartbeat_protocol_round_trip_absent_and_refused() -> None:
    codec = EnvelopeCodec(normalize_keys(SECRET), max_message_bytes=4096, replay_window=300)
    beat = Heartbeat(
        HeartbeatKind.PRESENCE,
        "m1",
        "i1",
        "shop",
        None,
        "host",
        1.0,
        2.0,
        0,
        30.0,
        codec.signing_key_id,
    )
    assert beat.protocol == PROTOCOL
    decoded = codec.decode(codec.encode_heartbeat(beat), 2.0)
    assert isinstance(decoded, Heartbeat) and decoded.protocol == PROTOCOL
    old = codec.encode_heartbeat(attrs.evolve(beat, message_id="m2", protocol=1))
    assert b'"protocol"' not in old
    decoded = codec.decode(old, 2.0)
    assert isinstance(decoded, Heartbeat) and decoded.protocol == 1
    for bad in ("2", 0, 2.0, True, 2**40):
        fields = {**heartbeat_fields(attrs.evolve(beat, message_id=f"m{bad!r}")), "protocol": bad}
        with pytest.raises(EnvelopeError) as refused:
            codec.decode(codec.encode_fields(fields), 2.0)
        assert refused.value.reason == "malformed"


# ------------------------------------------------------------------------ hostile and unknown


def raise_wire(node: Node, param: dict[str, Any]) -> None:
    node.registry.get(EVENT_ID).raise_(RAISER_ID, param)


@pytest.mark.parametrize(
    "items",
    [
        "not a list",
        ["k", "entry_set"],
        ["k", "entry_set", "later"],
        [1, "entry_set", 5.0],
        ["k", None, 5.0],
        ["k", "entry_set", True],
        [{"cache_key": "k"}, "entry_set", 5.0],
        ["k", "entry_set", 5.0] * (MAX_PACK_ITEMS + 1),
    ],
    ids=["str", "short", "str-time", "int-key", "null-action", "bool-time", "dict", "many"],
)
def test_hostile_pack_items_are_refused_and_the_next_message_applies(
    hub: InMemoryHub, nodes: list[Node], items: Any
) -> None:
    a, b = two(hub, nodes)
    b.cache.set("kept", 1)
    b.cache.get_or_set("k", lambda: "v1")
    raise_wire(a, {"cache_key": "", "action": "pack", "timestamp": 4e9, "items": items})
    hub.drain()
    assert b.backplane.refused_items >= 1
    assert stale_only(b.cache, "kept")  # it may have missed an invalidation: messages lost
    a.cache.remove("k")  # the next message still applies
    hub.drain()
    assert not b.cache.try_get("k", allow_stale=True).has_value


def test_good_items_of_a_pack_with_a_bad_one_apply(hub: InMemoryHub, nodes: list[Node]) -> None:
    a, b = two(hub, nodes, with_l2=False)
    b.cache.set("k", "v1")
    raise_wire(
        a,
        {
            "cache_key": "",
            "action": "pack",
            "timestamp": 4e9,
            "items": ["k", "entry_remove", 4e9, "x", 3, 4e9],
        },
    )
    hub.drain()
    assert b.backplane.refused_items == 1
    assert not b.cache.try_get("k", allow_stale=True).has_value


@pytest.mark.parametrize("in_pack", [False, True], ids=["single", "pack"])
def test_an_unknown_action_expires_every_local_entry(
    hub: InMemoryHub, nodes: list[Node], in_pack: bool
) -> None:
    a, b = two(hub, nodes)
    b.cache.set("x", 1)
    b.cache.set("y", 2)
    param: dict[str, Any] = (
        {"cache_key": "", "action": "pack", "items": ["x", "entry_frobnicate", 4e9]}
        if in_pack
        else {"cache_key": "x", "action": "entry_frobnicate", "timestamp": 4e9}
    )
    raise_wire(a, param)
    hub.drain()
    assert stale_only(b.cache, "x") and stale_only(b.cache, "y")
    assert b.backplane.refused_items == 0


def test_a_stream_of_unknown_actions_expires_every_time_and_warns_once_a_minute(
    hub: InMemoryHub, nodes: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two(hub, nodes)
    with caplog.at_level(logging.WARNING, logger="cache"):
        for n in range(20):  # a newer release's action, with every message it sends
            b.cache.set("x", n)
            raise_wire(a, {"cache_key": "x", "action": "entry_frobnicate", "timestamp": 4e9})
            hub.drain()
            assert stale_only(b.cache, "x")  # each one: it may have missed an invalidation
    lost = [r for r in caplog.records if "may have been lost" in r.getMessage()]
    assert [r.name for r in lost] == ["cache._hybrid"]  # once, not 20 times


# ------------------------------------------------------------------------ settings


def test_backplane_options_from_the_environment_and_keywords_win(
    hub: InMemoryHub, nodes: list[Node]
) -> None:
    environ = {
        "CACHE_BACKPLANE_COALESCE_WINDOW": "0.005",
        "CACHE_BACKPLANE_COALESCE_MAX_MESSAGES": "50",
    }
    options = BackplaneOptions.from_env(environ)
    assert (options.coalesce_window, options.coalesce_max_messages) == (0.005, 50)
    a, _ = two(hub, nodes)
    backplane = EventBrokerBackplane(
        a.registry, a.broker, options=options, coalesce_max_messages=20
    )
    assert backplane.options == BackplaneOptions(0.005, 20)
    with pytest.raises(ValueError, match="CACHE_BACKPLANE_COALESCE_WINDOW"):
        BackplaneOptions.from_env({"CACHE_BACKPLANE_COALESCE_WINDOW": "5"})
    with pytest.raises(ValueError, match=">= 2"):
        BackplaneOptions(coalesce_max_messages=1)


def test_window_zero_sends_every_message_alone(hub: InMemoryHub, nodes: list[Node]) -> None:
    a, b = two(hub, nodes, coalesce_window=0)
    for i in range(3):
        a.cache.set(f"k{i}", i)
    hub.drain()
    assert [w.cache_key for w in b.wires()] == ["k0", "k1", "k2"]
