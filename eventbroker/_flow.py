"""The event flow of one broker over the last minutes: rates, delivery lag, refusals, gaps.

Bounded and cheap. Per delivered event the broker adds one delivery lag to a fixed histogram
(`FlowRecorder.lag`: a binary search over `LAG_BOUNDS` and an increment, on the broker loop).
A few times a second its maintenance task calls `FlowRecorder.tick`, which closes a window of
`WINDOW` seconds (aligned to the clock, so the windows of two instances line up) when one
ended: the counters' increases and the lag histogram of that window are kept for the last
`WINDOWS` windows. Readers (any thread) get immutable snapshots.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping

import attrs

WINDOW = 10.0
"""Seconds per window."""
WINDOWS = 36
"""Windows kept (six minutes)."""
_RATIO = 1.25
LAG_BOUNDS: tuple[float, ...] = tuple(0.0001 * _RATIO**k for k in range(64))
"""Upper bounds (seconds) of the lag histogram's buckets: 0.1 ms to about 160 s, each 25% wider
than the one before (a percentile read from them is within about 12% of the true value); a
last bucket takes anything slower."""
_LAST = len(LAG_BOUNDS)


def lag_percentile(buckets: Mapping[int, int], q: float) -> float | None:
    """The `q` quantile (0..1) of a lag histogram `{bucket index: count}`; None when empty.

    Interpolated linearly inside the bucket it falls in (the last, open bucket reports its lower
    bound)."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(buckets):
        count = buckets[index]
        if count <= 0:
            continue
        if seen + count >= rank:
            low = 0.0 if index == 0 else LAG_BOUNDS[index - 1]
            if index >= _LAST:
                return LAG_BOUNDS[-1]
            high = LAG_BOUNDS[index]
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return LAG_BOUNDS[-1]


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """The sum of lag histograms."""
    total: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            total[index] = total.get(index, 0) + count
    return total


@attrs.frozen
class FlowWindow:
    """What one broker did in one window of `WINDOW` seconds (a closed window, or the open one)."""

    start: float
    """Seconds since the epoch (the broker's clock)."""
    end: float
    events_in: int
    """Remote events dispatched to handlers."""
    events_out: int
    """Events this instance published."""
    refused: Mapping[str, int]
    """Incoming messages refused, by cause."""
    gaps: int
    """Sequence gaps reported (each fired `event_missed`)."""
    reconnects: int
    """Reconnects and recreated subscriptions (each fired `event_missed`)."""
    lag: Mapping[int, int]
    """Delivery lag histogram: bucket index (into `LAG_BOUNDS`) to count."""

    @property
    def lag_p50(self) -> float | None:
        return lag_percentile(self.lag, 0.5)

    @property
    def lag_p99(self) -> float | None:
        return lag_percentile(self.lag, 0.99)


@attrs.frozen
class Flow:
    """The flow of the last minutes (`EventBroker.flow`): closed windows oldest first, then the
    open one."""

    windows: tuple[FlowWindow, ...]

    def last(self, seconds: float = 60.0) -> FlowWindow:
        """The windows that end within the last `seconds` (the open one included), merged."""
        if not self.windows:
            return FlowWindow(0.0, 0.0, 0, 0, {}, 0, 0, {})
        end = self.windows[-1].end
        chosen = [w for w in self.windows if w.end > end - seconds - 1e-9]
        refused: dict[str, int] = {}
        for window in chosen:
            for cause, count in window.refused.items():
                refused[cause] = refused.get(cause, 0) + count
        return FlowWindow(
            chosen[0].start,
            end,
            sum(w.events_in for w in chosen),
            sum(w.events_out for w in chosen),
            refused,
            sum(w.gaps for w in chosen),
            sum(w.reconnects for w in chosen),
            merge(w.lag for w in chosen),
        )


_COUNTERS = ("dispatched", "published", "gaps", "reconnects")


class FlowRecorder:
    """The windows of one broker (see the module docstring); `lag` and `tick` on the broker
    loop, `snapshot` from any thread."""

    __slots__ = ("_base", "_closed", "_index", "_lag", "_refused_base", "window")

    def __init__(self, window: float = WINDOW, windows: int = WINDOWS) -> None:
        self.window = window
        self._closed: deque[FlowWindow] = deque(maxlen=windows)
        self._lag = [0] * (_LAST + 1)
        self._index: int | None = None  # the open window: start // window
        self._base: tuple[int, ...] = (0,) * len(_COUNTERS)
        self._refused_base: dict[str, int] = {}

    def lag(self, seconds: float) -> None:
        """Count one delivery that took `seconds` (negative: the clocks differ; counted as 0)."""
        self._lag[bisect.bisect_left(LAG_BOUNDS, seconds)] += 1

    def tick(self, now: float, counts: Mapping[str, int], refused: Mapping[str, int]) -> None:
        """Close the open window if it ended by `now` (`counts`: the broker's counters)."""
        index = math.floor(now / self.window)
        if self._index is None:
            self._index = index
            self._base = tuple(counts.get(name, 0) for name in _COUNTERS)
            self._refused_base = dict(refused)
            return
        if index == self._index:
            return
        self._closed.append(self._open(counts, refused, self._index))
        self._index = index
        self._base = tuple(counts.get(name, 0) for name in _COUNTERS)
        self._refused_base = dict(refused)
        self._lag = [0] * (_LAST + 1)

    def snapshot(self, now: float, counts: Mapping[str, int], refused: Mapping[str, int]) -> Flow:
        """The closed windows and the open one (counted up to now)."""
        closed = tuple(self._closed)
        index = self._index if self._index is not None else math.floor(now / self.window)
        return Flow((*closed, self._open(counts, refused, index, now)))

    def _open(
        self,
        counts: Mapping[str, int],
        refused: Mapping[str, int],
        index: int,
        now: float | None = None,
    ) -> FlowWindow:
        start = index * self.window
        current = [counts.get(name, 0) for name in _COUNTERS]
        delta = [max(0, c - b) for c, b in zip(current, self._base, strict=True)]
        base = self._refused_base
        causes = {
            cause: count - base.get(cause, 0)
            for cause, count in list(refused.items())
            if count > base.get(cause, 0)
        }
        lag = self._lag[:]  # one step: the broker loop may count meanwhile
        end = start + self.window if now is None else min(max(now, start), start + self.window)
        return FlowWindow(
            start,
            end,
            delta[0],
            delta[1],
            causes,
            delta[2],
            delta[3],
            {i: c for i, c in enumerate(lag) if c},
        )
