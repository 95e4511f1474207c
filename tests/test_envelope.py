"""The signed envelope: round trips, tampering, key rotation and every refusal cause."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbroker import EventBroker, EventBrokerOptions, EventReceivedEventArgs, EventRegistry
from eventbroker._envelope import VERSION, Envelope, EnvelopeCodec, EnvelopeError, normalize_keys

from ._support import FakeClock, ManualTransport

NOW = 1_800_000_000.0

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

envelopes = st.builds(
    Envelope,
    version=st.just(VERSION),
    message_id=st.uuids().map(lambda u: u.hex),
    event_id=st.uuids(),
    raiser_id=st.uuids(),
    instance_id=st.text(min_size=1, max_size=32),
    application_name=st.text(min_size=1, max_size=16),
    site_id=st.none() | st.text(max_size=16),
    sequence=st.integers(min_value=1, max_value=2**53),
    sent_at=st.floats(min_value=NOW - 100, max_value=NOW + 100),
    param=json_values,
    key_id=st.just("k1"),
    started_at=st.none() | st.floats(min_value=0, max_value=NOW),
    host=st.none() | st.text(max_size=16),
    trace=st.none(),  # round trips of trace contexts: tests/test_hostile_input.py
)


def codec(keys: dict[str, str] | None = None) -> EnvelopeCodec:
    return EnvelopeCodec(
        normalize_keys(keys or {"k1": "secret-one-0123456789"}),
        max_message_bytes=256 * 1024,
        replay_window=300,
    )


@given(envelopes)
def test_round_trip(envelope: Envelope) -> None:
    c = codec()
    assert c.decode(c.encode(envelope), NOW) == envelope


@settings(max_examples=300)
@given(envelopes, st.data())
def test_any_single_changed_byte_is_rejected(envelope: Envelope, data: st.DataObject) -> None:
    c = codec()
    wire = bytearray(c.encode(envelope))
    index = data.draw(st.integers(min_value=0, max_value=len(wire) - 1), label="index")
    new = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != wire[index]))
    wire[index] = new
    with pytest.raises(EnvelopeError):
        c.decode(bytes(wire), NOW)


def test_key_rotation() -> None:
    sample = Envelope(
        VERSION, "m1", uuid.uuid4(), uuid.uuid4(), "i", "a", None, 1, NOW, {"x": 1}, "old"
    )
    old_only = codec({"old": "secret-old-0123456789"})
    wire = old_only.encode(sample)
    # Both keys configured, new one signing: messages signed with the old key still verify.
    rotating = codec({"new": "secret-new-0123456789", "old": "secret-old-0123456789"})
    assert rotating.decode(wire, NOW) == sample
    assert rotating.signing_key_id == "new"
    with pytest.raises(EnvelopeError, match="unknown key id 'new'"):
        old_only.decode(rotating.encode(sample), NOW)  # a peer not yet given the new key
    # After the old key is removed, old-key messages fail.
    new_only = codec({"new": "secret-new-0123456789"})
    with pytest.raises(EnvelopeError) as refused:
        new_only.decode(wire, NOW)
    assert refused.value.reason == "unknown_key"
    # A key id that is known but with another secret is a bad signature.
    impostor = codec({"old": "secret-impostor-0123456789"})
    with pytest.raises(EnvelopeError) as refused:
        impostor.decode(wire, NOW)
    assert refused.value.reason == "bad_signature"


def test_a_list_of_secrets_signs_with_the_first_and_verifies_with_all() -> None:
    a = EnvelopeCodec(
        normalize_keys(("one-0123456789abcdef", "two-0123456789abcdef")),
        max_message_bytes=1 << 16,
        replay_window=300,
    )
    b = EnvelopeCodec(
        normalize_keys(("two-0123456789abcdef",)), max_message_bytes=1 << 16, replay_window=300
    )
    sample = Envelope(VERSION, "m", uuid.uuid4(), uuid.uuid4(), "i", "a", None, 1, NOW, None, "x")
    assert a.decode(b.encode(sample), NOW).message_id == "m"


def test_bad_secrets_are_refused_naming_the_problem() -> None:
    with pytest.raises(ValueError, match="empty"):
        EventBrokerOptions(secret=[])
    with pytest.raises(ValueError, match="is blank"):
        EventBrokerOptions(secret={"k": ""})
    with pytest.raises(ValueError, match="EVENTBROKER_SECRET"):
        EventBrokerOptions.from_env({})
    opts = EventBrokerOptions.from_env(
        {
            "EVENTBROKER_SECRET": "new-0123456789abcdef, old-0123456789abcdef",
            "EVENTBROKER_MISSED_EVENT_TIMEOUT": "2.5",
        }
    )
    assert opts.secret == ("new-0123456789abcdef", "old-0123456789abcdef")
    assert opts.missed_event_timeout == 2.5
    with pytest.raises(ValueError, match="EVENTBROKER_DEDUP_CAPACITY='many'"):
        EventBrokerOptions.from_env(
            {"EVENTBROKER_SECRET": "test-secret-0123456789", "EVENTBROKER_DEDUP_CAPACITY": "many"}
        )
    with pytest.raises(ValueError, match="missed_event_timeout"):
        EventBrokerOptions(secret="test-secret-0123456789", missed_event_timeout=0)


@pytest.mark.parametrize(
    "secret", ["", "   ", "\t\n", "short", "fifteen-chars-x", " " * 20 + "abc"]
)
def test_blank_and_short_secrets_are_refused_naming_the_rule_never_the_secret(secret: str) -> None:
    for form in (secret, [secret], {"main": secret}):
        with pytest.raises(ValueError, match=r"at least 16 characters|blank") as refused:
            EventBrokerOptions(secret=form)  # type: ignore[arg-type]
        assert "EVENTBROKER_SECRET" in str(refused.value)
        if secret.strip():
            assert secret.strip() not in str(refused.value)
    with pytest.raises(ValueError, match="at least 16 characters"):
        EventBrokerOptions.from_env({"EVENTBROKER_SECRET": "short"})
    EventBrokerOptions(secret="x" * 16)  # exactly 16 is enough


@pytest.mark.parametrize("key_id", [2024, 1.5, None, b"k1", ("a",), "", "  "])
def test_a_key_id_that_is_not_a_non_empty_str_is_refused_at_construction(key_id: object) -> None:
    # YAML turns `2024: secret` into an int key: every peer would refuse every message.
    with pytest.raises(ValueError, match="key ids must be non-empty str"):
        EventBrokerOptions(secret={key_id: "long-enough-secret-0123"})  # type: ignore[dict-item]


def test_a_non_str_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="not a str"):
        EventBrokerOptions(secret={"k": 12345678901234567890})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="must be a str, a list of str"):
        EventBrokerOptions(secret=12345678901234567890)  # type: ignore[arg-type]


class Receiver:
    def __init__(self) -> None:
        self.clock = FakeClock(NOW)
        self.transport = ManualTransport()
        self.broker = EventBroker(
            self.transport,
            EventBrokerOptions(
                secret={"k1": "secret-one-0123456789"}, application_name="a", max_message_bytes=4096
            ),
            clock=self.clock,
        )
        self.registry = EventRegistry(self.broker)
        self.got: list[EventReceivedEventArgs] = []
        self.broker.event_received.subscribe(self.got.append)
        self.broker.start()
        self.codec = EnvelopeCodec(
            normalize_keys({"k1": "secret-one-0123456789"}),
            max_message_bytes=1 << 20,
            replay_window=300,
        )
        self.sequence = 0

    def good(self, **changes: object) -> bytes:
        self.sequence += 1
        fields: dict[str, object] = {
            "version": VERSION,
            "message_id": uuid.uuid4().hex,
            "event_id": uuid.UUID(int=1),
            "raiser_id": uuid.UUID(int=2),
            "instance_id": "sender",
            "application_name": "a",
            "site_id": None,
            "sequence": self.sequence,
            "sent_at": self.clock(),
            "param": "ok",
            "key_id": "k1",
        }
        fields.update(changes)
        return self.codec.encode(Envelope(**fields))  # type: ignore[arg-type]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.broker.stop()


def resign(body: dict[str, object], key: bytes) -> bytes:
    import hashlib
    import hmac

    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sig = hmac.new(key, raw, hashlib.sha256).hexdigest().encode()
    return b'{"sig":"' + sig + b'",' + raw[1:]


def test_each_bad_input_is_counted_never_dispatched_and_the_next_good_one_flows(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    good_fields = json.loads(b"{" + receiver.good()[74:])
    receiver.sequence -= 1
    unknown_version = resign({**good_fields, "version": 99}, b"secret-one-0123456789")
    bad_field = resign({**good_fields, "sequence": "seven"}, b"secret-one-0123456789")
    tampered = bytearray(receiver.good(param="pay 1"))
    tampered[tampered.index(b"pay 1") + 4] = ord("9")
    receiver.sequence -= 1
    cases = {
        "bad_signature": bytes(tampered),
        "unknown_key": EnvelopeCodec(
            normalize_keys({"k2": "secret-one-0123456789"}),
            max_message_bytes=4096,
            replay_window=300,
        ).encode(
            Envelope(**{**good_fields, "event_id": uuid.UUID(int=1), "raiser_id": uuid.UUID(int=2)})
        ),
        "unknown_version": unknown_version,
        "malformed": b'{"sig":"' + b"0" * 64 + b'",not json',
        "oversize": receiver.good(param="x" * 5000),
        "replay_window": receiver.good(sent_at=NOW - 3600),
    }
    with caplog.at_level(logging.WARNING, logger="eventbroker"):
        for reason, body in cases.items():
            rejection = receiver.transport.feed(body)
            assert rejection is not None and rejection.reason == reason
        assert receiver.transport.feed(b"plain garbage").reason == "malformed"  # type: ignore[union-attr]
        assert receiver.transport.feed(bad_field).reason == "malformed"  # type: ignore[union-attr]
        assert receiver.transport.feed(receiver.good(param="fine")) is None
    assert [g.param for g in receiver.got] == ["fine"]
    stats = receiver.broker.stats
    assert stats.rejected == {
        "bad_signature": 1,
        "unknown_key": 1,
        "unknown_version": 1,
        "malformed": 3,
        "oversize": 1,
        "replay_window": 1,
    }
    # Logged once per cause per minute, not per message.
    assert caplog.text.count("(malformed)") == 1
    receiver.clock.advance(61)
    with caplog.at_level(logging.WARNING, logger="eventbroker"):
        receiver.transport.feed(b"more garbage")
    assert caplog.text.count("(malformed)") == 2


def test_duplicates_and_own_messages_are_dropped(receiver: Receiver) -> None:
    body = receiver.good(param="once")
    assert receiver.transport.feed(body) is None
    assert receiver.transport.feed(body) is None
    own = receiver.good(instance_id=receiver.broker.instance_id)
    assert receiver.transport.feed(own) is None
    assert [g.param for g in receiver.got] == ["once"]
    assert receiver.broker.stats.duplicates == 1
    assert receiver.broker.stats.own == 1


def test_a_param_that_does_not_fit_the_registered_type_is_rejected(receiver: Receiver) -> None:
    import attrs

    @attrs.frozen
    class Point:
        x: int
        y: int

    receiver.registry.get(uuid.UUID(int=1), param_type=Point)
    rejection = receiver.transport.feed(receiver.good(param={"x": 1}))
    assert rejection is not None and rejection.reason == "bad_param"
    assert receiver.transport.feed(receiver.good(param={"x": 1, "y": 2})) is None
    assert [g.param for g in receiver.got] == [Point(1, 2)]


def test_a_short_secret_error_never_shows_the_secret_or_its_derived_key_id() -> None:
    from eventbroker._envelope import _key_id_for

    for form in ("short-one", ["a" * 20, "short-one"]):
        with pytest.raises(ValueError) as refused:
            EventBrokerOptions(secret=form)  # type: ignore[arg-type]
        text = str(refused.value)
        assert "short-one" not in text and _key_id_for("short-one") not in text
        assert "secret #2" in text or "EventBrokerOptions.secret is" in text
