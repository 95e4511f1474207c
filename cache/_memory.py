"""L1: the bounded in-memory layer (LRU over an `OrderedDict`) and its entries.

The hit path of `HybridCache` reads `MemoryCache.entries` directly: one dict lookup, one clock
comparison against `Entry.refresh_at`, one `move_to_end`. Entries are never mutated; a change
(stale marking, fail-safe throttling) replaces the entry object, so a reader always sees one
consistent entry without a lock.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ._options import EntryOptions

NEVER = float("-inf")


class Entry:
    """One L1 entry. Times are seconds on the cache's clock."""

    __slots__ = (
        "etag",
        "invalidated_at",
        "last_modified",
        "logical_expiration",
        "physical_expiration",
        "refresh_at",
        "stale",
        "tags",
        "timestamp",
        "value",
    )

    def __init__(
        self,
        value: Any,
        timestamp: float,
        logical_expiration: float,
        physical_expiration: float,
        refresh_at: float,
        invalidated_at: float = NEVER,
        stale: bool = False,
        tags: tuple[str, ...] = (),
        etag: str | None = None,
        last_modified: float | None = None,
    ) -> None:
        self.value = value
        self.timestamp = timestamp
        """When the value was made: newer wins across instances."""
        self.logical_expiration = logical_expiration
        """Fresh until then; stale (kept for fail-safe) until `physical_expiration`."""
        self.physical_expiration = physical_expiration
        self.refresh_at = refresh_at
        """A hit before this is served at once; later the slow path looks (eager refresh, stale)."""
        self.invalidated_at = invalidated_at
        """Marked stale by a message of this time: L2 values not newer are stale too."""
        self.stale = stale
        """A stale value served as fresh for a while by fail-safe (`throttled`)."""
        self.tags = tags
        """The entry's tags (`remove_by_tag`, `expire_by_tag`)."""
        self.etag = etag
        """The ETag the factory gave the value (`ctx.modified`), for a conditional refresh."""
        self.last_modified = last_modified

    @classmethod
    def create(
        cls,
        value: Any,
        timestamp: float,
        now: float,
        options: EntryOptions,
        logical_expiration: float | None = None,
        tags: tuple[str, ...] = (),
        etag: str | None = None,
        last_modified: float | None = None,
    ) -> Entry:
        """An entry made at `timestamp` under `options` (jitter applied unless `logical_expiration`)."""
        if logical_expiration is None:
            logical_expiration = now + options.duration
            if options.jitter_max_duration > 0:
                logical_expiration += random.uniform(0.0, options.jitter_max_duration)
        physical = logical_expiration
        if options.is_fail_safe_enabled:
            physical = max(physical, now + options.fail_safe_max_duration)
        refresh_at = logical_expiration
        if options.eager_refresh_threshold is not None:
            refresh_at = min(
                refresh_at, timestamp + options.duration * options.eager_refresh_threshold
            )
        return cls(
            value,
            timestamp,
            logical_expiration,
            physical,
            refresh_at,
            tags=tags,
            etag=etag,
            last_modified=last_modified,
        )

    @property
    def keeps_stale_value(self) -> bool:
        """Made with fail-safe on: its value outlives its logical expiration."""
        return self.physical_expiration > self.logical_expiration

    def expired(self, now: float, invalidated_at: float) -> Entry:
        """A stale copy (same value and timestamp)."""
        return Entry(
            self.value,
            self.timestamp,
            min(self.logical_expiration, now),
            self.physical_expiration,
            min(self.refresh_at, now),
            max(self.invalidated_at, invalidated_at),
            self.stale,
            self.tags,
            self.etag,
            self.last_modified,
        )

    def throttled(self, now: float, options: EntryOptions) -> Entry:
        """A copy served as fresh for `fail_safe_throttle_duration` after a factory failure."""
        until = now + options.fail_safe_throttle_duration
        return Entry(
            self.value,
            self.timestamp,
            until,
            max(self.physical_expiration, until),
            until,
            self.invalidated_at,
            stale=True,
            tags=self.tags,
            etag=self.etag,
            last_modified=self.last_modified,
        )


class MemoryCache:
    """The L1 store: bounded, least recently used evicted first. Safe under the GIL: every
    operation is one atomic `OrderedDict` call, and races only cost a cache miss."""

    def __init__(self, max_entries: int) -> None:
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.max_entries = max_entries
        self.evictions = 0
        """Entries dropped to stay within `max_entries`."""
        self.on_evict: Callable[[str], None] | None = None
        """Called with each evicted key (after the eviction)."""

    def __len__(self) -> int:
        return len(self.entries)

    def peek(self, key: str, now: float) -> Entry | None:
        """The entry (fresh or stale), or `None`; drops it once physically expired."""
        entry = self.entries.get(key)
        if entry is not None and entry.physical_expiration <= now:
            self.remove_if(key, entry)
            return None
        return entry

    def put(self, key: str, entry: Entry) -> None:
        entries = self.entries
        entries[key] = entry
        try:
            entries.move_to_end(key)
            while len(entries) > self.max_entries:
                evicted, _ = entries.popitem(last=False)
                self.evictions += 1
                if self.on_evict is not None:
                    self.on_evict(evicted)
        except KeyError:  # raced with a concurrent removal: nothing to do
            pass

    def replace_if(self, key: str, old: Entry, new: Entry) -> None:
        """Swap `old` for `new` unless another thread replaced `old` meanwhile."""
        if self.entries.get(key) is old:
            self.entries[key] = new

    def remove_if(self, key: str, old: Entry) -> None:
        if self.entries.get(key) is old:
            self.entries.pop(key, None)

    def remove(self, key: str) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()

    def items(self) -> list[tuple[str, Entry]]:
        return list(self.entries.items())
