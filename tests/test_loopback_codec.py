"""Byte-level message handling of the loopback Service Bus broker, checked against proton."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proton import Message, symbol, timestamp

from eventbroker.testing._servicebus_codec import (
    AmqpDecodeError,
    encode_delivery,
    parse_message,
    set_application_properties,
    split_batch,
    with_dead_letter_properties,
)

_text = st.text(max_size=40)
# proton keeps group_id as a C string (cut at a NUL) and encodes it as UTF-8 (no surrogates)
_session_ids = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)
_keys = st.text(min_size=1, max_size=20).filter(lambda k: not k.startswith("x-opt-"))
_values = st.one_of(_text, st.integers(-(2**31), 2**31 - 1), st.booleans())
_bodies = st.binary(max_size=600)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    message = Message(body=draw(_bodies), inferred=True)
    message.id = draw(st.none() | _text)
    message.subject = draw(st.none() | _text)
    ttl_ms = draw(st.none() | st.integers(1, 10**6))
    if ttl_ms is not None:
        message.ttl = ttl_ms / 1000
    message.properties = draw(st.dictionaries(_keys, _values, max_size=5)) or None
    symbols = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
    annotations = draw(st.dictionaries(symbols.map(lambda k: "x-" + k), _text, max_size=3))
    message.annotations = {k: v for k, v in annotations.items() if not k.startswith("x-opt-")}
    return message


def _decode(raw: bytes) -> Message:
    message = Message()
    message.decode(raw)
    return message


def _data_section(payload: bytes) -> bytes:
    return b"\x00\x53\x75\xb0" + struct.pack(">I", len(payload)) + payload


@given(messages(), st.integers(1, 2**62), st.integers(0, 2**40), st.integers(0, 100), st.booleans())
def test_delivery_keeps_the_message_and_sets_broker_fields(
    original: Message, sequence: int, enqueued_ms: int, attempts: int, locked: bool
) -> None:
    stored = parse_message(original.encode())
    delivered = _decode(
        encode_delivery(
            stored,
            sequence_number=sequence,
            enqueued_ms=enqueued_ms,
            delivery_count=attempts,
            locked_until_ms=enqueued_ms + 60_000 if locked else None,
        )
    )
    assert bytes(delivered.body) == bytes(original.body)
    assert (delivered.id, delivered.subject) == (original.id, original.subject)
    assert delivered.properties == original.properties
    assert delivered.ttl == original.ttl
    assert delivered.delivery_count == attempts
    annotations: dict[Any, Any] = dict(delivered.annotations or {})
    assert annotations.pop("x-opt-sequence-number") == sequence
    assert annotations.pop("x-opt-enqueued-time") == enqueued_ms
    assert annotations.pop("x-opt-locked-until", None) == (enqueued_ms + 60_000 if locked else None)
    assert annotations == dict(original.annotations or {})


@given(messages(), st.none() | _session_ids, st.none() | st.integers(0, 2**45))
def test_session_id_and_scheduled_time_are_read(
    original: Message, session_id: str | None, scheduled_ms: int | None
) -> None:
    original.group_id = session_id
    if scheduled_ms is not None:
        annotations = dict(original.annotations or {})
        annotations[symbol("x-opt-scheduled-enqueue-time")] = timestamp(scheduled_ms)
        original.annotations = annotations
    stored = parse_message(original.encode())
    assert (stored.session_id, stored.scheduled_ms) == (session_id, scheduled_ms)
    delivered = _decode(encode_delivery(stored, sequence_number=1, enqueued_ms=0, delivery_count=0))
    assert delivered.group_id == session_id  # the bare message is relayed as sent


@given(st.lists(messages(), min_size=1, max_size=6))
def test_sdk_batch_splits_into_its_messages(inner: list[Message]) -> None:
    encoded = [bytes(m.encode()) for m in inner]
    batch = b"".join(_data_section(e) for e in encoded)
    assert split_batch(batch) == encoded


@given(messages())
def test_plain_message_is_not_a_batch(original: Message) -> None:
    assert split_batch(original.encode()) is None


@given(messages(), _text, _text)
def test_dead_letter_copy_carries_reason_and_description(
    original: Message, reason: str, description: str
) -> None:
    stored = with_dead_letter_properties(
        parse_message(original.encode()), "t/Subscriptions/s", reason, description
    )
    copy = _decode(encode_delivery(stored, sequence_number=1, enqueued_ms=0, delivery_count=0))
    expected = dict(original.properties or {})
    expected.update(DeadLetterReason=reason, DeadLetterErrorDescription=description)
    assert copy.properties == expected
    assert bytes(copy.body) == bytes(original.body)
    assert (copy.annotations or {})["x-opt-deadletter-source"] == "t/Subscriptions/s"


@given(messages(), st.dictionaries(_keys, _text, min_size=1, max_size=3))
def test_set_application_properties_merges(original: Message, extra: dict[str, str]) -> None:
    bare = parse_message(original.encode()).bare
    merged = _decode(set_application_properties(bare, extra))
    expected = dict(original.properties or {})
    expected.update(extra)
    assert merged.properties == expected


@given(st.binary(max_size=300))
def test_garbage_raises_only_decode_errors(raw: bytes) -> None:
    for parse in (parse_message, split_batch):
        with contextlib.suppress(AmqpDecodeError):
            parse(raw)


def test_deeply_nested_descriptors_are_a_decode_error() -> None:
    with pytest.raises(AmqpDecodeError):
        parse_message(b"\x00" * 100_000)
