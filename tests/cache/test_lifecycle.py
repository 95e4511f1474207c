"""Closing a `HybridCache`: the Redis client it built is closed, a caller's is left alone (unless
asked), the backplane is unsubscribed, the auto-recovery timer stops; idempotent; both faces."""

from __future__ import annotations

import threading
import uuid

import redis

from cache import (
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
)
from cache.redis import RedisDistributedCache

from .conftest import RUN_PREFIX, FakeClock, wait_until

URL = "redis://127.0.0.1:6379/0"


def client_name() -> str:
    return f"hc-test-{uuid.uuid4().hex}"


def connections(name: str) -> int:
    """How many connections the real Redis has under this client name."""
    with redis.Redis.from_url(URL) as admin:
        return sum(1 for client in admin.client_list() if client.get("name") == name)


def test_close_closes_the_redis_client_it_built(
    redis_l2: RedisDistributedCache, clock: FakeClock
) -> None:
    name = client_name()
    cache = HybridCache(CacheOptions(name="t"), f"{URL}?client_name={name}", clock=clock)
    cache.set(RUN_PREFIX + "built", 1)
    assert redis_l2._sync.get(RUN_PREFIX + "built") is not None
    assert connections(name) == 1
    cache.close()
    wait_until(lambda: connections(name) == 0)
    cache.close()  # idempotent


def test_close_leaves_a_given_client_alone_unless_asked(clock: FakeClock) -> None:
    name = client_name()
    l2 = RedisDistributedCache(f"{URL}?client_name={name}", key_prefix=RUN_PREFIX)
    with HybridCache(CacheOptions(name="t"), l2, clock=clock) as cache:
        cache.set("given", 1)
    assert cache.closed
    assert connections(name) == 1
    assert l2.get("given") is not None  # still usable by its owner
    owned = HybridCache(CacheOptions(name="t"), l2, clock=clock, owns_distributed_cache=True)
    owned.set("given", 2)
    owned.close()
    wait_until(lambda: connections(name) == 0)
    l2.remove("given")
    l2.close()


async def test_close_async_closes_the_asyncio_client_too(
    redis_l2: RedisDistributedCache, clock: FakeClock
) -> None:
    name = client_name()
    async with HybridCache(
        CacheOptions(name="t"), f"{URL}?client_name={name}", clock=clock
    ) as cache:
        await cache.set_async(RUN_PREFIX + "async-built", 1)
        assert cache.get(RUN_PREFIX + "async-built") == 1
        assert await cache.get_async(RUN_PREFIX + "other") is None  # the asyncio client, too
        assert connections(name) == 1
    wait_until(lambda: connections(name) == 0)
    await cache.close_async()  # idempotent
    cache.close()


def test_close_unsubscribes_and_stops_the_auto_recovery_timer(clock: FakeClock) -> None:
    hub = MemoryBackplaneHub()
    options = CacheOptions(
        name="closing",
        default_entry_options=EntryOptions(duration=60),
        auto_recovery_delay=3600,
    )
    a = HybridCache(options, backplane=MemoryBackplane(hub), clock=clock)
    b = HybridCache(options, backplane=MemoryBackplane(hub), clock=clock)
    a.set("k", "a1")
    hub.connected = False
    a.set("j", "a2")  # cannot publish: queued, the retry timer runs
    assert a.auto_recovery_pending == ["j"]
    assert any(t.name == "cache-closing-auto-recovery" for t in threading.enumerate())
    a.close()

    def timer_alive() -> bool:
        return any(
            t.name == "cache-closing-auto-recovery" and t.is_alive() for t in threading.enumerate()
        )

    wait_until(lambda: not timer_alive())
    hub.connected = True
    clock.advance(1)
    b.set("k", "b1")  # a no longer listens: its copy is untouched
    assert a.try_get("k").value == "a1"
    b.close()
