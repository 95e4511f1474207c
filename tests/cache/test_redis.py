"""`RedisDistributedCache` against real Redis servers: the shared one on 127.0.0.1:6379, a closed
port, and a throwaway `redis-server` of the test's own that is stopped and started again."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from cache import EntryOptions, HealthStatus, HybridCache
from cache.redis import RedisDistributedCache

from .conftest import RUN_PREFIX, Counter, FakeClock

MakeCache = Callable[..., HybridCache]


@pytest.fixture
def l2(redis_l2: RedisDistributedCache) -> RedisDistributedCache:
    return redis_l2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_round_trip_with_ttl(l2: RedisDistributedCache) -> None:
    l2.set("a", b"payload", 60)
    assert l2.get("a") == b"payload"
    assert 0 < l2._sync.pttl(RUN_PREFIX + "a") <= 60_000
    l2.remove("a")
    assert l2.get("a") is None


async def test_async_round_trip(l2: RedisDistributedCache) -> None:
    await l2.set_async("b", b"x", 60)
    assert await l2.get_async("b") == b"x"
    await l2.remove_async("b")
    assert await l2.get_async("b") is None
    await l2.close_async()


def test_two_caches_share_values_through_redis(
    make_cache: MakeCache, l2: RedisDistributedCache
) -> None:
    first, second = make_cache(distributed_cache=l2), make_cache(distributed_cache=l2)
    first.get_or_set("product:1", Counter({"name": "chair", "stock": 3}))
    factory = Counter()
    assert second.get_or_set("product:1", factory) == {"name": "chair", "stock": 3}
    assert factory.calls == 0
    first.expire("product:1")
    assert second.get("product:1") == {"name": "chair", "stock": 3}  # its L1 copy; L2 copy gone
    assert l2.get("product:1") is None


async def test_async_cache_over_redis(make_cache: MakeCache, l2: RedisDistributedCache) -> None:
    first, second = make_cache(distributed_cache=l2), make_cache(distributed_cache=l2)

    async def load() -> list[int]:
        return [1, 2, 3]

    assert await first.get_or_set_async("list", load) == [1, 2, 3]
    assert await second.get_async("list") == [1, 2, 3]
    await l2.close_async()


def test_unreachable_redis_never_fails_a_read(make_cache: MakeCache, clock: FakeClock) -> None:
    closed = RedisDistributedCache(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    cache = make_cache(
        EntryOptions(duration=10, is_fail_safe_enabled=True), distributed_cache=closed
    )
    assert cache.get_or_set("k", Counter("from-db")) == "from-db"
    assert cache.distributed_cache_circuit_open
    assert cache.get_or_set("k", Counter("again")) == "from-db"  # L1 keeps serving
    clock.advance(11)
    failing = Counter()
    failing.error = RuntimeError("db down too")
    assert cache.get_or_set("k", failing) == "from-db"  # fail-safe, L2 skipped or failing


class ThrowawayRedis:
    """A `redis-server` of this test's own on a free port (no persistence)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server must be on PATH for the restart test")
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail("throwaway redis-server did not start")
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def throwaway() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    yield server
    server.stop()


def test_redis_restarted_mid_test(
    make_cache: MakeCache, clock: FakeClock, throwaway: ThrowawayRedis
) -> None:
    l2 = RedisDistributedCache(f"redis://127.0.0.1:{throwaway.port}/0", key_prefix=RUN_PREFIX)
    options = EntryOptions(duration=10, is_fail_safe_enabled=True)
    cache = make_cache(options, distributed_cache=l2)
    assert cache.get_or_set("k", Counter("v1")) == "v1"
    assert l2.get("k") is not None

    throwaway.stop()
    clock.advance(11)
    failing = Counter()
    failing.error = RuntimeError("db down")
    assert cache.get_or_set("k", failing) == "v1"  # L2 down and factory down: stale value
    assert cache.distributed_cache_circuit_open
    assert cache.health().status is HealthStatus.DEGRADED
    assert cache.get_or_set("other", Counter("v2")) == "v2"  # L2 down, factory fine

    throwaway.start()  # empty again: no persistence
    clock.advance(5.1)  # breaker duration over: the next L2 call probes
    assert cache.get_or_set("third", Counter("v3")) == "v3"
    assert not cache.distributed_cache_circuit_open
    assert cache.health().is_ok
    assert l2.get("third") is not None
    l2.close()


def test_infinite_fail_safe_keeps_the_value_without_expiry(
    make_cache: MakeCache, clock: FakeClock, l2: RedisDistributedCache
) -> None:
    options = EntryOptions(duration=10, is_fail_safe_enabled=True, fail_safe_max_duration=math.inf)
    cache = make_cache(options, distributed_cache=l2)
    cache.set("forever", "v1")
    assert l2._sync.pttl(RUN_PREFIX + "forever") == -1  # stored without a TTL
    clock.advance(10**9)
    failing = Counter()
    failing.error = RuntimeError("db down")
    assert cache.get_or_set("forever", failing) == "v1"
    assert make_cache(options, distributed_cache=l2).get_or_set("forever", failing) == "v1"


def test_clear_deletes_only_keys_under_the_prefix_even_with_glob_characters() -> None:
    base = f"{RUN_PREFIX}clear:"
    tricky = RedisDistributedCache(key_prefix=base + "a*[b]?\\:")
    lookalike = RedisDistributedCache(key_prefix=base + "aX[b]?\\:")  # matches the unescaped glob
    extended = RedisDistributedCache(key_prefix=base + "a*[b]?\\:more:")
    try:
        for index in range(1200):  # more than one SCAN/UNLINK batch
            tricky.set(f"k{index}", b"v", 60)
        lookalike.set("k", b"v", 60)
        assert tricky.clear() == 1200
        assert tricky.get("k0") is None
        assert lookalike.get("k") == b"v"
        extended.set("k", b"v", 60)  # under the prefix: cleared too (prefixes nest)
        assert tricky.clear() == 1
    finally:
        lookalike.remove("k")
        for cache in (tricky, lookalike, extended):
            cache.close()


async def test_clear_async(l2: RedisDistributedCache) -> None:
    scoped = RedisDistributedCache(key_prefix=f"{RUN_PREFIX}clear-async:")
    await scoped.set_async("a", b"1", 60)
    await scoped.set_async("b", b"2", 60)
    await l2.set_async("outside", b"3", 60)
    assert await scoped.clear_async() == 2
    assert await l2.get_async("outside") == b"3"
    await scoped.close_async()
    await l2.close_async()


def test_clear_refuses_without_a_prefix() -> None:
    whole_database = RedisDistributedCache()
    with pytest.raises(ValueError, match="needs a key_prefix"):
        whole_database.clear()
    whole_database.close()
