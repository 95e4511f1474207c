"""Cold-key stampede: 1,000 concurrent reads of one missing key call the factory exactly once.

Async: 1,000 tasks per round on one key (a fresh key each round), factory awaits 5 ms. Compared
in the same run with aiocache's `cached_stampede` and cashews' `@cache(..., lock=True)`.
Threads: 32 threads per round reading one key through the sync face, factory sleeps 5 ms.
Prints requests per second and factory calls per round. Run: `PYTHONPATH=. python bench/stampede.py`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiocache import cached_stampede
from cashews import Cache as CashewsCache

from cache import CacheOptions, EntryOptions, HybridCache

TASKS = 1000
THREADS = 32
ROUNDS = 10
FACTORY_SECONDS = 0.005


async def rounds_async(
    read: Callable[[str], Awaitable[Any]], calls: list[int]
) -> tuple[float, float]:
    """(requests per second, factory calls per round)."""
    start = time.perf_counter()
    for round_ in range(ROUNDS):
        key = f"product:{round_}"
        results = await asyncio.gather(*(read(key) for _ in range(TASKS)))
        assert all(r == key for r in results)
    elapsed = time.perf_counter() - start
    return TASKS * ROUNDS / elapsed, calls[0] / ROUNDS


async def async_suite() -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}

    hybrid = HybridCache(CacheOptions(default_entry_options=EntryOptions(duration=60)))
    hybrid_calls = [0]

    async def load(key: str) -> str:
        hybrid_calls[0] += 1
        await asyncio.sleep(FACTORY_SECONDS)
        return key

    results["HybridCache.get_or_set_async"] = await rounds_async(
        lambda key: hybrid.get_or_set_async(key, lambda: load(key)), hybrid_calls
    )
    hybrid.close()

    aiocache_calls = [0]

    @cached_stampede(lease=2, ttl=60)  # type: ignore[misc]
    async def aiocache_load(key: str) -> str:
        aiocache_calls[0] += 1
        await asyncio.sleep(FACTORY_SECONDS)
        return key

    results["aiocache cached_stampede"] = await rounds_async(aiocache_load, aiocache_calls)

    cashews = CashewsCache()
    cashews.setup("mem://")
    cashews_calls = [0]

    @cashews(ttl=60, lock=True)  # type: ignore[misc]
    async def cashews_load(key: str) -> str:
        cashews_calls[0] += 1
        await asyncio.sleep(FACTORY_SECONDS)
        return key

    results["cashews @cache(lock=True)"] = await rounds_async(cashews_load, cashews_calls)
    return results


def thread_suite() -> tuple[float, float]:
    cache = HybridCache(CacheOptions(default_entry_options=EntryOptions(duration=60)))
    calls = [0]
    lock = threading.Lock()

    def load(key: str) -> str:
        with lock:
            calls[0] += 1
        time.sleep(FACTORY_SECONDS)
        return key

    start = time.perf_counter()
    for round_ in range(ROUNDS):
        key = f"product:{round_}"
        barrier = threading.Barrier(THREADS)
        wrong: list[object] = []

        def read(
            key: str = key, barrier: threading.Barrier = barrier, wrong: list[object] = wrong
        ) -> None:
            barrier.wait()
            if cache.get_or_set(key, lambda: load(key)) != key:
                wrong.append(key)

        threads = [threading.Thread(target=read) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not wrong
    elapsed = time.perf_counter() - start
    cache.close()
    return THREADS * ROUNDS / elapsed, calls[0] / ROUNDS


def main() -> None:
    results = asyncio.run(async_suite())
    print(
        f"{TASKS} concurrent tasks on one cold key, {ROUNDS} rounds, factory {FACTORY_SECONDS * 1000:.0f} ms"
    )
    print(f"{'':34} {'req/s':>10} {'factory calls/round':>20}")
    for name, (rps, calls) in results.items():
        print(f"{name:34} {rps:10.0f} {calls:20.1f}")
    ours = results["HybridCache.get_or_set_async"][0]
    for name, (rps, _) in results.items():
        if not name.startswith("HybridCache"):
            print(f"HybridCache vs {name}: {ours / rps:.2f}x req/s")
    rps, calls = thread_suite()
    print(
        f"\n{THREADS} threads on one cold key, {ROUNDS} rounds: HybridCache.get_or_set {rps:.0f} req/s, {calls:.1f} factory calls/round"
    )


if __name__ == "__main__":
    main()
