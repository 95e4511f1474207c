"""Tolerating repeated delivery ids from the azure-servicebus SDK (python-qpid-proton does not).

The SDK's ``AutoLockRenewer`` renews locks from worker threads while the application settles
on its own thread; both send ``$management`` requests on the same AMQP session, and the SDK's
pure-Python AMQP stack can give two transfers the same delivery id. Service Bus answers both.
python-qpid-proton checks the sequence and closes the connection (``amqp:session:invalid-field``,
"sequencing error").

`DeliveryIdRepair` sits on the byte stream from a client to proton: it numbers every new
delivery of a session consecutively from the session's ``begin``, whatever id the client gave
it, so proton sees a valid sequence. A well-behaved client's bytes pass through unchanged. The
broker's settlements of a renumbered delivery carry the new number; the SDK's management and
CBS requests complete on their response messages, so that goes unnoticed.

The input is hostile: anything that does not parse is passed through as it came (proton then
reports it), never an exception.
"""

from __future__ import annotations

import struct
from typing import Any

from proton import ProtonException

from ._servicebus_codec import _compound, _skip, _uint

__all__ = ["DeliveryIdRepair", "RepairingTransport"]

_HEADER = b"AMQP"
_AMQP_FRAME = 0x00
_BEGIN = 0x11
_TRANSFER = 0x14
_END = 0x17
_MASK = 0xFFFFFFFF  # delivery ids are RFC 1982 serial numbers
_MAX_FRAME = 1 << 24  # far above any max-frame-size in use: larger is not AMQP


class _Session:
    __slots__ = ("next_id", "open_deliveries")

    def __init__(self, next_id: int | None) -> None:
        self.next_id = next_id  # the id proton expects next
        self.open_deliveries: dict[int, int] = {}  # link handle -> id of a multi-frame delivery


class DeliveryIdRepair:
    """Renumbers a client's transfers per session; `feed` bytes in, get bytes for proton."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._sessions: dict[int, _Session] = {}  # by the client's channel
        self._passthrough = False
        self._started = False  # the first protocol header has come
        self.repaired = 0  # deliveries given another id than the client's (for tests and logs)

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the socket; return the bytes to give proton (complete frames only;
        the rest waits for the next call)."""
        if self._passthrough:
            return data
        buf = self._pending
        buf += data
        out = bytearray()
        pos = 0
        try:
            if not self._started:  # anything but AMQP (a TLS hello, HTTP): proton answers it
                if len(buf) < 4:
                    return b""
                if buf[:4] != _HEADER:
                    raise ValueError("not AMQP")
                self._started = True
            while True:
                if len(buf) - pos >= 4 and buf[pos : pos + 4] == _HEADER:
                    if len(buf) - pos < 8:
                        break
                    out += buf[pos : pos + 8]
                    pos += 8
                    continue
                if len(buf) - pos < 8:
                    break
                size = int.from_bytes(buf[pos : pos + 4], "big")
                if not 8 <= size <= _MAX_FRAME:
                    raise ValueError(f"frame size {size}")
                if len(buf) - pos < size:
                    break
                out += self._frame(bytes(buf[pos : pos + size]))
                pos += size
        except Exception:  # not AMQP as expected: let proton see it as it is
            self._passthrough = True
            out += buf[pos:]
            pos = len(buf)
        del buf[:pos]
        return bytes(out)

    def _frame(self, frame: bytes) -> bytes:
        offset = frame[4] * 4
        if frame[5] != _AMQP_FRAME or len(frame) <= offset or offset < 8:
            return frame  # SASL, or an empty (heartbeat) frame
        channel = int.from_bytes(frame[6:8], "big")
        body = frame[offset:]
        if body[0] != 0x00:
            return frame
        if body[1] == 0x53:
            code, fields_at = body[2], 3
        elif body[1] == 0x80:
            code, fields_at = int.from_bytes(body[2:10], "big"), 10
        else:
            return frame
        if code == _BEGIN:
            fields = _fields(body, fields_at)
            self._sessions[channel] = _Session(_uint(body, fields[1]) if len(fields) > 1 else None)
        elif code == _END:
            self._sessions.pop(channel, None)
        elif code == _TRANSFER:
            new_body = self._transfer(channel, body, fields_at)
            if new_body is not None:
                size = offset + len(new_body)
                return struct.pack(">I", size) + frame[4:offset] + new_body
        return frame

    def _transfer(self, channel: int, body: bytes, fields_at: int) -> bytes | None:
        """The transfer performative renumbered (payload included), or None if unchanged."""
        session = self._sessions.get(channel)
        if session is None:
            return None
        fields = _fields(body, fields_at)
        handle = _uint(body, fields[0]) if fields else None
        given = _uint(body, fields[1]) if len(fields) > 1 else None
        more = len(fields) > 5 and _bool(body, fields[5])
        if handle is None:
            return None
        ongoing = session.open_deliveries.get(handle)
        wanted: int | None
        if ongoing is not None:  # a further frame of a multi-frame delivery
            wanted = ongoing
        else:
            wanted = given if session.next_id is None else session.next_id
            if wanted is None:
                return None
            session.next_id = (wanted + 1) & _MASK
        if more:
            session.open_deliveries[handle] = wanted
        else:
            session.open_deliveries.pop(handle, None)
        if given is None or given == wanted:
            return None
        if ongoing is None:
            self.repaired += 1
        return _replace_field(body, fields_at, fields, 1, b"\x70" + struct.pack(">I", wanted))


def _fields(body: bytes, at: int) -> list[int]:
    """Offsets of the fields of the list at ``at``."""
    count, pos = _compound(body, at)
    offsets = []
    for _ in range(count):
        offsets.append(pos)
        pos = _skip(body, pos)
    return offsets


def _bool(buf: bytes, pos: int) -> bool:
    return buf[pos] == 0x41 or (buf[pos] == 0x56 and buf[pos + 1] == 0x01)


def _replace_field(body: bytes, at: int, fields: list[int], index: int, encoded: bytes) -> bytes:
    """``body`` with field ``index`` of the list at ``at`` replaced by ``encoded`` (what
    follows the list, a transfer's payload, is kept)."""
    end = _skip(body, at)
    parts = []
    for i, start in enumerate(fields):
        stop = fields[i + 1] if i + 1 < len(fields) else end
        parts.append(encoded if i == index else body[start:stop])
    items = b"".join(parts)
    return (
        body[:at] + b"\xd0" + struct.pack(">II", len(items) + 4, len(fields)) + items + body[end:]
    )


class RepairingTransport:
    """Stands in for a proton ``Transport`` where the reactor reads a socket into it
    (``selectable._transport``): pushes go through `DeliveryIdRepair`, all else is the
    transport's own."""

    __slots__ = ("_repair", "_transport")

    def __init__(self, transport: Any) -> None:
        object.__setattr__(self, "_transport", transport)
        object.__setattr__(self, "_repair", DeliveryIdRepair())

    def push(self, data: bytes) -> None:
        out = memoryview(self._repair.feed(data))
        transport = self._transport
        while out:  # proton takes all it is given while open; what a closed one refuses is moot
            try:
                room = transport.capacity()
            except ProtonException:  # closed by what it was just given
                return
            if room <= 0:
                return
            transport.push(bytes(out[:room]))
            out = out[room:]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._transport, name, value)
