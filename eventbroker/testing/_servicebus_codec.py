"""Byte-level AMQP 1.0 message handling for the loopback Service Bus broker.

The broker never fully decodes the messages it relays: it splits the encoded message into its
sections once, keeps the bare message (properties, application properties, body, footer) as
bytes, and writes a fresh header and message-annotations section in front of it on every
delivery. That keeps the per-message cost small and independent of the body size.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "StoredMessage",
    "encode_delivery",
    "parse_message",
    "split_batch",
]

# section descriptor codes (AMQP 1.0, part 3.2)
HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78

_SECTION_SYMBOLS = {
    b"amqp:header:list": HEADER,
    b"amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    b"amqp:message-annotations:map": MESSAGE_ANNOTATIONS,
    b"amqp:properties:list": PROPERTIES,
    b"amqp:application-properties:map": APPLICATION_PROPERTIES,
    b"amqp:data:binary": DATA,
    b"amqp:amqp-sequence:list": AMQP_SEQUENCE,
    b"amqp:amqp-value:*": AMQP_VALUE,
    b"amqp:footer:map": FOOTER,
}

# annotations the broker owns: an incoming copy is dropped and replaced on every delivery
SEQUENCE_NUMBER = b"x-opt-sequence-number"
ENQUEUED_TIME = b"x-opt-enqueued-time"
LOCKED_UNTIL = b"x-opt-locked-until"
DEADLETTER_SOURCE = b"x-opt-deadletter-source"
SCHEDULED_ENQUEUE_TIME = b"x-opt-scheduled-enqueue-time"
_GROUP_ID = 10  # the properties list's field holding the session id
_OWNED = frozenset({SEQUENCE_NUMBER, ENQUEUED_TIME, LOCKED_UNTIL, b"x-opt-lock-token"})


class AmqpDecodeError(ValueError):
    """The bytes are not a well-formed AMQP 1.0 encoding."""


# encoded size of the fixed-width types, by constructor high nibble (0x4x: no payload)
_FIXED_WIDTH = {0x40: 1, 0x50: 2, 0x60: 3, 0x70: 5, 0x80: 9, 0x90: 17}


def _skip(buf: bytes, pos: int) -> int:
    """Return the offset just past the encoded value starting at ``pos``."""
    try:
        code = buf[pos]
    except IndexError:
        raise AmqpDecodeError(f"truncated AMQP value at offset {pos}") from None
    if code == 0x00:  # described: descriptor, then value
        return _skip(buf, _skip(buf, pos + 1))
    high = code & 0xF0
    width = _FIXED_WIDTH.get(high)
    if width is not None:
        return pos + width
    if high in (0xA0, 0xC0, 0xE0):
        if pos + 1 >= len(buf):
            raise AmqpDecodeError(f"truncated AMQP value at offset {pos}")
        return pos + 2 + buf[pos + 1]
    if high in (0xB0, 0xD0, 0xF0):
        if pos + 5 > len(buf):
            raise AmqpDecodeError(f"truncated AMQP value at offset {pos}")
        return pos + 5 + int.from_bytes(buf[pos + 1 : pos + 5], "big")
    raise AmqpDecodeError(f"unknown AMQP constructor 0x{code:02x} at offset {pos}")


def _descriptor(buf: bytes, pos: int) -> tuple[int, int]:
    """Read a section descriptor at ``pos`` (just after 0x00); return (code, value offset)."""
    code = buf[pos]
    if code == 0x53:  # smallulong
        return buf[pos + 1], pos + 2
    if code == 0x80:  # ulong
        return int.from_bytes(buf[pos + 1 : pos + 9], "big") & 0xFFFFFFFF, pos + 9
    if code == 0x44:  # ulong0
        return 0, pos + 1
    end = _skip(buf, pos)
    if code == 0xA3:
        return _SECTION_SYMBOLS.get(buf[pos + 2 : end], -1), end
    if code == 0xB3:
        return _SECTION_SYMBOLS.get(buf[pos + 5 : end], -1), end
    raise AmqpDecodeError(f"unsupported section descriptor 0x{code:02x} at offset {pos}")


def _sections(buf: bytes) -> list[tuple[int, int, int, int]]:
    """Split an encoded message into (code, section start, value start, end) tuples."""
    out = []
    pos = 0
    size = len(buf)
    while pos < size:
        if buf[pos] != 0x00:
            raise AmqpDecodeError(f"expected a described section at offset {pos}")
        code, value = _descriptor(buf, pos + 1)
        end = _skip(buf, value)
        if end > size:
            raise AmqpDecodeError("truncated AMQP message")
        out.append((code, pos, value, end))
        pos = end
    return out


def _binary(buf: bytes, pos: int) -> bytes:
    code = buf[pos]
    if code == 0xA0:
        return buf[pos + 2 : pos + 2 + buf[pos + 1]]
    if code == 0xB0:
        return buf[pos + 5 : pos + 5 + int.from_bytes(buf[pos + 1 : pos + 5], "big")]
    raise AmqpDecodeError(f"expected binary at offset {pos}, found 0x{code:02x}")


def _compound(buf: bytes, pos: int) -> tuple[int, int]:
    """Return (element count, first element offset) of a list or map at ``pos``."""
    code = buf[pos]
    if code == 0x45:  # list0
        return 0, pos + 1
    if code in (0xC0, 0xC1):
        return buf[pos + 2], pos + 3
    if code in (0xD0, 0xD1):
        return int.from_bytes(buf[pos + 5 : pos + 9], "big"), pos + 9
    if code == 0x40:  # null section value
        return 0, pos + 1
    raise AmqpDecodeError(f"expected a list or map at offset {pos}, found 0x{code:02x}")


def _scalar(buf: bytes, pos: int) -> Any:
    """Decode the few scalar types a header carries (null, bool, ubyte, uint)."""
    code = buf[pos]
    if code == 0x40:
        return None
    if code == 0x41:
        return True
    if code == 0x42:
        return False
    if code == 0x56:
        return buf[pos + 1] != 0
    if code == 0x50:
        return buf[pos + 1]
    return _uint(buf, pos)


def _uint(buf: bytes, pos: int) -> int | None:
    """A uint at `pos` (uint0, smalluint, uint); None for anything else (null included)."""
    code = buf[pos]
    if code == 0x43:
        return 0
    if code == 0x52:
        return buf[pos + 1]
    if code == 0x70:
        return int.from_bytes(buf[pos + 1 : pos + 5], "big")
    return None


def _symbol(buf: bytes, pos: int) -> bytes | None:
    code = buf[pos]
    if code in (0xA3, 0xA1):
        return buf[pos + 2 : pos + 2 + buf[pos + 1]]
    if code in (0xB3, 0xB1):
        return buf[pos + 5 : pos + 5 + int.from_bytes(buf[pos + 1 : pos + 5], "big")]
    return None


def _filter_map(buf: bytes, pos: int, keep: Callable[[int], bool]) -> tuple[bytes, int]:
    """The raw entries of the map at ``pos`` whose key (given by offset) ``keep`` accepts,
    and how many entries that is."""
    n, pos = _compound(buf, pos)
    out = bytearray()
    count = 0
    for _ in range(n // 2):
        value_end = _skip(buf, _skip(buf, pos))
        if keep(pos):
            out += buf[pos:value_end]
            count += 1
        pos = value_end
    return bytes(out), count


class StoredMessage:
    """A relayed message: the sender's header fields, its foreign annotations, the bare message,
    and the two fields the broker routes by: the session id (properties' group-id) and the
    scheduled enqueue time (annotation ``x-opt-scheduled-enqueue-time``, ms since the epoch)."""

    __slots__ = (
        "annotation_count",
        "annotations",
        "bare",
        "durable",
        "priority",
        "scheduled_ms",
        "session_id",
        "ttl_ms",
    )

    def __init__(
        self,
        bare: bytes,
        *,
        annotations: bytes = b"",
        annotation_count: int = 0,
        durable: bool = False,
        priority: int | None = None,
        ttl_ms: int | None = None,
        session_id: str | None = None,
        scheduled_ms: int | None = None,
    ) -> None:
        self.bare = bare
        self.annotations = annotations
        self.annotation_count = annotation_count
        self.durable = durable
        self.priority = priority
        self.ttl_ms = ttl_ms
        self.session_id = session_id
        self.scheduled_ms = scheduled_ms

    def with_bare(self, bare: bytes, extra_annotations: dict[bytes, str]) -> StoredMessage:
        """A copy with another bare message and extra string annotations (dead-lettering)."""
        entries = bytearray(self.annotations)
        for key, value in extra_annotations.items():
            entries += _enc_symbol(key) + _enc_str(value)
        return StoredMessage(
            bare,
            annotations=bytes(entries),
            annotation_count=self.annotation_count + len(extra_annotations),
            durable=self.durable,
            priority=self.priority,
            ttl_ms=self.ttl_ms,
            session_id=self.session_id,
        )


_F = TypeVar("_F", bound=Callable[..., Any])


def _decoding(function: _F) -> _F:
    """Turn any failure on malformed input into :class:`AmqpDecodeError`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except AmqpDecodeError:
            raise
        except (IndexError, ValueError, RecursionError, struct.error) as exc:
            raise AmqpDecodeError(f"malformed AMQP message: {exc!r}") from exc

    return wrapper  # type: ignore[return-value]


@_decoding
def parse_message(buf: bytes) -> StoredMessage:
    """Split one encoded AMQP message into a :class:`StoredMessage`."""
    buf = bytes(buf)
    sections = _sections(buf)
    durable = False
    priority: int | None = None
    ttl_ms: int | None = None
    annotations = bytearray()
    count = 0
    bare_start: int | None = None
    session_id: str | None = None
    scheduled_ms: int | None = None
    for code, start, value, _end in sections:
        if code == PROPERTIES:
            session_id = _list_string(buf, value, _GROUP_ID)
        if code == HEADER:
            n, pos = _compound(buf, value)
            fields = []
            for _ in range(min(n, 3)):
                fields.append(_scalar(buf, pos))
                pos = _skip(buf, pos)
            fields += [None] * (3 - len(fields))
            durable = bool(fields[0])
            priority = fields[1]
            ttl_ms = fields[2]
        elif code == MESSAGE_ANNOTATIONS:
            kept, n = _filter_map(buf, value, lambda key: _symbol(buf, key) not in _OWNED)
            annotations += kept
            count += n
            scheduled_ms = _timestamp(buf, _map_value(buf, value, SCHEDULED_ENQUEUE_TIME))
        elif code == DELIVERY_ANNOTATIONS:
            continue
        elif bare_start is None:
            bare_start = start
    bare = buf[bare_start:] if bare_start is not None else b""
    return StoredMessage(
        bytes(bare),
        annotations=bytes(annotations),
        annotation_count=count,
        durable=durable,
        priority=priority,
        ttl_ms=ttl_ms,
        session_id=session_id,
        scheduled_ms=scheduled_ms,
    )


def _list_string(buf: bytes, pos: int, index: int) -> str | None:
    """Field ``index`` of the list at ``pos`` when it is a string, else None."""
    n, pos = _compound(buf, pos)
    if index >= n:
        return None
    for _ in range(index):
        pos = _skip(buf, pos)
    return _string(buf, pos)


def _map_value(buf: bytes, pos: int, key: bytes) -> int | None:
    """The offset of the value of symbol ``key`` in the map at ``pos``, or None."""
    n, pos = _compound(buf, pos)
    for _ in range(n // 2):
        value = _skip(buf, pos)
        if _symbol(buf, pos) == key:
            return value
        pos = _skip(buf, value)
    return None


def _timestamp(buf: bytes, pos: int | None) -> int | None:
    if pos is None or buf[pos] != 0x83:
        return None
    return int(struct.unpack_from(">q", buf, pos + 1)[0])


@_decoding
def split_batch(buf: bytes) -> list[bytes] | None:
    """Return the inner messages of an SDK batch, or None when ``buf`` is a plain message.

    The SDK sends a batch with message format 0x80013700 and one data section per inner
    message, each a complete encoded message. python-qpid-proton does not expose the transfer's
    message format, so a message counts as a batch when its body is data sections only and
    every one of them parses as an AMQP message with a body.
    """
    buf = bytes(buf)
    sections = _sections(buf)
    inner: list[bytes] = []
    for code, _start, value, _end in sections:
        if code in (AMQP_VALUE, AMQP_SEQUENCE):
            return None
        if code != DATA:
            continue
        payload = _binary(buf, value)
        if len(payload) < 3 or payload[0] != 0x00 or payload[1] != 0x53:
            return None
        if not 0x70 <= payload[2] <= 0x78:
            return None
        try:
            codes = {code for code, *_ in _sections(payload)}
        except (IndexError, ValueError, RecursionError):  # AmqpDecodeError is a ValueError
            return None
        if not codes & {DATA, AMQP_VALUE, AMQP_SEQUENCE}:
            return None
        inner.append(payload)
    return inner or None


def _enc_symbol(value: bytes) -> bytes:
    if len(value) < 256:
        return b"\xa3" + bytes((len(value),)) + value
    return b"\xb3" + struct.pack(">I", len(value)) + value


def _enc_str(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) < 256:
        return b"\xa1" + bytes((len(raw),)) + raw
    return b"\xb1" + struct.pack(">I", len(raw)) + raw


def _enc_value(value: Any) -> bytes:
    """A property value: null, boolean, long, double or string (anything else as its text)."""
    if value is None:
        return b"\x40"
    if isinstance(value, bool):
        return b"\x41" if value else b"\x42"
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return b"\x81" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"\x82" + struct.pack(">d", value)
    return _enc_str(str(value))


_SEQ_KEY = _enc_symbol(SEQUENCE_NUMBER)
_ENQ_KEY = _enc_symbol(ENQUEUED_TIME)
_LOCK_KEY = _enc_symbol(LOCKED_UNTIL)
_NULL = b"\x40"
_TRUE = b"\x41"
_FALSE = b"\x42"


def encode_delivery(
    message: StoredMessage,
    *,
    sequence_number: int,
    enqueued_ms: int,
    delivery_count: int,
    locked_until_ms: int | None = None,
    first_acquirer: bool = False,
) -> bytes:
    """Encode ``message`` as delivered: a fresh header and annotations, then the bare message."""
    header = (
        (_TRUE if message.durable else _FALSE)
        + (_NULL if message.priority is None else b"\x50" + bytes((message.priority & 0xFF,)))
        + (_NULL if message.ttl_ms is None else b"\x70" + struct.pack(">I", message.ttl_ms))
        + (_TRUE if first_acquirer else _FALSE)
        + b"\x70"
        + struct.pack(">I", delivery_count)
    )
    entries = (
        _SEQ_KEY
        + b"\x81"
        + struct.pack(">q", sequence_number)
        + _ENQ_KEY
        + b"\x83"
        + struct.pack(">q", enqueued_ms)
    )
    count = message.annotation_count + 2
    if locked_until_ms is not None:
        entries += _LOCK_KEY + b"\x83" + struct.pack(">q", locked_until_ms)
        count += 1
    entries += message.annotations
    return b"".join(
        (
            b"\x00\x53\x70\xc0",
            bytes((len(header) + 1, 5)),
            header,
            b"\x00\x53\x72\xd1",
            struct.pack(">II", len(entries) + 4, count * 2),
            entries,
            message.bare,
        )
    )


def _string(buf: bytes, pos: int) -> str | None:
    code = buf[pos]
    if code == 0xA1:
        return buf[pos + 2 : pos + 2 + buf[pos + 1]].decode("utf-8", "replace")
    if code == 0xB1:
        size = int.from_bytes(buf[pos + 1 : pos + 5], "big")
        return buf[pos + 5 : pos + 5 + size].decode("utf-8", "replace")
    return None


@_decoding
def set_application_properties(
    bare: bytes, values: dict[str, Any], remove: frozenset[str] | set[str] = frozenset()
) -> bytes:
    """Return ``bare`` with application properties set (str, bool, int, float or None) and
    removed; names match without regard to case, as rule filters and actions read them."""
    replaced = {k.lower() for k in values} | {k.lower() for k in remove}
    entries = bytearray()
    count = 0
    insert_at = 0
    head = b""
    tail = bare
    for code, start, value, end in _sections(bare):
        if code == PROPERTIES:
            insert_at = end
        elif code == APPLICATION_PROPERTIES:
            kept, count = _filter_map(
                bare, value, lambda key: (_string(bare, key) or "").lower() not in replaced
            )
            entries += kept
            head, tail = bare[:start], bare[end:]
            break
    else:
        head, tail = bare[:insert_at], bare[insert_at:]
    for key, item in values.items():
        entries += _enc_str(key) + _enc_value(item)
        count += 1
    section = b"\x00\x53\x74\xd1" + struct.pack(">II", len(entries) + 4, count * 2) + entries
    return bytes(head) + section + bytes(tail)


def with_dead_letter_properties(
    message: StoredMessage, source: str, reason: str | None, description: str | None
) -> StoredMessage:
    """The copy of ``message`` a dead-letter queue holds: reason and description as
    application properties (as Service Bus does) and the source entity as an annotation."""
    values = {}
    if reason is not None:
        values["DeadLetterReason"] = reason
    if description is not None:
        values["DeadLetterErrorDescription"] = description
    bare = set_application_properties(message.bare, values) if values else message.bare
    return message.with_bare(bare, {DEADLETTER_SOURCE: source})
