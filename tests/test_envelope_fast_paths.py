"""The codec's fast paths write and verify exactly what the general ones do, byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbroker._envelope import (
    MAX_DEPTH,
    Envelope,
    TraceContext,
    _encoder,
    _event_body,
    _event_body_of,
    _HmacSha256,
    envelope_fields,
    parse_json,
    too_deep,
    uuid_text,
)

from .test_envelope import NOW, codec, json_values

texts = st.text(max_size=12)
times = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**40), 2**40)


@given(st.binary(max_size=200), st.binary(max_size=2000))
def test_hmac_is_hmac_sha256(key: bytes, body: bytes) -> None:
    expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    assert _HmacSha256(key).hexdigest(body) == expected


@given(
    message_id=texts,
    instance_id=texts,
    application_name=texts,
    site_id=st.none() | texts,
    sequence=st.integers(-(2**70), 2**70) | st.booleans(),
    sent_at=times,
    started_at=st.none() | times | st.just(-0.0),
    host=st.none() | texts,
    param=json_values,
    trace=st.none() | st.builds(TraceContext, st.just("00-" + "1" * 32 + "-" + "2" * 16 + "-01")),
    key_id=texts,
    more=st.dictionaries(st.sampled_from(["extra", "version", "param"]), json_values, max_size=2),
)
def test_event_body_is_what_the_encoder_writes(
    message_id: str,
    instance_id: str,
    application_name: str,
    site_id: str | None,
    sequence: int,
    sent_at: float,
    started_at: float | None,
    host: str | None,
    param: Any,
    trace: TraceContext | None,
    key_id: str,
    more: dict[str, Any],
) -> None:
    fields = envelope_fields(
        message_id,
        uuid.uuid4(),
        uuid.uuid4(),
        instance_id,
        application_name,
        site_id,
        sequence,
        sent_at,
        param,
        started_at,
        host,
        trace,
    )
    fields |= more  # other values, and (for "extra") other fields: the encoder's
    fields["key_id"] = key_id
    fast = _event_body(fields)
    if fast is not None:
        assert fast == _encoder.encode(fields).encode()
        assert parse_json(fast) == fields


@given(
    message_id=texts,
    instance_id=texts,
    application_name=texts,
    site_id=st.none() | texts,
    sequence=st.integers(-(2**70), 2**70) | st.booleans(),
    sent_at=times,
    started_at=st.none() | times | st.just(-0.0),
    host=st.none() | texts,
    param=json_values,
)
def test_encode_event_is_encode_fields_of_the_same_fields(
    message_id: str,
    instance_id: str,
    application_name: str,
    site_id: str | None,
    sequence: int,
    sent_at: float,
    started_at: float | None,
    host: str | None,
    param: Any,
) -> None:
    c = codec()
    args = (
        message_id,
        uuid.uuid4(),
        uuid.uuid4(),
        instance_id,
        application_name,
        site_id,
        sequence,
        sent_at,
        param,
        started_at,
        host,
    )
    try:
        expected = c.encode_fields(envelope_fields(*args))
    except ValueError:  # refused by the encoder (a too large int, say): refused the same way
        with pytest.raises(ValueError):
            c.encode_event(*args)
        return
    assert c.encode_event(*args) == expected


def test_event_body_covers_what_brokers_send() -> None:
    fields = envelope_fields(
        "i:1", uuid.uuid4(), uuid.uuid4(), "i", "app", None, 1, NOW, {"a": [1.5]}, NOW, "h"
    )
    fields["key_id"] = "k1"
    assert _event_body(fields) == _encoder.encode(fields).encode()
    ids = (uuid_text(uuid.UUID(fields["event_id"])), uuid_text(uuid.UUID(fields["raiser_id"])))
    args = ("i:1", *ids, "i", "app", None, 1, NOW, {"a": [1.5]}, NOW, "h", "k1", None)
    assert _event_body_of(*args) == _encoder.encode(fields).encode()  # encode_event's fast path


@given(st.floats(min_value=NOW - 100, max_value=NOW + 100), json_values, st.booleans())
def test_encode_decode_round_trip_through_the_fast_path(
    sent_at: float, param: Any, traced: bool
) -> None:
    c = codec()
    envelope = Envelope(
        1,
        "m:1",
        uuid.uuid4(),
        uuid.uuid4(),
        "m",
        "app",
        "site",
        1,
        sent_at,
        param,
        "k1",
        NOW - 5,
        "host",
        TraceContext("00-" + "a" * 32 + "-" + "b" * 16 + "-01") if traced else None,
    )
    assert c.decode(c.encode(envelope), NOW) == envelope


@given(st.sampled_from([" ", "\t", "\n", "\r", ""]), st.sampled_from([" ", "\r\n", "", "x", "1"]))
def test_parse_json_takes_whitespace_around_and_refuses_extra_data(before: str, after: str) -> None:
    body = f'{before}{{"a":1}}{after}'.encode()
    if after.strip(" \t\n\r"):
        try:
            parse_json(body)
        except ValueError:
            return
        raise AssertionError("extra data was accepted")
    assert parse_json(body) == {"a": 1}


@given(
    st.lists(st.booleans(), max_size=MAX_DEPTH + 8),
    st.text(alphabet='[]{}"\\a', max_size=6),
    st.integers(0, 3),
)
def test_too_deep_is_the_nesting_depth_whatever_the_strings_hold(
    levels: list[bool], text: str, siblings: int
) -> None:
    value: Any = [text] * siblings or text
    for is_list in reversed(levels):  # brackets of both kinds, and in strings, which do not nest
        value = [value, text] if is_list else {text: value, "s": text}
    body = json.dumps({"param": value}).encode()
    depth = 1 + len(levels) + (siblings > 0)
    assert too_deep(body) == (depth > MAX_DEPTH)
    if depth > MAX_DEPTH:
        with pytest.raises(ValueError, match="nested deeper"):
            parse_json(body)
    else:
        assert parse_json(body) == {"param": value}


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b'{"a":"\\ud800"}', True),  # a lone surrogate escape
        (b'{"a":"\\uDC00x"}', True),
        (b'{"a":"say \\"hi\\" \\u00e9"}', False),  # other escapes pass
        (b'{"a":"no escapes at all"}', False),
    ],
)
def test_parse_json_refuses_surrogate_escapes_only(body: bytes, refused: bool) -> None:
    if refused:
        with pytest.raises(ValueError, match="surrogate"):
            parse_json(body)
    else:
        assert type(parse_json(body)["a"]) is str
