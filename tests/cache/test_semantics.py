"""FusionCache semantics, one by one, with an injected clock."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable

import pytest

from cache import EntryOptions, FactoryTimeoutError, HybridCache

from .conftest import Counter, FakeClock, Gate, run_threads, wait_until

MakeCache = Callable[..., HybridCache]
FAIL_SAFE = EntryOptions(duration=10, is_fail_safe_enabled=True, fail_safe_throttle_duration=3)


def test_hit_serves_from_memory_until_duration(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache()
    factory = Counter()
    assert cache.get_or_set("k", factory) == "v1"
    clock.advance(9.9)
    assert cache.get_or_set("k", factory) == "v1"
    assert factory.calls == 1
    clock.advance(0.2)
    factory.value = "v2"
    assert cache.get_or_set("k", factory) == "v2"
    assert factory.calls == 2


async def test_async_face_shares_entries(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache()

    async def load() -> str:
        return "async"

    assert await cache.get_or_set_async("k", load) == "async"
    assert cache.get_or_set("k", Counter("sync")) == "async"
    assert await cache.get_or_set_async("j", lambda: "plain") == "plain"
    assert (await cache.try_get_async("k")).value == "async"
    await cache.set_async("k", "new")
    assert await cache.get_async("k") == "new"
    await cache.remove_async("k")
    assert await cache.get_async("k", "gone") == "gone"


def test_keys_must_be_str(make_cache: MakeCache) -> None:
    cache = make_cache()
    for call in (
        lambda: cache.get_or_set(42, Counter()),  # type: ignore[arg-type]
        lambda: cache.get_or_set(["x"], Counter()),  # type: ignore[arg-type]
        lambda: cache.set(b"k", 1),  # type: ignore[arg-type]
        lambda: cache.get(1.5),  # type: ignore[arg-type]
        lambda: cache.expire(None),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match="cache key must be str"):
            call()


def test_l1_is_bounded_lru(make_cache: MakeCache) -> None:
    cache = make_cache(max_entries=3)
    for key in "abc":
        cache.set(key, key)
    cache.get_or_set("a", Counter())  # a is now the most recently used
    cache.set("d", "d")
    assert cache.memory_count == 3
    assert cache.try_get("b").has_value is False
    assert [cache.get(k) for k in "acd"] == ["a", "c", "d"]


def test_stampede_threads_share_one_factory_call(make_cache: MakeCache) -> None:
    cache = make_cache()
    gate = Gate("once")
    results: list[object] = []
    threads = run_threads(16, lambda: results.append(cache.get_or_set("k", gate)))
    wait_until(lambda: len(cache._flights) == 1 and gate.calls == 1)
    gate.release()
    for thread in threads:
        thread.join()
    assert results == ["once"] * 16
    assert gate.calls == 1


async def test_stampede_tasks_share_one_factory_call(make_cache: MakeCache) -> None:
    cache = make_cache()
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return "once"

    results = await asyncio.gather(*(cache.get_or_set_async("k", load) for _ in range(200)))
    assert set(results) == {"once"}
    assert calls == 1


async def test_stampede_across_sync_and_async_callers(make_cache: MakeCache) -> None:
    cache = make_cache()
    gate = Gate("shared")
    (leader,) = run_threads(1, lambda: cache.get_or_set("k", gate))
    wait_until(lambda: gate.calls == 1)
    followers = [asyncio.ensure_future(cache.get_or_set_async("k", gate)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.release()
    assert await asyncio.gather(*followers) == ["shared"] * 20
    leader.join()
    assert gate.calls == 1


def test_leader_error_reaches_every_waiter_once(make_cache: MakeCache) -> None:
    cache = make_cache()
    gate = Gate(error=LookupError("db down"))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            cache.get_or_set("k", gate)
        except LookupError as exc:
            errors.append(exc)

    threads = run_threads(8, call)
    wait_until(lambda: gate.calls == 1)
    gate.release()
    for thread in threads:
        thread.join()
    assert len(errors) == 8 and gate.calls == 1


def test_fail_safe_serves_stale_value_and_throttles(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(FAIL_SAFE)
    factory = Counter("good")
    cache.get_or_set("k", factory)
    clock.advance(11)
    factory.error = RuntimeError("db down")
    assert cache.get_or_set("k", factory) == "good"
    assert factory.calls == 2
    clock.advance(2.9)  # within fail_safe_throttle_duration: no new factory call
    assert cache.get_or_set("k", factory) == "good"
    assert factory.calls == 2
    clock.advance(0.2)
    factory.error = None
    factory.value = "fresh"
    assert cache.get_or_set("k", factory) == "fresh"
    assert factory.calls == 3


def test_without_fail_safe_the_factory_error_is_raised(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache()
    factory = Counter("good")
    cache.get_or_set("k", factory)
    clock.advance(11)
    factory.error = RuntimeError("db down")
    with pytest.raises(RuntimeError, match="db down"):
        cache.get_or_set("k", factory)


def test_fail_safe_max_duration_bounds_the_stale_value(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(FAIL_SAFE.duplicate(fail_safe_max_duration=60))
    factory = Counter("good")
    cache.get_or_set("k", factory)
    clock.advance(61)
    factory.error = RuntimeError("db down")
    with pytest.raises(RuntimeError):
        cache.get_or_set("k", factory)


def test_soft_timeout_returns_stale_and_completes_in_background(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(FAIL_SAFE.duplicate(factory_soft_timeout=0.02, factory_hard_timeout=5))
    cache.get_or_set("k", Counter("old"))
    clock.advance(11)
    gate = Gate("new")
    assert cache.get_or_set("k", gate) == "old"
    gate.release()
    wait_until(lambda: cache.get("k") == "new")


def test_soft_timeout_needs_a_stale_value(make_cache: MakeCache) -> None:
    cache = make_cache(FAIL_SAFE.duplicate(factory_soft_timeout=0.001))
    gate = Gate("first")
    threading.Timer(0.05, gate.release).start()
    assert cache.get_or_set("k", gate) == "first"


def test_hard_timeout_without_stale_value_raises(make_cache: MakeCache) -> None:
    cache = make_cache(EntryOptions(factory_hard_timeout=0.02))
    gate = Gate("late")
    with pytest.raises(FactoryTimeoutError, match=r"'k'.*hard timeout"):
        cache.get_or_set("k", gate)
    gate.release()
    wait_until(lambda: cache.get("k") == "late")  # completed in the background


def test_hard_timeout_with_fail_safe_serves_stale(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache(FAIL_SAFE.duplicate(factory_hard_timeout=0.02))
    cache.get_or_set("k", Counter("old"))
    clock.advance(11)
    gate = Gate("new")
    assert cache.get_or_set("k", gate) == "old"
    gate.release()


def test_background_completion_can_be_disabled(make_cache: MakeCache, clock: FakeClock) -> None:
    options = FAIL_SAFE.duplicate(
        factory_soft_timeout=0.02, allow_timed_out_factories_background_completion=False
    )
    cache = make_cache(options)
    cache.get_or_set("k", Counter("old"))
    clock.advance(11)
    release = threading.Event()
    done = threading.Event()

    def load() -> str:
        release.wait(5)
        done.set()
        return "new"

    assert cache.get_or_set("k", load) == "old"
    release.set()
    done.wait(5)
    clock.advance(3.1)  # past the throttle: the factory's late value was not stored
    assert cache.get_or_set("k", Counter("third")) == "third"


async def test_async_soft_timeout_and_background_completion(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(FAIL_SAFE.duplicate(factory_soft_timeout=0.01))
    await cache.get_or_set_async("k", Counter("old"))
    clock.advance(11)
    release = asyncio.Event()

    async def load() -> str:
        await release.wait()
        return "new"

    assert await cache.get_or_set_async("k", load) == "old"
    release.set()
    for _ in range(100):
        await asyncio.sleep(0)
        if cache.get("k") == "new":
            break
    assert cache.get("k") == "new"


async def test_async_hard_timeout_raises(make_cache: MakeCache) -> None:
    cache = make_cache(EntryOptions(factory_hard_timeout=0.01))

    async def never() -> str:
        await asyncio.Event().wait()
        return "x"

    with pytest.raises(FactoryTimeoutError):
        await cache.get_or_set_async(
            "k",
            never,
            EntryOptions(
                factory_hard_timeout=0.01, allow_timed_out_factories_background_completion=False
            ),
        )


def test_eager_refresh_reloads_in_background(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache(EntryOptions(duration=10, eager_refresh_threshold=0.8))
    factory = Counter("v1")
    cache.get_or_set("k", factory)
    clock.advance(7.9)
    assert cache.get_or_set("k", factory) == "v1"
    assert factory.calls == 1
    clock.advance(0.2)  # past 80% of the duration
    factory.value = "v2"
    assert cache.get_or_set("k", factory) == "v1"  # served at once...
    wait_until(lambda: cache.get("k") == "v2")  # ...and refreshed behind the scenes
    assert factory.calls == 2


async def test_eager_refresh_async(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache(EntryOptions(duration=10, eager_refresh_threshold=0.5))
    factory = Counter("v1")

    async def load() -> object:
        return factory()

    await cache.get_or_set_async("k", load)
    clock.advance(6)
    factory.value = "v2"
    assert await cache.get_or_set_async("k", load) == "v1"
    for _ in range(20):
        await asyncio.sleep(0)
    assert await cache.get_or_set_async("k", load) == "v2"
    assert factory.calls == 2


def test_expire_keeps_stale_value_with_fail_safe(make_cache: MakeCache) -> None:
    cache = make_cache(FAIL_SAFE)
    cache.get_or_set("k", Counter("old"))
    cache.expire("k")
    assert cache.try_get("k").has_value is False  # no longer fresh
    failing = Counter()
    failing.error = RuntimeError("down")
    assert cache.get_or_set("k", failing) == "old"  # fail-safe fallback kept


def test_expire_removes_without_fail_safe(make_cache: MakeCache) -> None:
    cache = make_cache()
    cache.get_or_set("k", Counter("old"))
    cache.expire("k")
    failing = Counter()
    failing.error = RuntimeError("down")
    with pytest.raises(RuntimeError):
        cache.get_or_set("k", failing)
    assert cache.memory_count == 0


def test_remove_deletes(make_cache: MakeCache) -> None:
    cache = make_cache(FAIL_SAFE)
    cache.set("k", "v")
    cache.remove("k")
    failing = Counter()
    failing.error = RuntimeError("down")
    with pytest.raises(RuntimeError):
        cache.get_or_set("k", failing)


def test_clear_expires_or_removes_everything(make_cache: MakeCache) -> None:
    cache = make_cache(FAIL_SAFE)
    failing = Counter()
    failing.error = RuntimeError("down")
    cache.set("a", 1)
    cache.set("b", 2)
    cache.clear()
    assert cache.try_get("a").has_value is False
    assert cache.get_or_set("b", failing) == 2
    cache.clear(allow_fail_safe=False)
    assert cache.memory_count == 0


def test_jitter_spreads_expirations(make_cache: MakeCache, clock: FakeClock) -> None:
    random.seed(7)
    cache = make_cache(EntryOptions(duration=10, jitter_max_duration=10))
    for index in range(40):
        cache.set(f"k{index}", index)
    clock.advance(15)
    alive = sum(cache.try_get(f"k{index}").has_value for index in range(40))
    assert 0 < alive < 40
    clock.advance(5.1)
    assert not any(cache.try_get(f"k{index}").has_value for index in range(40))


def test_skip_memory_cache(make_cache: MakeCache) -> None:
    cache = make_cache()
    factory = Counter()
    skip = EntryOptions(skip_memory_cache=True)
    cache.get_or_set("k", factory, skip)
    cache.get_or_set("k", factory, skip)
    assert factory.calls == 2 and cache.memory_count == 0


def test_sync_call_inside_loop_during_async_load_fails_clearly(make_cache: MakeCache) -> None:
    cache = make_cache()

    async def scenario() -> None:
        started = asyncio.Event()
        release = asyncio.Event()

        async def load() -> str:
            started.set()
            await release.wait()
            return "v"

        task = asyncio.ensure_future(cache.get_or_set_async("k", load))
        await started.wait()
        with pytest.raises(RuntimeError, match="deadlock"):
            cache.get_or_set("k", Counter())
        release.set()
        assert await task == "v"

    asyncio.run(scenario())


async def test_cancelled_async_leader_lets_a_follower_lead(make_cache: MakeCache) -> None:
    cache = make_cache()
    started = asyncio.Event()

    async def hang() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    leader = asyncio.ensure_future(cache.get_or_set_async("k", hang))
    await started.wait()

    async def quick() -> str:
        return "follower"

    follower = asyncio.ensure_future(cache.get_or_set_async("k", quick))
    await asyncio.sleep(0)
    leader.cancel()
    assert await follower == "follower"


def test_failed_eager_refresh_keeps_the_value(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache(EntryOptions(duration=10, eager_refresh_threshold=0.5))
    cache.get_or_set("k", Counter("v1"))
    clock.advance(6)
    gate = Gate(error=RuntimeError("db down"))
    assert cache.get_or_set("k", gate) == "v1"
    wait_until(lambda: gate.calls == 1)
    clock.advance(4.1)  # expired while the refresh still runs: this caller may follow it...
    results: list[object] = []
    (follower,) = run_threads(1, lambda: results.append(cache.get_or_set("k", Counter("v2"))))
    gate.release()
    follower.join()
    assert results == ["v2"]  # ...and then loads by itself once the refresh fails


async def test_sync_threads_follow_an_async_leader(make_cache: MakeCache) -> None:
    cache = make_cache()
    started, release = asyncio.Event(), asyncio.Event()
    calls = []

    async def load() -> str:
        calls.append(1)
        started.set()
        await release.wait()
        return "from-async"

    leader = asyncio.ensure_future(cache.get_or_set_async("k", load))
    await started.wait()
    results: list[object] = []
    threads = run_threads(8, lambda: results.append(cache.get_or_set("k", Counter("sync"))))
    await asyncio.sleep(0.01)  # let the threads reach the flight (they wait on it either way)
    release.set()
    assert await leader == "from-async"
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert results == ["from-async"] * 8
    assert calls == [1]
