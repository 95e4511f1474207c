"""The codec's fast paths write and verify exactly what the general ones do, byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from eventbroker._envelope import (
    Envelope,
    TraceContext,
    _encoder,
    _event_body,
    _HmacSha256,
    envelope_fields,
    parse_json,
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


def test_event_body_covers_what_brokers_send() -> None:
    fields = envelope_fields(
        "i:1", uuid.uuid4(), uuid.uuid4(), "i", "app", None, 1, NOW, {"a": [1.5]}, NOW, "h"
    )
    fields["key_id"] = "k1"
    assert _event_body(fields) == _encoder.encode(fields).encode()


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
