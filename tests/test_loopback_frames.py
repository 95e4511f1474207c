"""Renumbering the SDK's repeated delivery ids before proton sees them, checked with frames
the SDK's own AMQP encoder writes and its decoder reads back."""

from __future__ import annotations

from azure.servicebus._pyamqp._decode import decode_frame
from azure.servicebus._pyamqp._encode import encode_frame
from azure.servicebus._pyamqp.performatives import BeginFrame, TransferFrame
from hypothesis import given
from hypothesis import strategies as st
from proton import ProtonException

from eventbroker.testing._servicebus_frames import DeliveryIdRepair, RepairingTransport

HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"


def _frame(performative: object, channel: int = 1) -> bytes:
    _header, body = encode_frame(performative)  # type: ignore[arg-type]
    assert body is not None
    return (len(body) + 8).to_bytes(4, "big") + b"\x02\x00" + channel.to_bytes(2, "big") + body


def _begin(next_id: int, channel: int = 1) -> bytes:
    return _frame(
        BeginFrame(
            remote_channel=None,
            next_outgoing_id=next_id,
            incoming_window=65536,
            outgoing_window=65536,
            handle_max=None,
            offered_capabilities=None,
            desired_capabilities=None,
            properties=None,
        ),
        channel,
    )


def _transfer(delivery_id: int | None, payload: bytes, *, more: bool = False) -> bytes:
    return _frame(
        TransferFrame(
            handle=0,
            delivery_id=delivery_id,
            delivery_tag=b"\x00\x00\x00\x01",
            message_format=0,
            settled=False,
            more=more,
            payload=payload,
        )
    )


def _frames(stream: bytes) -> list[tuple[int, list[object]]]:
    """Decode the AMQP frames of ``stream`` (protocol headers skipped)."""
    out = []
    pos = 0
    while pos < len(stream):
        if stream[pos : pos + 4] == b"AMQP":
            pos += 8
            continue
        size = int.from_bytes(stream[pos : pos + 4], "big")
        out.append(decode_frame(memoryview(stream[pos + 8 : pos + size])))
        pos += size
    return out


def _feed(repair: DeliveryIdRepair, stream: bytes, cuts: list[int]) -> bytes:
    out = bytearray()
    start = 0
    for cut in [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]:
        out += repair.feed(stream[start:cut])
        start = cut
    return bytes(out)


@st.composite
def _client_streams(draw: st.DrawFn) -> tuple[bytes, int, list[bytes]]:
    """A session's begin, then transfers (some split over frames) whose ids sometimes repeat
    an earlier one, as the SDK's threads do; returns (stream, first id, payloads)."""
    first = draw(st.integers(0, 2**32 - 1))
    stream = bytearray(HEADER + _begin(first))
    given_ids: list[int] = []
    payloads = []
    next_id = first
    for _ in range(draw(st.integers(1, 12))):
        repeat = given_ids and draw(st.booleans())
        delivery_id = draw(st.sampled_from(given_ids)) if repeat else next_id
        if not repeat:
            next_id = (next_id + 1) & 0xFFFFFFFF
        given_ids.append(delivery_id)
        parts = draw(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=3))
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            stream += _transfer(delivery_id, part, more=not last)
        payloads.append(b"".join(parts))
    return bytes(stream), first, payloads


@given(_client_streams(), st.lists(st.integers(0, 2000), max_size=8))
def test_every_delivery_gets_the_next_id_whatever_the_client_sent(
    client: tuple[bytes, int, list[bytes]], cuts: list[int]
) -> None:
    stream, first, payloads = client
    out = _feed(DeliveryIdRepair(), stream, cuts)
    frames = _frames(out)
    assert frames[0][0] == 17  # the begin, unchanged
    transfers = [fields for code, fields in frames[1:]]
    ids: list[int] = []
    received: list[bytes] = []
    previous_more = False
    for fields in transfers:
        if not received or not previous_more:
            ids.append(fields[1])  # type: ignore[arg-type]
            received.append(b"")
        else:
            assert fields[1] == ids[-1]  # a continuation keeps its delivery's id
        received[-1] += bytes(fields[-1])  # type: ignore[arg-type]
        previous_more = bool(fields[5])
    assert ids == [(first + i) & 0xFFFFFFFF for i in range(len(payloads))]
    assert received == payloads


def test_a_well_behaved_client_passes_through_byte_for_byte() -> None:
    stream = (
        SASL_HEADER
        + HEADER
        + _begin(5)
        + _transfer(5, b"one")
        + _transfer(6, b"tw", more=True)
        + _transfer(6, b"o")
        + b"\x00\x00\x00\x08\x02\x00\x00\x00"  # an empty (heartbeat) frame
    )
    repair = DeliveryIdRepair()
    assert repair.feed(stream) == stream
    assert repair.repaired == 0


def test_a_repeated_id_is_renumbered() -> None:
    repair = DeliveryIdRepair()
    out = repair.feed(HEADER + _begin(1) + _transfer(1, b"renew a") + _transfer(1, b"renew b"))
    assert [fields[1] for code, fields in _frames(out) if code == 20] == [1, 2]
    assert repair.repaired == 1


def test_what_is_not_amqp_goes_to_proton_untouched() -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40  # a TLS hello
    repair = DeliveryIdRepair()
    assert repair.feed(hello[:3]) == b""  # not enough to tell yet
    assert repair.feed(hello[3:]) == hello


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
def test_garbage_never_raises(raw: bytes, cuts: list[int]) -> None:
    for stream in (raw, HEADER + raw, HEADER + _begin(0) + raw):
        _feed(DeliveryIdRepair(), stream, cuts)  # what it cannot read it passes on


class _SmallTransport:
    """A stand-in for proton's transport: takes at most 16 bytes a push, then closes."""

    def __init__(self) -> None:
        self.taken = b""
        self._selectable = "kept"

    def capacity(self) -> int:
        if len(self.taken) >= 16:
            raise ProtonException("closed")
        return 16

    def push(self, data: bytes) -> None:
        assert len(data) <= 16
        self.taken += data


def test_the_stand_in_transport_feeds_proton_within_its_capacity() -> None:
    inner = _SmallTransport()
    transport = RepairingTransport(inner)
    transport.push(HEADER + _begin(0))  # more than one push's worth: pushed in pieces
    assert inner.taken == (HEADER + _begin(0))[:16]  # then closed: the rest is moot, no error
    assert transport._selectable == "kept"  # everything else is the transport's own
    transport._selectable = None
    assert inner._selectable is None
