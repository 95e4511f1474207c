"""Receiver-side state: recent message ids, and what each source sent, received and lost.

Pure state: every method takes `now` (seconds, the broker's clock) and nothing here reads a
clock, sleeps or logs. Tested against a model with hypothesis.
"""

from __future__ import annotations

import enum
from collections import deque

import attrs


class DedupWindow:
    """The most recent `capacity` message ids; `seen(id)` records it and says if it was known.

    This is the cheap first check for redeliveries (at-least-once transports, hub duplicates);
    `SequenceTracker` remembers what each source sent for the whole replay window. Constant
    time per id however many have passed (a set plus a ring of the ids in arrival order).
    """

    __slots__ = ("_capacity", "_ids", "_order")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def seen(self, message_id: str) -> bool:
        ids = self._ids
        if message_id in ids:
            return True
        ids.add(message_id)
        order = self._order
        order.append(message_id)
        if len(order) > self._capacity:
            ids.discard(order.popleft())
        return False

    def __len__(self) -> int:
        return len(self._ids)


@attrs.frozen
class Gap:
    """Sequence numbers `first..last` (inclusive) from `source` that never arrived in time."""

    source: str
    first: int
    last: int


class Verdict(enum.Enum):
    """What `SequenceTracker.observe` says of one sequence number."""

    NEW = "new"
    """Not received before: dispatch it."""
    SEEN = "seen"
    """Received before (or given up on and reported): a replay, never dispatch it again."""


class _Hole:
    """Numbers `first..last` that have not arrived; `deadline` is None once reported."""

    __slots__ = ("deadline", "first", "last")

    def __init__(self, first: int, last: int, deadline: float | None) -> None:
        self.first = first
        self.last = last
        self.deadline = deadline

    def gap(self, source: str) -> Gap:
        return Gap(source, self.first, self.last)


class _Source:
    """One source's numbers: `low..high` is the known range; `holes` lists the numbers in it
    that never arrived, in order."""

    __slots__ = ("high", "holes", "last_seen", "low", "origin_known")

    def __init__(self, low: int, high: int, origin_known: bool, now: float) -> None:
        self.low = low
        self.high = high
        self.origin_known = origin_known
        """Whether the source's stream is known to start at `low` (nothing before it exists)."""
        self.holes: list[_Hole] = []
        self.last_seen = now


class SequenceTracker:
    """Tracks each source's sequence numbers: duplicates, replays and losses.

    * `observe(source, n, now)` says whether number `n` is new or was received before.
      Numbers between known ones that have not arrived are *holes*; a hole not filled within
      `timeout` is reported once by `expired(now)`. A late arrival fills its hole (and is new).
    * The first number seen from a source may not be its first: what came before is unknown,
      unless the source is known to have started after this receiver subscribed
      (`started_after_subscription`) or its hello was received (`hello`). Then every number
      from 1 (or after the hello's) is expected, and a lost first message is a hole.
    * `heartbeat(source, last, now)` says the source has sent up to `last`: numbers beyond what
      arrived become holes, so a lost *last* message shows without waiting for the next one.
    * Memory is bounded: at most `max_holes` holes per source (the oldest beyond that is
      reported at once and then counts as received) and `max_sources` sources; a source not
      heard from for `retention` seconds is forgotten (its envelopes are then outside the
      replay window anyway).
    """

    def __init__(
        self,
        timeout: float,
        *,
        retention: float = 360.0,
        max_sources: int = 10_000,
        max_holes: int = 1_000,
    ) -> None:
        self.timeout = timeout
        self.retention = retention
        self._max_sources = max_sources
        self._max_holes = max_holes
        self._sources: dict[str, _Source] = {}
        self._overflow: list[Gap] = []  # holes dropped to bound memory, reported next expiry
        self.evicted_early = 0
        """Sources forgotten before `retention` because `max_sources` was reached."""

    # -- observations -----------------------------------------------------------------------

    def observe(
        self, source: str, sequence: int, now: float, *, started_after_subscription: bool = False
    ) -> Verdict:
        """Record that `sequence` arrived from `source`; NEW, or SEEN for a replay."""
        state = self._sources.get(source)
        if state is None:
            if started_after_subscription:
                state = self._add(source, _Source(1, 0, True, now))
            else:
                self._add(source, _Source(sequence, sequence, False, now))
                return Verdict.NEW
        else:
            state.last_seen = now
            if started_after_subscription and not state.origin_known:
                self._know_origin(source, state, 1, now)
        if sequence > state.high:
            if sequence > state.high + 1:  # (the next number opens no hole: no call)
                self._open(source, state, state.high + 1, sequence - 1, now)
            state.high = sequence
            return Verdict.NEW
        if sequence < state.low:
            if state.origin_known:
                return Verdict.SEEN  # before the stream's start: cannot be new
            self._open(source, state, sequence + 1, state.low - 1, now)
            state.low = sequence
            return Verdict.NEW
        return Verdict.NEW if self._fill(state, sequence) else Verdict.SEEN

    def heartbeat(
        self,
        source: str,
        last_sequence: int,
        now: float,
        *,
        hello: bool = False,
        started_after_subscription: bool = False,
    ) -> None:
        """`source` says it has sent every number up to `last_sequence`.

        With `hello` (the first message of its stream) or `started_after_subscription`, every
        number after its start is expected here.
        """
        origin = last_sequence + 1 if hello else 1 if started_after_subscription else None
        state = self._sources.get(source)
        if state is None:
            start = last_sequence + 1 if origin is None else origin
            state = self._add(source, _Source(start, start - 1, origin is not None, now))
        else:
            state.last_seen = now
            if origin is not None and not state.origin_known:
                self._know_origin(source, state, origin, now)
        if last_sequence > state.high:
            self._open(source, state, state.high + 1, last_sequence, now)
            state.high = last_sequence

    def forget(self, source: str) -> list[Gap]:
        """Drop `source` at once (it said goodbye long ago); returns its unreported holes."""
        state = self._sources.pop(source, None)
        return [] if state is None else _unreported(source, state)

    # -- reporting --------------------------------------------------------------------------

    def expired(self, now: float) -> list[Gap]:
        """Holes whose deadline is at or before `now`, each reported once (oldest first).

        Also forgets sources not heard from for `retention` seconds.
        """
        gaps, self._overflow = self._overflow, []
        idle: list[str] = []
        for source, state in self._sources.items():
            if now - state.last_seen > self.retention:
                idle.append(source)
                continue
            for hole in state.holes:
                if hole.deadline is not None and hole.deadline <= now:
                    gaps.append(hole.gap(source))
                    hole.deadline = None
        for source in idle:
            gaps += self.forget(source)
        return gaps

    def open_gaps(self) -> list[Gap]:
        """The holes still waiting to be filled (not yet reported)."""
        return [
            gap for source, state in self._sources.items() for gap in _unreported(source, state)
        ]

    def next_deadline(self) -> float | None:
        """The earliest deadline of an unreported hole (None when there is none)."""
        deadlines = [
            hole.deadline
            for state in self._sources.values()
            for hole in state.holes
            if hole.deadline is not None
        ]
        return min(deadlines, default=None)

    def last_sequence(self, source: str) -> int | None:
        """The highest number known to be sent by `source` (None when unknown)."""
        state = self._sources.get(source)
        return None if state is None or state.high < state.low else state.high

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, source: object) -> bool:
        return source in self._sources

    # -- internals --------------------------------------------------------------------------

    def _add(self, source: str, state: _Source) -> _Source:
        sources = self._sources
        sources[source] = state
        if len(sources) > self._max_sources:  # rare: scan for the least recently heard
            oldest = min(sources, key=lambda s: sources[s].last_seen)
            self.evicted_early += 1
            self._overflow += _unreported(oldest, sources.pop(oldest))
        return state

    def _know_origin(self, source: str, state: _Source, origin: int, now: float) -> None:
        state.origin_known = True
        if origin < state.low:
            self._open(source, state, origin, state.low - 1, now)
            state.low = origin

    def _open(self, source: str, state: _Source, first: int, last: int, now: float) -> None:
        if first > last:
            return
        holes = state.holes
        holes.append(_Hole(first, last, now + self.timeout))
        if len(holes) > 1 and first < holes[-2].first:
            holes.sort(key=_first)
        if len(holes) > self._max_holes:
            oldest = holes.pop(0)
            if oldest.deadline is not None:
                self._overflow.append(oldest.gap(source))

    @staticmethod
    def _fill(state: _Source, sequence: int) -> bool:
        """Take `sequence` out of its hole; False when it is in none (received before)."""
        holes = state.holes
        for index, hole in enumerate(holes):
            if hole.first <= sequence <= hole.last:
                pieces = []
                if hole.first < sequence:
                    pieces.append(_Hole(hole.first, sequence - 1, hole.deadline))
                if sequence < hole.last:
                    pieces.append(_Hole(sequence + 1, hole.last, hole.deadline))
                holes[index : index + 1] = pieces
                return True
            if sequence < hole.first:
                break  # holes are in order
        return False


def _first(hole: _Hole) -> int:
    return hole.first


def _unreported(source: str, state: _Source) -> list[Gap]:
    return [hole.gap(source) for hole in state.holes if hole.deadline is not None]
