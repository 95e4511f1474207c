"""Receiver-side state: duplicate detection by message id and per-source sequence gaps."""

from __future__ import annotations

from collections import OrderedDict

import attrs


class DedupWindow:
    """The most recent `capacity` message ids; `seen(id)` records it and says if it was known."""

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: dict[str, None] = {}

    def seen(self, message_id: str) -> bool:
        ids = self._ids
        if message_id in ids:
            return True
        ids[message_id] = None
        if len(ids) > self._capacity:
            del ids[next(iter(ids))]  # dicts keep insertion order: the oldest goes
        return False

    def __len__(self) -> int:
        return len(self._ids)


@attrs.frozen
class Gap:
    """Sequence numbers `first..last` (inclusive) from `source` that never arrived in time."""

    source: str
    first: int
    last: int


class _Source:
    __slots__ = ("high", "low", "missing")

    def __init__(self, sequence: int) -> None:
        self.low = sequence
        self.high = sequence
        # Open gaps as [first, last, deadline]; few at a time, so a list is enough.
        self.missing: list[list[float]] = []


class SequenceTracker:
    """Tracks each source's sequence numbers and reports gaps not filled within `timeout`.

    A source's known range grows from the first number seen in both directions; numbers
    between known ones that have not arrived are open gaps. A late arrival fills (or splits) its
    gap; `expired(now)` removes and returns the gaps whose deadline has passed, each once.
    Messages lost after a source's last message cannot be seen until it sends again.
    """

    def __init__(self, timeout: float, *, max_sources: int = 10_000) -> None:
        self.timeout = timeout
        self._max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def observe(self, source: str, sequence: int, now: float) -> None:
        state = self._sources.get(source)
        if state is None:
            self._sources[source] = _Source(sequence)
            if len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
            return
        self._sources.move_to_end(source)
        deadline = now + self.timeout
        if sequence > state.high:
            if sequence > state.high + 1:
                state.missing.append([state.high + 1, sequence - 1, deadline])
            state.high = sequence
        elif sequence < state.low:
            if sequence < state.low - 1:
                state.missing.append([sequence + 1, state.low - 1, deadline])
            state.low = sequence
        else:
            self._fill(state, sequence)

    @staticmethod
    def _fill(state: _Source, sequence: int) -> None:
        for index, gap in enumerate(state.missing):
            first, last, deadline = gap
            if first <= sequence <= last:
                pieces = []
                if first < sequence:
                    pieces.append([first, sequence - 1, deadline])
                if sequence < last:
                    pieces.append([sequence + 1, last, deadline])
                state.missing[index : index + 1] = pieces
                return

    def expired(self, now: float) -> list[Gap]:
        """Remove and return every gap whose deadline is at or before `now`."""
        gaps: list[Gap] = []
        for source, state in self._sources.items():
            if not state.missing:
                continue
            keep = []
            for gap in state.missing:
                if gap[2] <= now:
                    gaps.append(Gap(source, int(gap[0]), int(gap[1])))
                else:
                    keep.append(gap)
            state.missing = keep
        return gaps

    def open_gaps(self) -> list[Gap]:
        """The gaps still waiting to be filled (for diagnostics)."""
        return [
            Gap(source, int(gap[0]), int(gap[1]))
            for source, state in self._sources.items()
            for gap in state.missing
        ]
