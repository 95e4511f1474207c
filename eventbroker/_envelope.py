"""The envelope: a versioned, signed JSON message, and its codec.

Wire format (version 1)::

    {"sig":"<64 hex chars>",<the canonical JSON of the envelope, without its opening brace>

The JSON is compact (no spaces, UTF-8, no NaN), and the signature is HMAC-SHA256 over exactly
those bytes: every field, the param included, with the key id inside so keys can rotate. The
receiver verifies the bytes as received (no re-encoding, so no canonical form is needed) and
any changed byte fails verification.

Version 1 carries an event (`Envelope`); version 2 carries a control message (`Heartbeat`:
hello, presence, idle, bye), which a release that only knows version 1 refuses as
``unknown_version`` (counted, never dispatched). Fields were only ever added: a decoder ignores
fields it does not know and treats missing optional ones as unknown.

Decoding is total: any bytes give an `Envelope`, a `Heartbeat` or an `EnvelopeError` with a
short cause. Size and nesting depth are bounded before the JSON parser runs; NaN, Infinity,
numbers out of range, lone surrogates and wrongly typed fields are refused as ``malformed``.

An event may carry the W3C trace context of the span that sent it, as the optional field
``"trace": {"traceparent": "00-<32 hex>-<16 hex>-<2 hex>", "tracestate": "..."}`` (added in
the same version: older releases ignore it). It is diagnostics, not data: a trace field that
is not exactly that shape (a wrong type, a bad format, a tracestate over 512 characters) is
ignored, and the event is delivered as if it had none.
"""

from __future__ import annotations

import datetime
import enum
import functools
import hashlib
import hmac
import itertools
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import attrs
import cattrs.preconf.json

VERSION = 1
CONTROL_VERSION = 2
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in an envelope (the envelope itself is 1)."""
MAX_PARAM_DEPTH = MAX_DEPTH - 2
"""Deepest nesting a param may have, so that its envelope stays within `MAX_DEPTH`."""
_MAX_ID = 256
_MAX_SEQUENCE = 2**63 - 1
_MAX_TIME = 1e11  # seconds since the epoch: year 5138; anything beyond is not a send time
PROTOCOL = 2
"""What this release can read, told to the other instances in its heartbeats (`Heartbeat.protocol`)
so that a sender uses an additive feature only when every peer can read it. 1: releases that
did not say; 2: this release. Raised by the next additive change that peers must understand."""
_MAX_PROTOCOL = 2**31 - 1
_PREFIX = b'{"sig":"'
_SIG_LEN = 64
_BODY_AT = len(_PREFIX) + _SIG_LEN + 2  # after `<sig>",`

converter = cattrs.preconf.json.make_converter()
"""The one converter for params and envelopes (UUIDs as strings, datetimes as ISO 8601)."""
converter.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(str(value)))
converter.register_unstructure_hook(uuid.UUID, str)


class EnvelopeError(Exception):
    """An incoming message was refused; `reason` is a short stable cause for counting.

    `sender` holds what the (unverified) message claims about its sender, for diagnostics only:
    ``instance_id``, ``host``, ``application_name`` (each a short str, when present).
    """

    def __init__(
        self, reason: str, description: str, sender: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description
        self.sender: Mapping[str, str] = sender or {}


class Envelope(NamedTuple):
    """One event on the wire: who raised what, when, in which order, and its param.

    A named tuple (immutable): built once per received event, at a third of a frozen attrs
    class's cost."""

    version: int
    message_id: str
    event_id: uuid.UUID
    raiser_id: uuid.UUID
    instance_id: str
    application_name: str
    site_id: str | None
    sequence: int
    sent_at: float
    param: Any
    key_id: str
    started_at: float | None = None
    """When the sending instance started (None from a release that did not send it)."""
    host: str | None = None
    """The sending instance's host name (None from a release that did not send it)."""
    trace: TraceContext | None = None
    """The W3C trace context of the sending span (None when there was none, or it was invalid)."""


@attrs.frozen
class TraceContext:
    """A W3C trace context as carried in an envelope (validated by the decoder)."""

    traceparent: str
    """``00-<trace id: 32 lowercase hex>-<parent span id: 16 lowercase hex>-<flags: 2 hex>``."""
    tracestate: str | None = None
    """Vendor trace state, at most `MAX_TRACESTATE` printable ASCII characters."""

    def fields(self) -> dict[str, str]:
        """The envelope's ``trace`` field."""
        if self.tracestate:
            return {"traceparent": self.traceparent, "tracestate": self.tracestate}
        return {"traceparent": self.traceparent}


MAX_TRACESTATE = 512
"""Longest tracestate carried (the W3C's recommended limit)."""
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(r"[\x20-\x7e]*")


def trace_context(value: object) -> TraceContext | None:
    """A valid ``trace`` field as a `TraceContext`; None for anything else (never raises)."""
    if type(value) is not dict:
        return None
    traceparent = value.get("traceparent")
    if type(traceparent) is not str or not _TRACEPARENT.fullmatch(traceparent):
        return None
    tracestate = value.get("tracestate")
    if tracestate is not None and (
        type(tracestate) is not str
        or len(tracestate) > MAX_TRACESTATE
        or not _TRACESTATE.fullmatch(tracestate)
    ):
        tracestate = None  # the span context still holds without vendor state
    return TraceContext(traceparent, tracestate or None)


class HeartbeatKind(enum.Enum):
    """Why a control message was sent."""

    HELLO = "hello"
    """The first message of an instance's stream: every number after `last_sequence` follows."""
    PRESENCE = "presence"
    """The periodic heartbeat (every `heartbeat_interval`)."""
    IDLE = "idle"
    """Sent `heartbeat_idle_delay` after the last event of a burst, so a lost last event shows."""
    BYE = "bye"
    """The instance is stopping."""


@attrs.frozen
class Heartbeat:
    """A signed control message: who is alive and the last sequence number it sent.

    Never dispatched to handlers; uses no sequence number of its own.
    """

    kind: HeartbeatKind
    message_id: str
    instance_id: str
    application_name: str
    site_id: str | None
    host: str
    started_at: float
    sent_at: float
    last_sequence: int
    interval: float
    """The sender's `heartbeat_interval` (0: it sends no presence heartbeats)."""
    key_id: str
    summary: Any = None
    """A small JSON object of the sender's own counters (optional)."""
    protocol: int = PROTOCOL
    """What the sender can read (`PROTOCOL`); 1 when its heartbeat did not say (older)."""


# Event and raiser ids are few and repeat: parse and print each once.
uuid_text = functools.lru_cache(maxsize=4096)(str)
parse_uuid = functools.lru_cache(maxsize=4096)(uuid.UUID)

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode_str = json.encoder.encode_basestring
"""`_encoder.encode` of a str."""


def _encode_checked(value: object) -> str:
    """`_encoder.encode(value)` for a value that `to_wire_param` accepted (so it nests at most
    `MAX_PARAM_DEPTH` deep and cannot be circular): the C encoder is built once, not per call,
    and skips the circular-reference bookkeeping."""
    return "".join(_c_encode(value, 0))


_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # CPython's _json
if _c_make_encoder is not None:
    _c_encode = _c_make_encoder(
        None, _encoder.default, _encode_str, None, ":", ",", False, False, False
    )
else:  # pragma: no cover  # an interpreter without the C accelerator
    _encode_checked = _encoder.encode  # type: ignore[assignment]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _DEPTH_STEP)


def too_deep(body: bytes) -> bool:
    """Whether JSON `body` nests arrays and objects deeper than `MAX_DEPTH` (strings ignored)."""
    opening = body.count(b"{")
    if b"[" in body:  # looking for one byte is quicker than counting it
        opening += body.count(b"[")
    if opening <= MAX_DEPTH:  # the common case: no scan needed
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets))) > MAX_DEPTH


def parse_json(body: bytes) -> Any:
    """Parse untrusted JSON, bounded: `ValueError` for anything but strict, shallow JSON.

    Refused: invalid UTF-8, nesting deeper than `MAX_DEPTH`, NaN and Infinity (also as numbers
    too large for a float), integers over 4300 digits, and lone UTF-16 surrogates.
    """
    if too_deep(body):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if b"\\" in body and _SURROGATE.search(body):  # one byte's search is the quick one
        raise ValueError("contains a UTF-16 surrogate escape")
    text = body.decode()
    # `_decoder.decode`, without its two whitespace scans when there is no whitespace around
    start = len(text) - len(text.lstrip(_JSON_SPACE)) if text[:1] in _JSON_SPACES else 0
    value, end = _decoder.raw_decode(text, start)
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise ValueError(f"extra data at character {end}")
    return value


_JSON_SPACE = " \t\n\r"
_JSON_SPACES = frozenset(_JSON_SPACE)


def envelope_fields(
    message_id: str,
    event_id: uuid.UUID,
    raiser_id: uuid.UUID,
    instance_id: str,
    application_name: str,
    site_id: str | None,
    sequence: int,
    sent_at: float,
    param: Any,
    started_at: float | None = None,
    host: str | None = None,
    trace: TraceContext | None = None,
) -> dict[str, Any]:
    """The JSON fields of a version-1 envelope (the codec adds the key id and signs)."""
    fields: dict[str, Any] = {
        "version": VERSION,
        "message_id": message_id,
        "event_id": uuid_text(event_id),
        "raiser_id": uuid_text(raiser_id),
        "instance_id": instance_id,
        "application_name": application_name,
        "site_id": site_id,
        "sequence": sequence,
        "sent_at": sent_at,
        "started_at": started_at,
        "host": host,
        "param": param,
    }
    if trace is not None:
        fields["trace"] = trace.fields()
    return fields


_EVENT_KEYS = [*envelope_fields("", uuid.UUID(int=0), uuid.UUID(int=0), "", "", None, 1, 0.0, 0)]
_EVENT_ORDER = [*_EVENT_KEYS, "key_id"]
_EVENT_ORDER_TRACED = [*_EVENT_KEYS, "trace", "key_id"]
_EVENT_HEAD = f'{{"version":{VERSION},"message_id":'


def _event_body(fields: dict[str, Any]) -> bytes | None:
    """`_encoder.encode(fields).encode()` for a version-1 envelope's fields (with its key id),
    byte for byte, or None for fields it does not cover (then the encoder runs).

    Faster: what is the same for every event of one raiser from one instance is encoded once
    (`_event_parts`); per event only the message id, numbers, param and trace are."""
    keys = [*fields]
    if (keys != _EVENT_ORDER and keys != _EVENT_ORDER_TRACED) or fields["version"] is not VERSION:
        return None  # other fields, or in another order
    return _event_body_of(
        fields["message_id"],
        fields["event_id"],
        fields["raiser_id"],
        fields["instance_id"],
        fields["application_name"],
        fields["site_id"],
        fields["sequence"],
        fields["sent_at"],
        fields["param"],
        fields["started_at"],
        fields["host"],
        fields["key_id"],
        fields.get("trace"),
    )


def _event_body_of(
    message_id: object,
    event_id: object,
    raiser_id: object,
    instance_id: object,
    application_name: object,
    site_id: object,
    sequence: object,
    sent_at: object,
    param: object,
    started_at: object,
    host: object,
    key_id: object,
    trace: object,
) -> bytes | None:
    """`_event_body` of the fields as arguments (the ids as str); None where it does not apply."""
    if (
        type(message_id) is not str
        or type(sequence) is not int
        or type(sent_at) is not float
        or not math.isfinite(sent_at)
        or (started_at is not None and (type(started_at) is not float or not started_at > 0.0))
    ):
        return None  # the encoder formats (or refuses) anything else; -0.0 == 0.0 as a key
    try:
        event, sent, tail = _event_parts(
            event_id, raiser_id, instance_id, application_name, site_id, started_at, host, key_id
        )
    except (TypeError, ValueError):  # unhashable, or refused: the encoder says what is wrong
        return None
    return "".join(
        (
            _EVENT_HEAD,
            _encode_str(message_id),
            event,
            repr(sequence),
            ',"sent_at":',
            repr(sent_at),  # what the encoder writes for a finite float
            sent,
            _encode_checked(param),
            tail if trace is None else f',"trace":{_encoder.encode(trace)}{tail}',
        )
    ).encode()


@functools.lru_cache(maxsize=1024, typed=True)
def _event_parts(
    event_id: object,
    raiser_id: object,
    instance_id: object,
    application_name: object,
    site_id: object,
    started_at: object,
    host: object,
    key_id: object,
) -> tuple[str, str, str]:
    """The constant JSON around an event's sequence, send time and param (see `_event_body`)."""
    encode = _encoder.encode
    return (
        f',"event_id":{encode(event_id)},"raiser_id":{encode(raiser_id)},'
        f'"instance_id":{encode(instance_id)},"application_name":{encode(application_name)},'
        f'"site_id":{encode(site_id)},"sequence":',
        f',"started_at":{encode(started_at)},"host":{encode(host)},"param":',
        f',"key_id":{encode(key_id)}}}',
    )


def heartbeat_fields(heartbeat: Heartbeat) -> dict[str, Any]:
    """The JSON fields of a version-2 control message (the codec adds the key id and signs)."""
    fields = {
        "version": CONTROL_VERSION,
        "kind": heartbeat.kind.value,
        "message_id": heartbeat.message_id,
        "instance_id": heartbeat.instance_id,
        "application_name": heartbeat.application_name,
        "site_id": heartbeat.site_id,
        "host": heartbeat.host,
        "started_at": heartbeat.started_at,
        "sent_at": heartbeat.sent_at,
        "last_sequence": heartbeat.last_sequence,
        "interval": heartbeat.interval,
    }
    if heartbeat.summary is not None:
        fields["summary"] = heartbeat.summary
    if heartbeat.protocol != 1:  # 1 is what an absent field means
        fields["protocol"] = heartbeat.protocol
    return fields


_JSON_SCALARS = (str, int, float, bool, type(None))


def to_wire_param(param: object) -> object:
    """Check that `param` can travel and turn it into its JSON form.

    Accepted: str, int, float (finite), bool, None, list / tuple, dict with str keys, UUID,
    datetime / date, and attrs instances (via cattrs), nested at most `MAX_PARAM_DEPTH` deep.
    Anything else is a `TypeError` naming the type (or the depth) and where it was found.
    """
    try:
        convert = _needs_conversion(param, MAX_PARAM_DEPTH)
    except _Unsendable as error:
        where = "param" + "".join(reversed(error.path))
        raise TypeError(f"{where} {error.problem}") from None
    return converter.unstructure(param) if convert else param


class _Unsendable(Exception):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str] = []  # innermost first, built while unwinding


_SCALARS = frozenset({str, int, bool, type(None)})


def _needs_conversion(value: object, depth: int) -> bool:
    """Raise `_Unsendable` for what cannot travel; say whether cattrs must convert something.

    `depth` is how many more levels of lists, dicts and attrs instances may nest here.
    """
    kind = type(value)
    if kind in _SCALARS:
        return False
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise _Unsendable(f"is {value!r}: only finite floats can be sent as JSON")
        return False
    if depth <= 0 and (kind is dict or isinstance(value, list | tuple) or attrs.has(kind)):
        raise _Unsendable(
            f"nests lists, dicts or attrs instances deeper than {MAX_PARAM_DEPTH} levels "
            "(receivers refuse deeper envelopes): flatten it or send an id to look up"
        )
    if kind is dict:
        for key in value:  # type: ignore[attr-defined]
            if type(key) is not str:
                raise _Unsendable(
                    f"has a key of type {type(key).__name__} ({key!r}): "
                    "dict keys of an event param must be str"
                )
        return _items_need_conversion(value.items(), "[{!r}]", depth)  # type: ignore[attr-defined]
    if isinstance(value, list | tuple):
        return _items_need_conversion(enumerate(value), "[{}]", depth) or isinstance(value, tuple)
    if isinstance(value, uuid.UUID | datetime.datetime | datetime.date):
        return True
    if isinstance(value, _JSON_SCALARS):  # subclasses, such as str and int enums
        if isinstance(value, float) and not math.isfinite(value):
            raise _Unsendable(f"is {value!r}: only finite floats can be sent as JSON")
        return True
    if attrs.has(kind):
        fields = ((f.name, getattr(value, f.name)) for f in attrs.fields(kind))
        _items_need_conversion(fields, ".{}", depth)
        return True
    raise _Unsendable(
        f"has type {kind.__module__}.{kind.__qualname__}, which cannot be sent: use str, int, "
        "float, bool, None, list, dict with str keys, UUID, datetime or an attrs class"
    )


class _HmacSha256:
    """HMAC-SHA256 with one key: the stdlib's keyed HMAC is built once and copied per message
    (the key is not padded and hashed again for every envelope), and for an envelope-sized
    message the copy does not release the GIL (`hmac.digest` always does: a hand-off to
    another thread per message)."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        keyed = hmac.new(key, digestmod=hashlib.sha256)
        # OpenSSL's keyed object where `hmac.HMAC` wraps one (the same copy, update and
        # hexdigest, without a Python frame around each); else the stdlib object itself.
        self._keyed: Any = getattr(keyed, "_hmac", None) or keyed

    def hexdigest(self, body: bytes) -> bytes:
        """The MAC of `body` as 64 lowercase hex digits (ASCII bytes)."""
        mac = self._keyed.copy()
        mac.update(body)
        digest: str = mac.hexdigest()
        return digest.encode()


def _items_need_conversion(items: Iterable[tuple[object, object]], label: str, depth: int) -> bool:
    convert = False
    for key, item in items:
        if type(item) in _SCALARS:  # the common case, without a call
            continue
        try:
            convert = _needs_conversion(item, depth - 1) or convert
        except _Unsendable as error:
            error.path.append(label.format(key))  # formatted only on the error path
            raise
    return convert


def _key_id_for(secret: str) -> str:
    return hashlib.sha256(b"eventbroker-key-id:" + secret.encode()).hexdigest()[:8]


MIN_SECRET_LENGTH = 16
_DERIVED = object()  # the key id is derived from the secret


def normalize_keys(
    secret: str | list[str] | tuple[str, ...] | Mapping[str, str],
) -> dict[str, bytes]:
    """Keys by key id, the signing key first. Ids are derived from the secret unless given.

    Refuses (`ValueError` naming the rule and ``EVENTBROKER_SECRET``, never the secret): no
    secret, a secret that is not a str, blank or shorter than `MIN_SECRET_LENGTH` characters,
    and a key id that is not a non-empty str (YAML turns ``2024:`` into an int).
    """
    # (key id, secret, how errors name it): a derived key id is a hash of the secret, so an
    # error names its position instead (a short secret could be guessed back from its hash).
    if isinstance(secret, str):
        items: list[tuple[object, object, str]] = [(_DERIVED, secret, "secret")]
    elif isinstance(secret, Mapping):
        items = [
            (key_id, value, f"secret for key id {key_id!r}") for key_id, value in secret.items()
        ]
    elif isinstance(secret, list | tuple):
        items = [(_DERIVED, value, f"secret #{n + 1}") for n, value in enumerate(secret)]
    else:
        raise ValueError(
            f"EventBrokerOptions.secret must be a str, a list of str or a {{key id: secret}} "
            f"dict, got {type(secret).__name__} (EVENTBROKER_SECRET)"
        )
    if not items:
        raise ValueError(
            "EventBrokerOptions.secret is empty: give at least one secret (EVENTBROKER_SECRET)"
        )
    keys: dict[str, bytes] = {}
    for given_id, value, label in items:
        if given_id is not _DERIVED and (type(given_id) is not str or not given_id.strip()):
            raise ValueError(
                f"EventBrokerOptions.secret has key id {given_id!r} of type "
                f"{type(given_id).__name__}: key ids must be non-empty str (quote them in YAML: "
                "'2024': ...); every peer would refuse messages signed with it as unknown_key"
            )
        if not isinstance(value, str):
            raise ValueError(
                f"EventBrokerOptions.{label} is a {type(value).__name__}, not a str "
                "(EVENTBROKER_SECRET)"
            )
        if len(value.strip()) < MIN_SECRET_LENGTH:
            what = "blank" if not value.strip() else f"{len(value.strip())} characters long"
            raise ValueError(
                f"EventBrokerOptions.{label} is {what}: secrets must have at least "
                f"{MIN_SECRET_LENGTH} characters (EVENTBROKER_SECRET); generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        key_id = _key_id_for(value) if given_id is _DERIVED else given_id
        keys[key_id] = value.encode()  # type: ignore[index]  # checked: a str
    return keys


class EnvelopeCodec:
    """Encodes and signs envelopes with the first key; verifies with any configured key."""

    def __init__(
        self, keys: Mapping[str, bytes], *, max_message_bytes: int, replay_window: float
    ) -> None:
        # The key set-up is done once per key, not per message (see `_HmacSha256`).
        self._keys = {key_id: _HmacSha256(key) for key_id, key in keys.items()}
        self.signing_key_id = next(iter(self._keys))
        self._signing_key = self._keys[self.signing_key_id]
        self.max_message_bytes = max_message_bytes
        self.replay_window = replay_window

    def encode(self, envelope: Envelope) -> bytes:
        """The signed wire bytes. `ValueError` naming both sizes when over `max_message_bytes`.

        The param is taken as `to_wire_param` returns it (checked, JSON values only)."""
        return self.encode_fields(
            envelope_fields(
                envelope.message_id,
                envelope.event_id,
                envelope.raiser_id,
                envelope.instance_id,
                envelope.application_name,
                envelope.site_id,
                envelope.sequence,
                envelope.sent_at,
                envelope.param,
                envelope.started_at,
                envelope.host,
                envelope.trace,
            )
        )

    def encode_heartbeat(self, heartbeat: Heartbeat) -> bytes:
        """The signed wire bytes of a control message."""
        return self.encode_fields(heartbeat_fields(heartbeat))

    def encode_fields(self, fields: dict[str, Any]) -> bytes:
        """`encode` for fields from `envelope_fields` or `heartbeat_fields`."""
        fields["key_id"] = self.signing_key_id  # this codec's signing key signs
        body = _event_body(fields)
        if body is None:
            body = _encoder.encode(fields).encode()
        return self._signed(body)

    def encode_event(
        self,
        message_id: str,
        event_id: uuid.UUID,
        raiser_id: uuid.UUID,
        instance_id: str,
        application_name: str,
        site_id: str | None,
        sequence: int,
        sent_at: float,
        param: Any,
        started_at: float | None,
        host: str | None,
    ) -> bytes:
        """`encode_fields(envelope_fields(...))` without the fields (an event with no trace)."""
        body = _event_body_of(
            message_id,
            uuid_text(event_id),
            uuid_text(raiser_id),
            instance_id,
            application_name,
            site_id,
            sequence,
            sent_at,
            param,
            started_at,
            host,
            self.signing_key_id,
            None,
        )
        if body is None:
            return self.encode_fields(
                envelope_fields(
                    message_id,
                    event_id,
                    raiser_id,
                    instance_id,
                    application_name,
                    site_id,
                    sequence,
                    sent_at,
                    param,
                    started_at,
                    host,
                )
            )
        return self._signed(body)

    def _signed(self, body: bytes) -> bytes:
        """The wire bytes of `body`, signed; `ValueError` when over `max_message_bytes`."""
        signature = self._signing_key.hexdigest(body)
        wire = b"".join((_PREFIX, signature, b'",', memoryview(body)[1:]))
        if len(wire) > self.max_message_bytes:
            raise ValueError(
                f"the event's envelope is {len(wire)} bytes, over max_message_bytes="
                f"{self.max_message_bytes}: send a smaller param (an id to look up, say)"
            )
        return wire

    def decode(self, wire: bytes, now: float) -> Envelope | Heartbeat:
        """Verify and parse any bytes; raises only `EnvelopeError`, with the refusal's cause."""
        if len(wire) > self.max_message_bytes:
            raise EnvelopeError(
                "oversize", f"{len(wire)} bytes, over max_message_bytes={self.max_message_bytes}"
            )
        if not wire.startswith(_PREFIX) or wire[_BODY_AT - 2 : _BODY_AT] != b'",':
            raise EnvelopeError("malformed", "not a signed envelope")
        body = b"{" + wire[_BODY_AT:]
        try:
            fields = parse_json(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise EnvelopeError("malformed", f"invalid JSON: {_short(str(error))}") from None
        if type(fields) is not dict:
            raise EnvelopeError("malformed", "the envelope is not a JSON object")
        version = fields.get("version")
        if type(version) is not int or version not in (VERSION, CONTROL_VERSION):
            newer = type(version) is int and version > CONTROL_VERSION
            raise EnvelopeError(
                "unknown_version",
                f"envelope version {_short(repr(version))}, expected {VERSION} or "
                f"{CONTROL_VERSION}" + (": a newer release sent it" if newer else ""),
                _claimed_sender(fields),
            )
        key_id: str = fields.get("key_id")  # type: ignore[assignment]  # checked next
        key = self._keys.get(key_id) if type(key_id) is str else None
        if key is None:
            raise EnvelopeError(
                "unknown_key", f"unknown key id {_short(repr(key_id))}", _claimed_sender(fields)
            )
        expected = key.hexdigest(body)
        if not hmac.compare_digest(expected, wire[len(_PREFIX) : len(_PREFIX) + _SIG_LEN]):
            raise EnvelopeError("bad_signature", "the signature does not match the envelope")
        try:
            message = (
                _envelope(fields, key_id) if version == VERSION else _heartbeat(fields, key_id)
            )  # key_id is a str: it named a key
        except (KeyError, TypeError, ValueError) as error:
            raise EnvelopeError("malformed", f"bad envelope field: {_short(str(error))}") from None
        if not abs(now - message.sent_at) <= self.replay_window:
            raise EnvelopeError(
                "replay_window",
                f"sent_at {message.sent_at:.3f} is {now - message.sent_at:+.1f} s from now, "
                f"outside the replay window of {self.replay_window} s",
            )
        return message


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _claimed_sender(fields: dict[str, Any]) -> dict[str, str]:
    """What unverified `fields` say of their sender, as short reprs-safe strings."""
    return {
        name: _short(value, 80)
        for name in ("instance_id", "host", "application_name")
        if type(value := fields.get(name)) is str
    } | ({"key_id": _short(key_id, 80)} if type(key_id := fields.get("key_id")) is str else {})


def _text(fields: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = fields[name] if not optional else fields.get(name)
    if value is None and optional:
        return None
    if type(value) is not str or len(value) > _MAX_ID:
        raise TypeError(f"{name} must be a str of at most {_MAX_ID} characters")
    return value


def _time(fields: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value: Any = fields[name] if not optional else fields.get(name)
    if value is None and optional:
        return None
    # NaN fails every comparison; a huge int compares without overflowing float().
    if type(value) not in (int, float) or not 0 <= value <= _MAX_TIME:
        raise ValueError(f"{name} must be a time in seconds since the epoch")
    return float(value)


def _count(fields: dict[str, Any], name: str, low: int) -> int:
    value = fields[name]
    if type(value) is not int or not low <= value <= _MAX_SEQUENCE:
        raise ValueError(f"{name} must be an int from {low} to 2**63-1")
    return value


_NUMBER = (int, float)


def _envelope(fields: dict[str, Any], key_id: str) -> Envelope:
    message_id = fields["message_id"]
    event_id = fields["event_id"]
    raiser_id = fields["raiser_id"]
    instance_id = fields["instance_id"]
    application_name = fields["application_name"]
    site_id = fields["site_id"]
    sequence = fields["sequence"]
    sent_at = fields["sent_at"]
    started_at = fields.get("started_at")
    host = fields.get("host")
    if not (  # the common case in one expression; the helpers below say what is wrong
        type(message_id) is str
        and type(event_id) is str
        and type(raiser_id) is str
        and type(instance_id) is str
        and type(application_name) is str
        and (site_id is None or type(site_id) is str)
        and (host is None or type(host) is str)
        and type(sequence) is int
        and 0 < sequence <= _MAX_SEQUENCE
        and type(sent_at) in _NUMBER
        and 0 <= sent_at <= _MAX_TIME
        and (started_at is None or (type(started_at) in _NUMBER and 0 <= started_at <= _MAX_TIME))
        and len(message_id) <= _MAX_ID
        and len(instance_id) <= _MAX_ID
        and len(application_name) <= _MAX_ID
        and (site_id is None or len(site_id) <= _MAX_ID)
        and (host is None or len(host) <= _MAX_ID)
    ):
        for name in ("message_id", "event_id", "raiser_id", "instance_id", "application_name"):
            _text(fields, name)
        for name in ("site_id", "host"):
            _text(fields, name, optional=True)
        _count(fields, "sequence", 1)
        _time(fields, "sent_at")
        _time(fields, "started_at", optional=True)
    return Envelope(
        VERSION,
        message_id,
        parse_uuid(event_id),
        parse_uuid(raiser_id),
        instance_id,
        application_name,
        site_id,
        sequence,
        float(sent_at),
        fields["param"],
        key_id,
        None if started_at is None else float(started_at),
        host,
        None if (trace := fields.get("trace")) is None else trace_context(trace),
    )


def _heartbeat(fields: dict[str, Any], key_id: str) -> Heartbeat:
    interval = fields["interval"]
    if type(interval) not in (int, float) or not 0 <= interval <= 86400:
        raise ValueError("interval must be 0 to 86400 seconds")
    protocol = fields.get("protocol", 1)
    if type(protocol) is not int or not 1 <= protocol <= _MAX_PROTOCOL:
        raise ValueError("protocol must be an int from 1 to 2**31-1")
    return Heartbeat(
        HeartbeatKind(fields["kind"]),
        _text(fields, "message_id"),
        _text(fields, "instance_id"),
        _text(fields, "application_name"),
        _text(fields, "site_id", optional=True),
        _text(fields, "host"),
        _time(fields, "started_at"),
        _time(fields, "sent_at"),
        _count(fields, "last_sequence", 0),
        float(interval),
        key_id,
        fields.get("summary"),
        protocol,
    )
