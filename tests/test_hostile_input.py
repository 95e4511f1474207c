"""Nothing from the wire can hurt a receiver: any bytes give an event or a counted refusal.

Each refusal is counted by cause, logged once per cause per minute without a traceback, and
never stops what follows (the hub keeps delivering; Service Bus dead-letters with the cause).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventRaiseOption,
    EventReceivedEventArgs,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
)
from eventbroker._envelope import (
    MAX_DEPTH,
    VERSION,
    Envelope,
    EnvelopeCodec,
    EnvelopeError,
    Heartbeat,
    normalize_keys,
)

from ._support import FakeClock, ManualTransport, key_id, sign, wait_until

SECRET = "hostile-input-secret-0123456789"
NOW = 1_800_000_000.0
EVENT = uuid.UUID(int=1)
RAISER = uuid.UUID(int=2)
CAUSES = {
    "malformed",
    "oversize",
    "unknown_version",
    "unknown_key",
    "bad_signature",
    "replay_window",
    "replay",
    "bad_param",
}


def codec() -> EnvelopeCodec:
    return EnvelopeCodec(normalize_keys(SECRET), max_message_bytes=256 * 1024, replay_window=300)


def good_fields(sequence: int = 1, **changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "version": VERSION,
        "message_id": f"sender:{sequence}",
        "event_id": str(EVENT),
        "raiser_id": str(RAISER),
        "instance_id": "sender",
        "application_name": "shop",
        "site_id": None,
        "sequence": sequence,
        "sent_at": NOW,
        "param": "ok",
        "key_id": key_id(SECRET),
    }
    fields.update(changes)
    return fields


def deep(levels: int) -> bytes:
    return b'{"sig":"' + b"0" * 64 + b'",' + b'"a":' + b"[" * levels + b"]" * levels + b"}"


class Receiver:
    def __init__(self) -> None:
        self.clock = FakeClock(NOW)
        self.transport = ManualTransport()
        self.broker = EventBroker(
            self.transport,
            EventBrokerOptions(secret=SECRET, application_name="shop"),
            clock=self.clock,
        )
        self.got: list[EventReceivedEventArgs] = []
        self.broker.event_received.subscribe(self.got.append)
        self.broker.start()
        self.sequence = 0

    def good(self, param: object = "ok") -> bytes:
        self.sequence += 1
        return sign(good_fields(self.sequence, param=param, sent_at=self.clock()), SECRET)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.broker.stop()


# -- the codec alone -------------------------------------------------------------------------


def test_a_thousand_levels_of_nesting_is_malformed_not_a_recursion_error() -> None:
    for body in (deep(1_500), deep(MAX_DEPTH + 1), deep(100_000)):
        with pytest.raises(EnvelopeError) as refused:
            codec().decode(body, NOW)
        assert refused.value.reason == "malformed"
        assert "nested deeper" in refused.value.description
    # Brackets inside strings are not nesting.
    fields = good_fields(param="[" * 5_000 + "{" * 5_000)
    decoded = codec().decode(sign(fields, SECRET), NOW)
    assert isinstance(decoded, Envelope) and decoded.param == "[" * 5_000 + "{" * 5_000


def test_a_param_nested_within_the_limit_travels_and_a_deeper_one_fails_at_raise_time() -> None:
    from eventbroker._envelope import MAX_PARAM_DEPTH, to_wire_param

    ok: Any = 1
    for _ in range(MAX_PARAM_DEPTH):
        ok = [ok]
    fields = good_fields(param=to_wire_param(ok))
    assert codec().decode(sign(fields, SECRET), NOW).param == ok  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="deeper than"):
        to_wire_param([ok])
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(TypeError, match="deeper than"):  # not a RecursionError
        to_wire_param({"a": looped})


@pytest.mark.parametrize(
    "sent_at", [10**400, 10**20, -1, float("nan"), float("inf"), float("-inf"), "now", None, True]
)
def test_a_signed_envelope_with_an_impossible_send_time_is_malformed(sent_at: object) -> None:
    body = sign(good_fields(sent_at=sent_at), SECRET)  # json.dumps writes NaN and Infinity
    with pytest.raises(EnvelopeError) as refused:
        codec().decode(body, NOW)
    assert refused.value.reason == "malformed"


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
@pytest.mark.parametrize("where", ["param", "sent_at", "nested"])
def test_nan_and_infinity_are_refused_anywhere(constant: bytes, where: str) -> None:
    fields = good_fields()
    raw = json.dumps(fields, separators=(",", ":")).encode()
    if where == "param":
        raw = raw.replace(b'"param":"ok"', b'"param":' + constant)
    elif where == "sent_at":
        raw = raw.replace(b'"sent_at":' + str(NOW).encode(), b'"sent_at":' + constant)
    else:
        raw = raw.replace(b'"param":"ok"', b'"param":{"a":[1,' + constant + b"]}")
    assert constant in raw
    with pytest.raises(EnvelopeError) as refused:
        codec().decode(sign(None, SECRET, raw=raw), NOW)
    assert refused.value.reason == "malformed"


@pytest.mark.parametrize(
    "changes",
    [
        {"sequence": 0},
        {"sequence": -5},
        {"sequence": 2**70},
        {"sequence": 1.0},
        {"sequence": True},
        {"event_id": "not a uuid"},
        {"event_id": 12},
        {"message_id": "m" * 10_000},
        {"instance_id": ["a"]},
        {"started_at": "yesterday"},
        {"param": "\ud800"},
    ],
)
def test_signed_envelopes_with_bad_fields_are_malformed(changes: dict[str, object]) -> None:
    body = sign(good_fields(**changes), SECRET)
    with pytest.raises(EnvelopeError) as refused:
        codec().decode(body, NOW)
    assert refused.value.reason == "malformed"


@settings(max_examples=400)
@given(st.binary(max_size=2_000))
def test_any_bytes_decode_to_a_message_or_a_refusal(wire: bytes) -> None:
    for candidate in (wire, b'{"sig":"' + b"0" * 64 + b'",' + wire):
        try:
            codec().decode(candidate, NOW)
        except EnvelopeError as refused:
            assert refused.reason in CAUSES


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()  # NaN and infinities included: the sender may be hostile
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400)
@given(json_values)
def test_any_json_value_signed_or_not_gives_a_refusal(value: object) -> None:
    body = json.dumps(value, separators=(",", ":")).encode()
    wrapped = json.dumps({"v": value}, separators=(",", ":")).encode()
    for raw in (body, wrapped):
        for candidate in (
            b'{"sig":"' + b"0" * 64 + b'",' + raw[1:],
            sign(None, SECRET, raw=wrapped),
        ):
            with pytest.raises(EnvelopeError) as refused:
                codec().decode(candidate, NOW)
            assert refused.value.reason in CAUSES


FIELDS = [*good_fields(), "started_at", "host", "trace"]

# -- the trace field (W3C trace context inside the signed envelope) ----------------------------

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
strict_json = st.recursive(  # what a peer's encoder can write (NaN is refused everywhere)
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
hex_text = st.text("0123456789abcdefABCDEF-", max_size=60)
traceparents = st.one_of(
    st.just(TRACEPARENT),
    st.builds(
        lambda v, t, p, f: f"{v}-{t}-{p}-{f}",
        st.sampled_from(["00", "01", "ff", "0", "000"]),
        st.text("0123456789abcdef", min_size=30, max_size=34),
        st.text("0123456789abcdef", min_size=14, max_size=18),
        st.text("0123456789abcdefX", min_size=1, max_size=3),
    ),
    hex_text,
    strict_json,
)
trace_fields = st.one_of(
    strict_json,
    st.fixed_dictionaries(
        {"traceparent": traceparents},
        optional={"tracestate": st.one_of(strict_json, st.text(max_size=600)), "x": strict_json},
    ),
)


def _is_valid_traceparent(value: object) -> bool:
    if type(value) is not str or len(value) != 55:
        return False
    version, trace_id, span_id, flags = value.split("-") if value.count("-") == 3 else ("",) * 4
    return (
        version == "00"
        and all(c in "0123456789abcdef" for c in trace_id + span_id + flags)
        and (len(trace_id), len(span_id), len(flags)) == (32, 16, 2)
        and trace_id != "0" * 32
        and span_id != "0" * 16
    )


@settings(max_examples=600)
@given(trace_fields)
def test_any_trace_field_gives_the_event_with_a_valid_trace_or_none(trace: object) -> None:
    """The trace field is diagnostics: whatever it holds, the event itself is delivered."""
    raw = json.dumps(good_fields(trace=trace), separators=(",", ":"), ensure_ascii=False)
    message = codec().decode(sign(None, SECRET, raw=raw.encode()), NOW)
    assert isinstance(message, Envelope) and message.param == "ok"
    expected = isinstance(trace, dict) and _is_valid_traceparent(trace.get("traceparent"))
    assert (message.trace is not None) == expected
    if message.trace is not None:
        assert isinstance(trace, dict) and message.trace.traceparent == trace["traceparent"]
        state = message.trace.tracestate
        assert state is None or (
            state == trace.get("tracestate") and len(state) <= 512 and state.isprintable()
        )


@given(
    st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda t: t != "0" * 32),
    st.text("0123456789abcdef", min_size=16, max_size=16).filter(lambda p: p != "0" * 16),
    st.sampled_from(["00", "01"]),
    st.one_of(
        st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=512)
    ),
)
def test_a_trace_context_round_trips_through_the_codec(
    trace_id: str, span_id: str, flags: str, state: str | None
) -> None:
    from eventbroker._envelope import TraceContext

    trace = TraceContext(f"00-{trace_id}-{span_id}-{flags}", state or None)
    envelope = Envelope(
        VERSION,
        "m:1",
        EVENT,
        RAISER,
        "sender",
        "shop",
        None,
        1,
        NOW,
        "ok",
        key_id(SECRET),
        trace=trace,
    )
    decoded = codec().decode(codec().encode(envelope), NOW)
    assert isinstance(decoded, Envelope) and decoded.trace == trace


def test_an_envelope_without_trace_has_no_trace_field_on_the_wire() -> None:
    envelope = Envelope(
        VERSION, "m:1", EVENT, RAISER, "sender", "shop", None, 1, NOW, "ok", key_id(SECRET)
    )
    wire = codec().encode(envelope)
    assert b'"trace"' not in wire
    decoded = codec().decode(wire, NOW)
    assert isinstance(decoded, Envelope) and decoded.trace is None


def test_a_release_without_the_trace_field_reads_a_traced_envelope() -> None:
    """What an older release sees: a traced envelope is an ordinary signed version-1 one."""
    body = sign(good_fields(trace={"traceparent": TRACEPARENT, "tracestate": "k=v"}), SECRET)
    fields = json.loads(b"{" + body[len(b'{"sig":"') + 64 + 2 :])
    assert fields["version"] == VERSION and set(good_fields()) < set(fields)


@settings(max_examples=600)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6), st.booleans())
def test_validly_signed_envelopes_whose_fields_take_any_json_value(
    changes: dict[str, object], control: bool
) -> None:
    fields = good_fields(**changes)
    if control:
        fields.update(
            version=2, kind="presence", host="h", started_at=NOW, last_sequence=0, interval=30
        )
        fields.update(changes)
    try:
        message = codec().decode(sign(fields, SECRET), NOW)
    except EnvelopeError as refused:
        assert refused.reason in CAUSES
    else:
        assert isinstance(message, Envelope | Heartbeat)
        assert math.isfinite(message.sent_at)


# -- through a running broker -----------------------------------------------------------------


def test_every_refusal_is_counted_logged_once_without_traceback_and_never_stops_the_next(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    before = dict(receiver.broker.stats.rejected)
    hostile = [
        deep(1_500),
        sign(good_fields(receiver.sequence + 1, sent_at=10**400), SECRET),
        sign(good_fields(receiver.sequence + 1, sent_at=float("nan")), SECRET),
        sign(good_fields(receiver.sequence + 1, param=float("inf")), SECRET),
    ]
    with caplog.at_level(logging.DEBUG, logger="eventbroker"):
        outcomes = receiver.transport.feed_many([*hostile, receiver.good("after")])
    assert [o.reason if o else None for o in outcomes] == ["malformed"] * 4 + [None]
    assert receiver.got[-1].param == "after"
    assert receiver.broker.stats.rejected["malformed"] - before.get("malformed", 0) == 4
    warned = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("(malformed)" in r.getMessage() for r in warned) <= 1  # once per cause per minute
    # DEBUG traces each message (cause included), still without a traceback
    assert (
        sum("refused" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG) == 4
    )
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4))
def test_the_broker_answers_any_signed_envelope_with_dispatch_or_refusal(
    receiver: Receiver, changes: dict[str, object]
) -> None:
    receiver.sequence += 1
    fields = good_fields(receiver.sequence, sent_at=receiver.clock())
    fields.update(changes)
    outcome = receiver.transport.feed(sign(fields, SECRET))
    assert outcome is None or outcome.reason in CAUSES
    assert receiver.transport.feed(receiver.good("still alive")) is None
    assert receiver.got[-1].param == "still alive"


def test_the_hub_keeps_delivering_after_a_hostile_message_and_drain_returns() -> None:
    from eventbroker import TransportMessage

    hub = InMemoryHub()
    options = EventBrokerOptions(secret=SECRET, application_name="shop")
    sender, receiver = (EventBroker(InMemoryTransport(hub), options) for _ in range(2))
    got: list[object] = []
    sender_event = EventRegistry(sender).get(EVENT)
    EventRegistry(receiver).get(EVENT).raised.subscribe(lambda n: got.append(n.param))
    with sender, receiver:
        wire = sender.transport
        assert isinstance(wire, InMemoryTransport)
        # Anything can arrive on the channel: hostile bytes between valid messages.
        for n in range(3):
            hub._publish(wire, TransportMessage(deep(1_000 + n), f"x{n}", "attacker"))
            sender_event.raise_(RAISER, n, EventRaiseOption.RAISE_BROADCAST)
        hub._publish(wire, TransportMessage(b"\xff\xfe garbage", "x", "attacker"))
        hub.drain(timeout=10)  # returns: nothing hangs
        wait_until(lambda: got == [0, 1, 2])
        assert receiver.stats.rejected["malformed"] == 4
