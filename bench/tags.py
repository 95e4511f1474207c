"""Tagging, in one run: `remove_by_tag` over 100,000 tagged entries on three instances against a
loop of `remove` calls, and the per-hit cost of the tag check.

Three `HybridCache`s share one L2 (`MemoryDistributedCache`) and one `MemoryBackplane` hub, so
the figures are the cache's own work (no network). Each instance holds every entry in L1.
Run from the repository root: `python bench/tags.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cache import (
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
    MemoryDistributedCache,
)

ENTRIES = 100_000
HITS = 200_000
ROUNDS = 5


def instances() -> list[HybridCache]:
    hub = MemoryBackplaneHub()
    l2 = MemoryDistributedCache()
    options = CacheOptions(
        name="bench",
        default_entry_options=EntryOptions(duration=3600),
        max_entries=2 * ENTRIES,
    )
    return [HybridCache(options, l2, MemoryBackplane(hub)) for _ in range(3)]


def fill(caches: list[HybridCache]) -> None:
    first = caches[0]
    for index in range(ENTRIES):
        first.set(f"product:{index}", index, tags=["products"])
    for other in caches[1:]:  # the others read every entry into their L1 (from L2)
        for index in range(ENTRIES):
            other.get(f"product:{index}")
    assert all(cache.memory_count == ENTRIES for cache in caches)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_hit(fn: Callable[..., Any], *args: Any) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(HITS):
            fn(*args)
        best = min(best, time.perf_counter() - start)
    return best / HITS * 1e9


def main() -> None:
    caches = instances()
    fill(caches)
    by_tag = timed(lambda: caches[0].remove_by_tag("products"))
    assert all(cache.memory_count == 0 for cache in caches)
    for cache in caches:
        cache.close()

    caches = instances()
    fill(caches)
    first = caches[0]
    by_key = timed(lambda: [first.remove(f"product:{i}") for i in range(ENTRIES)])
    assert all(cache.memory_count == 0 for cache in caches)
    for cache in caches:
        cache.close()
    print(f"{'100,000 tagged entries on 3 instances':44} {'seconds':>9}")
    print(f"{'remove_by_tag (one call)':44} {by_tag:9.3f}")
    print(f"{'loop of remove calls':44} {by_key:9.3f}")
    print(f"{'remove_by_tag / loop of remove':44} {by_tag / by_key:9.4f}x")

    def factory() -> int:
        return 0

    l2 = MemoryDistributedCache()
    options = CacheOptions(name="hits", default_entry_options=EntryOptions(duration=3600))
    with HybridCache(options, l2) as writer, HybridCache(options, l2) as reader:
        writer.set("plain", 1)
        writer.set("tagged", 1, tags=["products", "category:shoes", "brand:acme"])
        l1_plain = per_hit(writer.get_or_set, "plain", factory)
        l1_tagged = per_hit(writer.get_or_set, "tagged", factory)
        from_l2 = EntryOptions(duration=3600, skip_memory_cache=True)  # every read goes to L2
        l2_plain = _per_read(reader.get, "plain", from_l2)
        l2_tagged = _per_read(reader.get, "tagged", from_l2)
    print()
    print(f"{'per hit':44} {'ns/op':>9}")
    print(f"{'L1 hit, untagged entry':44} {l1_plain:9.0f}")
    print(f"{'L1 hit, entry with 3 tags':44} {l1_tagged:9.0f}")
    print(f"{'  tag check on the L1 hit':44} {l1_tagged - l1_plain:9.0f}")
    print(f"{'L2 hit, untagged entry':44} {l2_plain:9.0f}")
    print(f"{'L2 hit, entry with 3 tags (marks checked)':44} {l2_tagged:9.0f}")
    print(f"{'  tag check on the L2 hit':44} {l2_tagged - l2_plain:9.0f}")


def _per_read(fn: Callable[..., Any], key: str, options: EntryOptions) -> float:
    reads = HITS // 10
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(reads):
            fn(key, None, options)
        best = min(best, time.perf_counter() - start)
    return best / reads * 1e9


if __name__ == "__main__":
    main()
