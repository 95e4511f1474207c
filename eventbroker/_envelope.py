"""The envelope: a versioned, signed JSON message, and its codec.

Wire format (version 1)::

    {"sig":"<64 hex chars>",<the canonical JSON of the envelope, without its opening brace>

The JSON is compact (no spaces, UTF-8, no NaN), and the signature is HMAC-SHA256 over exactly
those bytes: every field, the param included, with the key id inside so keys can rotate. The
receiver verifies the bytes as received (no re-encoding, so no canonical form is needed) and
any changed byte fails verification.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import cattrs.preconf.json

VERSION = 1
_PREFIX = b'{"sig":"'
_SIG_LEN = 64
_BODY_AT = len(_PREFIX) + _SIG_LEN + 2  # after `<sig>",`

converter = cattrs.preconf.json.make_converter()
"""The one converter for params and envelopes (UUIDs as strings, datetimes as ISO 8601)."""
converter.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(str(value)))
converter.register_unstructure_hook(uuid.UUID, str)


class EnvelopeError(Exception):
    """An incoming message was refused; `reason` is a short stable cause for counting."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


@attrs.frozen
class Envelope:
    """One event on the wire: who raised what, when, in which order, and its param."""

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


# Event and raiser ids are few and repeat: parse and print each once.
uuid_text = functools.lru_cache(maxsize=4096)(str)
parse_uuid = functools.lru_cache(maxsize=4096)(uuid.UUID)

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_decoder = json.JSONDecoder()


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
) -> dict[str, Any]:
    """The JSON fields of a version-1 envelope (the codec adds the key id and signs)."""
    return {
        "version": VERSION,
        "message_id": message_id,
        "event_id": uuid_text(event_id),
        "raiser_id": uuid_text(raiser_id),
        "instance_id": instance_id,
        "application_name": application_name,
        "site_id": site_id,
        "sequence": sequence,
        "sent_at": sent_at,
        "param": param,
    }


_JSON_SCALARS = (str, int, float, bool, type(None))


def to_wire_param(param: object) -> object:
    """Check that `param` can travel and turn it into its JSON form.

    Accepted: str, int, float (finite), bool, None, list / tuple, dict with str keys, UUID,
    datetime / date, and attrs instances (via cattrs). Anything else is a `TypeError` naming
    the type and where it was found.
    """
    try:
        convert = _needs_conversion(param)
    except _Unsendable as error:
        where = "param" + "".join(reversed(error.path))
        raise TypeError(f"{where} {error.problem}") from None
    return converter.unstructure(param) if convert else param


class _Unsendable(Exception):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str] = []  # innermost first, built while unwinding


_SCALARS = frozenset({str, int, bool, type(None)})


def _needs_conversion(value: object) -> bool:
    """Raise `_Unsendable` for what cannot travel; say whether cattrs must convert something."""
    kind = type(value)
    if kind in _SCALARS:
        return False
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise _Unsendable(f"is {value!r}: only finite floats can be sent as JSON")
        return False
    if kind is dict:
        for key in value:  # type: ignore[attr-defined]
            if type(key) is not str:
                raise _Unsendable(
                    f"has a key of type {type(key).__name__} ({key!r}): "
                    "dict keys of an event param must be str"
                )
        return _items_need_conversion(value.items(), "[{!r}]")  # type: ignore[attr-defined]
    if isinstance(value, list | tuple):
        return _items_need_conversion(enumerate(value), "[{}]") or isinstance(value, tuple)
    if isinstance(value, uuid.UUID | datetime.datetime | datetime.date):
        return True
    if isinstance(value, _JSON_SCALARS):  # subclasses, such as str and int enums
        if isinstance(value, float) and not math.isfinite(value):
            raise _Unsendable(f"is {value!r}: only finite floats can be sent as JSON")
        return True
    if attrs.has(kind):
        fields = ((f.name, getattr(value, f.name)) for f in attrs.fields(kind))
        _items_need_conversion(fields, ".{}")
        return True
    raise _Unsendable(
        f"has type {kind.__module__}.{kind.__qualname__}, which cannot be sent: use str, int, "
        "float, bool, None, list, dict with str keys, UUID, datetime or an attrs class"
    )


def _sign(keyed: hmac.HMAC, body: bytes) -> bytes:
    mac = keyed.copy()
    mac.update(body)
    return mac.hexdigest().encode()


def _items_need_conversion(items: Iterable[tuple[object, object]], label: str) -> bool:
    convert = False
    for key, item in items:
        if type(item) in _SCALARS:  # the common case, without a call
            continue
        try:
            convert = _needs_conversion(item) or convert
        except _Unsendable as error:
            error.path.append(label.format(key))  # formatted only on the error path
            raise
    return convert


def _key_id_for(secret: str) -> str:
    return hashlib.sha256(b"eventbroker-key-id:" + secret.encode()).hexdigest()[:8]


def normalize_keys(
    secret: str | list[str] | tuple[str, ...] | Mapping[str, str],
) -> dict[str, bytes]:
    """Keys by key id, the signing key first. Ids are derived from the secret unless given."""
    if isinstance(secret, str):
        items = [(_key_id_for(secret), secret)]
    elif isinstance(secret, Mapping):
        items = list(secret.items())
    else:
        items = [(_key_id_for(s), s) for s in secret]
    if not items:
        raise ValueError("EventBrokerOptions.secret is empty: give at least one secret")
    keys: dict[str, bytes] = {}
    for key_id, value in items:
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"EventBrokerOptions.secret has an empty or non-str secret for key id {key_id!r}"
            )
        keys[key_id] = value.encode()
    return keys


class EnvelopeCodec:
    """Encodes and signs envelopes with the first key; verifies with any configured key."""

    def __init__(
        self, keys: Mapping[str, bytes], *, max_message_bytes: int, replay_window: float
    ) -> None:
        # One keyed HMAC per key, copied per message: no key set-up per message, and no GIL
        # hand-off (a one-shot hmac.digest releases the GIL, which costs more than it saves).
        self._keys = {
            key_id: hmac.new(key, digestmod=hashlib.sha256) for key_id, key in keys.items()
        }
        self.signing_key_id = next(iter(self._keys))
        self._signing_key = self._keys[self.signing_key_id]
        self.max_message_bytes = max_message_bytes
        self.replay_window = replay_window

    def encode(self, envelope: Envelope) -> bytes:
        """The signed wire bytes. `ValueError` naming both sizes when over `max_message_bytes`."""
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
            )
        )

    def encode_fields(self, fields: dict[str, Any]) -> bytes:
        """`encode` for fields from `envelope_fields`."""
        fields["key_id"] = self.signing_key_id  # this codec's signing key signs
        body = _encoder.encode(fields).encode()
        signature = _sign(self._signing_key, body)
        wire = b"".join((_PREFIX, signature, b'",', memoryview(body)[1:]))
        if len(wire) > self.max_message_bytes:
            raise ValueError(
                f"the event's envelope is {len(wire)} bytes, over max_message_bytes="
                f"{self.max_message_bytes}: send a smaller param (an id to look up, say)"
            )
        return wire

    def decode(self, wire: bytes, now: float) -> Envelope:
        """Verify and parse; raises `EnvelopeError` with the cause of any refusal."""
        if len(wire) > self.max_message_bytes:
            raise EnvelopeError(
                "oversize", f"{len(wire)} bytes, over max_message_bytes={self.max_message_bytes}"
            )
        if not wire.startswith(_PREFIX) or wire[_BODY_AT - 2 : _BODY_AT] != b'",':
            raise EnvelopeError("malformed", "not a signed envelope")
        body = b"{" + wire[_BODY_AT:]
        try:
            fields = _decoder.decode(body.decode())
        except (ValueError, UnicodeDecodeError) as error:
            raise EnvelopeError("malformed", f"invalid JSON: {error}") from None
        if type(fields) is not dict:
            raise EnvelopeError("malformed", "the envelope is not a JSON object")
        version = fields.get("version")
        if version != VERSION or type(version) is not int:
            raise EnvelopeError(
                "unknown_version", f"envelope version {version!r}, expected {VERSION}"
            )
        key_id = fields.get("key_id")
        key = self._keys.get(key_id) if type(key_id) is str else None
        if key is None:
            raise EnvelopeError("unknown_key", f"unknown key id {key_id!r}")
        expected = _sign(key, body)
        if not hmac.compare_digest(expected, wire[len(_PREFIX) : len(_PREFIX) + _SIG_LEN]):
            raise EnvelopeError("bad_signature", "the signature does not match the envelope")
        try:
            message_id = fields["message_id"]
            event_id = fields["event_id"]
            raiser_id = fields["raiser_id"]
            instance_id = fields["instance_id"]
            application_name = fields["application_name"]
            site_id = fields["site_id"]
            sequence = fields["sequence"]
            sent_at = fields["sent_at"]
            param = fields["param"]
        except KeyError as error:
            raise EnvelopeError("malformed", f"the envelope has no field {error}") from None
        if not (
            type(message_id) is str
            and type(event_id) is str
            and type(raiser_id) is str
            and type(instance_id) is str
            and type(application_name) is str
            and (site_id is None or type(site_id) is str)
            and type(sequence) is int
            and type(sent_at) in (float, int)
        ):
            raise EnvelopeError("malformed", "an envelope field has the wrong type")
        try:
            envelope = Envelope(
                VERSION,
                message_id,
                parse_uuid(event_id),
                parse_uuid(raiser_id),
                instance_id,
                application_name,
                site_id,
                sequence,
                float(sent_at),
                param,
                str(key_id),
            )
        except ValueError as error:
            raise EnvelopeError("malformed", f"bad envelope field: {error}") from None
        if abs(now - envelope.sent_at) > self.replay_window:
            raise EnvelopeError(
                "replay_window",
                f"sent_at {envelope.sent_at:.3f} is {now - envelope.sent_at:+.1f} s from now, "
                f"outside the replay window of {self.replay_window} s",
            )
        return envelope
