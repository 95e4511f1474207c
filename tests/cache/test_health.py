"""`HybridCache.health()`: OK normally; DEGRADED with reasons in words when Redis is down, the
backplane is disconnected or messages wait for auto-recovery; DOWN once closed."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from cache import (
    BackplaneError,
    BackplaneMessage,
    BackplaneSubscriptionOptions,
    CacheOptions,
    EntryOptions,
    HealthStatus,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
)
from cache.redis import RedisDistributedCache

from .conftest import Counter, FakeClock, wait_until
from .test_redis import free_port

MakeCache = Callable[..., HybridCache]
START = "2023-11-14T22:13:20Z"
"""`FakeClock()`'s start, as health reasons show it."""


def test_ok_with_redis_and_a_backplane(
    make_cache: MakeCache, redis_l2: RedisDistributedCache
) -> None:
    cache = make_cache(distributed_cache=redis_l2, backplane=MemoryBackplane(MemoryBackplaneHub()))
    cache.get_or_set("k", Counter())
    health = cache.health()
    assert health.status is HealthStatus.OK and health.reasons == ()
    assert health.component == "cache 'test'"


def test_redis_down_is_degraded_naming_it_and_when(make_cache: MakeCache, clock: FakeClock) -> None:
    port = free_port()
    l2 = RedisDistributedCache(f"redis://:Zqsecret@127.0.0.1:{port}/0", connect_timeout=0.5)
    cache = make_cache(distributed_cache=l2, owns_distributed_cache=True)
    assert cache.get_or_set("k", Counter("v")) == "v"
    health = cache.health()
    assert health.status is HealthStatus.DEGRADED
    (reason,) = health.reasons
    assert reason.startswith(
        f"distributed cache (Redis 127.0.0.1:{port}) unreachable since {START}, "
        "circuit open until 2023-11-14T22:13:25Z (last error: DistributedCacheError: "
    )
    assert "Zq" not in reason
    clock.advance(6)  # the breaker lets the next call probe; nothing has succeeded yet
    (reason,) = cache.health().reasons
    assert f"unreachable since {START}, probed again on the next call" in reason


def test_backplane_disconnected_and_backlog(make_cache: MakeCache) -> None:
    hub = MemoryBackplaneHub()
    cache = make_cache(backplane=MemoryBackplane(hub))
    hub.connected = False
    cache.set("a", 1)
    cache.set("b", 2)
    health = cache.health()
    assert health.status is HealthStatus.DEGRADED
    assert health.reasons[0].startswith("backplane (MemoryBackplane) disconnected since " + START)
    assert health.reasons[1].startswith("2 backplane messages wait in the auto-recovery queue")
    hub.connected = True  # the connect handler replays the queue
    wait_until(lambda: cache.health().is_ok)


class OpaqueBackplane:
    """A backplane that cannot tell whether it is connected (no `is_connected`)."""

    def __init__(self, hub: MemoryBackplaneHub) -> None:
        self._inner = MemoryBackplane(hub)

    def subscribe(self, options: BackplaneSubscriptionOptions) -> None:
        self._inner.subscribe(options)

    def unsubscribe(self) -> None:
        self._inner.unsubscribe()

    def publish(self, message: BackplaneMessage, options: EntryOptions) -> None:
        self._inner.publish(message, options)

    async def publish_async(self, message: BackplaneMessage, options: EntryOptions) -> None:
        self._inner.publish(message, options)


def test_backplane_state_is_judged_by_the_last_publish(make_cache: MakeCache) -> None:
    hub = MemoryBackplaneHub()
    cache = make_cache(backplane=OpaqueBackplane(hub))
    assert cache.health().is_ok
    hub.connected = False
    cache.set("a", 1)
    reasons = cache.health().reasons
    assert reasons[0].startswith(f"backplane (OpaqueBackplane) disconnected since {START}")
    assert "BackplaneError: memory backplane hub is disconnected" in reasons[0]
    assert reasons[1].startswith("1 backplane message waits")
    hub.connected = True
    wait_until(lambda: cache.health().is_ok)


async def test_closed_is_down(make_cache: MakeCache) -> None:
    cache = make_cache()
    await cache.close_async()
    health = cache.health()
    assert health.status is HealthStatus.DOWN
    assert health.reasons == ("closed (close() was called): build a new HybridCache",)
    assert health.to_dict()["status"] == "down"


@pytest.mark.parametrize("duration", [0, 5])
def test_breaker_off_still_reports_the_outage(clock: FakeClock, duration: float) -> None:
    l2 = RedisDistributedCache(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    options = CacheOptions(name="t", distributed_cache_circuit_breaker_duration=duration)
    with HybridCache(options, l2, clock=clock, owns_distributed_cache=True) as cache:
        cache.get_or_set("k", Counter())
        assert cache.health().status is HealthStatus.DEGRADED
        assert cache.distributed_cache_circuit_open is (duration > 0)


class LeakyBackplane(OpaqueBackplane):
    """Fails with an error that quotes a connection string (as a careless transport might)."""

    def publish(self, message: BackplaneMessage, options: EntryOptions) -> None:
        raise BackplaneError(
            "cannot send: Endpoint=sb://ns.servicebus.windows.net/;"
            "SharedAccessKeyName=app;SharedAccessKey=Zqkey== (redis://:Zqpw@cache:6379)"
        )


def test_backplane_errors_are_redacted_in_health_and_logs(
    make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(backplane=LeakyBackplane(MemoryBackplaneHub()))
    with caplog.at_level(logging.DEBUG):
        cache.set("a", 1)
        cache.process_auto_recovery()
    (reason, _) = cache.health().reasons
    assert "SharedAccessKey=***" in reason and "redis://:***@cache:6379" in reason
    assert "Zq" not in reason and "Zq" not in caplog.text
