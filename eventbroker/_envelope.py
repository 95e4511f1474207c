"""The envelope: a versioned, signed JSON message, and its codec.

Wire format (version 1)::

    {"sig":"<64 hex chars>",<the canonical JSON of the envelope, without its opening brace>

The canonical JSON is ``json.dumps(fields, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` encoded as UTF-8, and the signature is
HMAC-SHA256 over exactly those bytes: every field, the param included, with the key id inside
so keys can rotate. The receiver verifies the bytes as received (no re-encoding), so any
changed byte fails verification.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Mapping
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


def _fields_of(envelope: Envelope) -> dict[str, Any]:
    return {
        "version": envelope.version,
        "message_id": envelope.message_id,
        "event_id": str(envelope.event_id),
        "raiser_id": str(envelope.raiser_id),
        "instance_id": envelope.instance_id,
        "application_name": envelope.application_name,
        "site_id": envelope.site_id,
        "sequence": envelope.sequence,
        "sent_at": envelope.sent_at,
        "param": envelope.param,
        "key_id": envelope.key_id,
    }


_JSON_SCALARS = (str, int, float, bool, type(None))


def to_wire_param(param: object) -> object:
    """Check that `param` can travel and turn it into its JSON form.

    Accepted: str, int, float (finite), bool, None, list / tuple, dict with str keys, UUID,
    datetime / date, and attrs instances (via cattrs). Anything else is a `TypeError` naming
    the type and where it was found.
    """
    _check_param(param, "param")
    return converter.unstructure(param)


def _check_param(value: object, where: str) -> None:
    if isinstance(value, _JSON_SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}: only finite floats can be sent as JSON")
        return
    if isinstance(value, uuid.UUID | datetime.datetime | datetime.date):
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_param(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has a key of type {type(key).__name__} ({key!r}): "
                    "dict keys of an event param must be str"
                )
            _check_param(item, f"{where}[{key!r}]")
        return
    if attrs.has(type(value)):
        for field in attrs.fields(type(value)):  # type: ignore[arg-type]
            _check_param(getattr(value, field.name), f"{where}.{field.name}")
        return
    raise TypeError(
        f"{where} has type {type(value).__module__}.{type(value).__qualname__}, which cannot be "
        "sent: use str, int, float, bool, None, list, dict with str keys, UUID, datetime or an "
        "attrs class"
    )


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
        self._keys = dict(keys)
        self.signing_key_id = next(iter(self._keys))
        self._signing_key = self._keys[self.signing_key_id]
        self.max_message_bytes = max_message_bytes
        self.replay_window = replay_window

    def encode(self, envelope: Envelope) -> bytes:
        """The signed wire bytes. `ValueError` naming both sizes when over `max_message_bytes`."""
        body = json.dumps(
            _fields_of(envelope),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode()
        signature = hmac.new(self._signing_key, body, hashlib.sha256).hexdigest().encode()
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
            fields = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise EnvelopeError("malformed", f"invalid JSON: {error}") from None
        if not isinstance(fields, dict):
            raise EnvelopeError("malformed", "the envelope is not a JSON object")
        version = fields.get("version")
        if version != VERSION:
            raise EnvelopeError(
                "unknown_version", f"envelope version {version!r}, expected {VERSION}"
            )
        key = self._keys.get(fields.get("key_id"))  # type: ignore[arg-type]
        if key is None:
            raise EnvelopeError("unknown_key", f"unknown key id {fields.get('key_id')!r}")
        expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, wire[len(_PREFIX) : len(_PREFIX) + _SIG_LEN]):
            raise EnvelopeError("bad_signature", "the signature does not match the envelope")
        try:
            envelope = Envelope(
                version=VERSION,
                message_id=_typed(fields, "message_id", str),
                event_id=uuid.UUID(_typed(fields, "event_id", str)),
                raiser_id=uuid.UUID(_typed(fields, "raiser_id", str)),
                instance_id=_typed(fields, "instance_id", str),
                application_name=_typed(fields, "application_name", str),
                site_id=_typed(fields, "site_id", (str, type(None))),
                sequence=_typed(fields, "sequence", int),
                sent_at=float(_typed(fields, "sent_at", (int, float))),
                param=fields["param"],
                key_id=fields["key_id"],
            )
        except (KeyError, ValueError, TypeError) as error:
            raise EnvelopeError("malformed", f"bad envelope field: {error}") from None
        if abs(now - envelope.sent_at) > self.replay_window:
            raise EnvelopeError(
                "replay_window",
                f"sent_at {envelope.sent_at:.3f} is {now - envelope.sent_at:+.1f} s from now, outside "
                f"the replay window of {self.replay_window} s",
            )
        return envelope


def _typed(fields: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = fields[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{name} is {type(value).__name__}")
    return value
