"""Invalidation marks: what was expired or removed after the fact, so that no older copy in L2
is served again.

* a key expired (`expire`, or an incoming ENTRY_EXPIRE): L2 copies made before are stale;
* a tag removed or expired (`remove_by_tag`, `expire_by_tag`): L2 copies carrying the tag and
  made before are gone, or stale;
* the whole cache cleared (`clear`): the mark of the reserved tag `CLEAR`, which every entry
  carries implicitly.

Tag and clear marks are also kept in L2 (`marker_key`), so an instance that starts later, or
that missed the backplane message, learns them on its first L2 read; a mark read from L2 is
trusted for `CacheOptions.marker_refresh_interval`, then read again. Marks live in memory for
L2 reads only: the L1 hit path never looks at them (L1 entries are invalidated when a mark
arrives).
"""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict

CLEAR = ""
"""The tag of `clear()`: every entry carries it (user tags are never empty)."""
MARKER_PREFIX = "__hybridcache__:"
"""L2 keys of the marks start with this; do not use it for your own keys."""
NEVER = float("-inf")


class Verdict(enum.Enum):
    """What the marks say of a copy made at some time with some tags."""

    FRESH = "fresh"
    STALE = "stale"
    """Expired by a mark: not fresh, but a fail-safe fallback."""
    GONE = "gone"
    """Removed by a mark: as if absent."""


def marker_key(tag: str) -> str:
    """The L2 key holding the mark of `tag` (`CLEAR`: of `clear()`)."""
    return MARKER_PREFIX + ("clear" if tag == CLEAR else "tag:" + tag)


def encode_mark(expired: float, removed: float) -> bytes:
    return json.dumps({"v": 1, "e": _finite(expired), "r": _finite(removed)}).encode()


def decode_mark(data: bytes | None) -> tuple[float, float] | None:
    """(expired at, removed at) from an L2 marker, `None` when absent or unreadable (a hostile
    or newer marker is ignored, never raised)."""
    if data is None:
        return None
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("v") != 1:
            return None
        expired, removed = raw.get("e"), raw.get("r")
        values = []
        for value in (expired, removed):
            if value is None:
                values.append(NEVER)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
                values.append(number if math.isfinite(number) else NEVER)
            else:
                return None
        return values[0], values[1]
    except (ValueError, TypeError, RecursionError):
        return None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class TagMark:
    __slots__ = ("checked_at", "expired", "removed")

    def __init__(self) -> None:
        self.expired = NEVER
        self.removed = NEVER
        self.checked_at = NEVER
        """When the L2 marker was last read (`NEVER`: not yet)."""


class Marks:
    """The marks one cache knows (thread-safe under the GIL: single dict operations)."""

    __slots__ = ("_keys", "_max_keys", "_tags", "refresh_interval")

    def __init__(self, max_keys: int, refresh_interval: float) -> None:
        self._keys: OrderedDict[str, float] = OrderedDict()
        self._max_keys = max_keys
        self._tags: dict[str, TagMark] = {}
        self.refresh_interval = refresh_interval

    # ---------------------------------------------------------------- keys

    def expire_key(self, key: str, at: float) -> None:
        """`key` was expired at `at`: older L2 copies are stale (the newest marks are kept,
        as many as L1 holds entries)."""
        keys = self._keys
        if keys.get(key, NEVER) < at:
            keys[key] = at
        try:
            keys.move_to_end(key)
            while len(keys) > self._max_keys:
                keys.popitem(last=False)
        except KeyError:  # raced with another thread's trim
            pass

    def key_expired_at(self, key: str) -> float:
        return self._keys.get(key, NEVER)

    # ---------------------------------------------------------------- tags (and clear)

    def tag(self, tag: str) -> TagMark:
        mark = self._tags.get(tag)
        if mark is None:
            mark = self._tags.setdefault(tag, TagMark())
        return mark

    def learn(self, tag: str, expired: float, removed: float) -> bool:
        """Merge a mark; True when it says something new."""
        mark = self.tag(tag)
        changed = False
        if expired > mark.expired:
            mark.expired, changed = expired, True
        if removed > mark.removed:
            mark.removed, changed = removed, True
        return changed

    def due(self, tags: tuple[str, ...], now: float) -> list[str]:
        """The tags (`CLEAR` first) whose L2 marker is to be read now."""
        limit = now - self.refresh_interval
        return [tag for tag in (CLEAR, *tags) if self.tag(tag).checked_at <= limit]

    def verdict(self, key: str, timestamp: float, tags: tuple[str, ...]) -> Verdict:
        """What the marks say of a copy of `key` made at `timestamp` carrying `tags`."""
        stale = timestamp <= self._keys.get(key, NEVER)
        for tag in (CLEAR, *tags):
            mark = self._tags.get(tag)
            if mark is None:
                continue
            if timestamp <= mark.removed:
                return Verdict.GONE
            if timestamp <= mark.expired:
                stale = True
        return Verdict.STALE if stale else Verdict.FRESH
