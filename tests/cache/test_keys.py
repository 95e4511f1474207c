"""One bad key or value must not switch L2 off for every key: unencodable keys are refused at
the API, and a client-side error of one call leaves the circuit breaker closed (real Redis)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cache import CircuitBreaker, EntryOptions, HybridCache, JsonSerializer
from cache._distributed import GuardedDistributedCache
from cache.redis import RedisDistributedCache

from .conftest import RUN_PREFIX, Counter, FakeClock

MakeCache = Callable[..., HybridCache]
BAD = "product:\ud800"
"""A lone surrogate: no UTF-8 encoding, so Redis (and the backplane) cannot carry it."""


def sync_calls(cache: HybridCache) -> dict[str, Callable[[], Any]]:
    return {
        "get": lambda: cache.get(BAD),
        "try_get": lambda: cache.try_get(BAD),
        "get_or_set": lambda: cache.get_or_set(BAD, Counter()),
        "set": lambda: cache.set(BAD, 1),
        "remove": lambda: cache.remove(BAD),
        "expire": lambda: cache.expire(BAD),
    }


def async_calls(cache: HybridCache) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "get_async": lambda: cache.get_async(BAD),
        "try_get_async": lambda: cache.try_get_async(BAD),
        "get_or_set_async": lambda: cache.get_or_set_async(BAD, Counter()),
        "set_async": lambda: cache.set_async(BAD, 1),
        "remove_async": lambda: cache.remove_async(BAD),
        "expire_async": lambda: cache.expire_async(BAD),
    }


def assert_l2_still_used(cache: HybridCache, l2: RedisDistributedCache, key: str) -> None:
    assert not cache.distributed_cache_circuit_open
    assert cache.health().is_ok
    cache.set(key, {"ok": True})
    assert l2.get(key) is not None


@pytest.mark.parametrize("name", ["get", "try_get", "get_or_set", "set", "remove", "expire"])
def test_unencodable_key_is_refused_naming_it(
    name: str, make_cache: MakeCache, redis_l2: RedisDistributedCache
) -> None:
    cache = make_cache(distributed_cache=redis_l2)
    with pytest.raises(ValueError, match=re.escape(repr(BAD))) as info:
        sync_calls(cache)[name]()
    assert "UTF-8" in str(info.value)
    assert cache.memory_count == 0
    assert_l2_still_used(cache, redis_l2, f"good-{name}")


@pytest.mark.parametrize(
    "name",
    [
        "get_async",
        "try_get_async",
        "get_or_set_async",
        "set_async",
        "remove_async",
        "expire_async",
    ],
)
async def test_unencodable_key_is_refused_naming_it_async(
    name: str, make_cache: MakeCache, redis_l2: RedisDistributedCache
) -> None:
    cache = make_cache(distributed_cache=redis_l2)
    with pytest.raises(ValueError, match=re.escape(repr(BAD))):
        await async_calls(cache)[name]()
    assert_l2_still_used(cache, redis_l2, f"good-{name}")
    await redis_l2.close_async()


def test_valid_non_ascii_keys_work(make_cache: MakeCache, redis_l2: RedisDistributedCache) -> None:
    first, second = make_cache(distributed_cache=redis_l2), make_cache(distributed_cache=redis_l2)
    first.set("café:☕:𝄞", "v")
    assert second.get("café:☕:𝄞") == "v"


def test_client_side_error_for_one_key_leaves_the_breaker_closed(
    redis_l2: RedisDistributedCache, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Below the API check: the Redis client itself cannot encode the key."""
    guarded = GuardedDistributedCache(redis_l2, CircuitBreaker(5, clock))
    with caplog.at_level(logging.WARNING):
        assert guarded.get(BAD) is None
        assert guarded.set(BAD, b"x", 60) is False
        assert guarded.remove(BAD) is False
    assert not guarded.breaker.is_open
    assert guarded.breaker.failing_since is None
    assert "refused by the client" in caplog.text and repr(BAD) in caplog.text
    assert guarded.set("other", b"y", 60)
    assert guarded.get("other") == b"y"


async def test_client_side_error_for_one_key_leaves_the_breaker_closed_async(
    redis_l2: RedisDistributedCache, clock: FakeClock
) -> None:
    guarded = GuardedDistributedCache(redis_l2, CircuitBreaker(5, clock))
    assert await guarded.get_async(BAD) is None
    assert await guarded.set_async(BAD, b"x", 60) is False
    assert await guarded.remove_async(BAD) is False
    assert not guarded.breaker.is_open
    assert await guarded.set_async("other-async", b"y", 60)
    await redis_l2.close_async()


def test_outage_still_opens_the_breaker(clock: FakeClock) -> None:
    from .test_redis import free_port

    down = RedisDistributedCache(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    guarded = GuardedDistributedCache(down, CircuitBreaker(5, clock))
    assert guarded.get("k") is None
    assert guarded.breaker.is_open
    assert guarded.breaker.failing_since == clock.now
    assert guarded.breaker.last_error is not None
    assert "DistributedCacheError" in guarded.breaker.last_error
    down.close()


class Unserializable:
    """Not JSON, not attrs: the default serializer cannot write it to L2."""


def test_unserializable_value_stays_in_memory_and_l2_stays_on(
    make_cache: MakeCache, redis_l2: RedisDistributedCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(distributed_cache=redis_l2)
    redis_l2.set("obj", b"an older copy", 60)
    value = Unserializable()
    with caplog.at_level(logging.WARNING):
        assert cache.get_or_set("obj", lambda: value) is value
    assert cache.get_or_set("obj", Counter()) is value  # from L1
    assert redis_l2.get("obj") is None  # the older L2 copy is not left to be served
    assert "cannot be serialized" in caplog.text and "'obj'" in caplog.text
    assert_l2_still_used(cache, redis_l2, "after-obj")


class FailsForOneValue(JsonSerializer):
    def serialize(self, value: Any) -> bytes:
        if value == "poison":
            raise ValueError("cannot encode poison")
        return super().serialize(value)


async def test_serializer_error_for_one_value_async(
    make_cache: MakeCache, redis_l2: RedisDistributedCache
) -> None:
    cache = make_cache(
        EntryOptions(duration=10), distributed_cache=redis_l2, serializer=FailsForOneValue()
    )
    await cache.set_async("p", "poison")
    assert await cache.get_async("p") == "poison"
    await cache.set_async("q", "fine")
    assert redis_l2._sync.get(RUN_PREFIX + "q") is not None
    assert not cache.distributed_cache_circuit_open
    await redis_l2.close_async()
