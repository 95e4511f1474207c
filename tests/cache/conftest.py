from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from cache import CacheOptions, EntryOptions, HybridCache
from cache.redis import RedisDistributedCache

from .._support import FakeClock, wait_until

__all__ = ["RUN_PREFIX", "FakeClock", "wait_until"]

RUN_PREFIX = f"test-cache:{uuid.uuid4().hex}:"
"""Every Redis key of this test run starts with this."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_cache(clock: FakeClock) -> Iterator[Callable[..., HybridCache]]:
    made: list[HybridCache] = []

    def make(
        entry: EntryOptions | None = None, *, max_entries: int = 1000, **kwargs: object
    ) -> HybridCache:
        options = CacheOptions(
            name="test",
            default_entry_options=entry or EntryOptions(duration=10),
            max_entries=max_entries,
        )
        cache = HybridCache(options, clock=clock, **kwargs)  # type: ignore[arg-type]
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


class Counter:
    """A factory that counts its calls and returns (or raises) what it is told."""

    def __init__(self, value: object = "v1") -> None:
        self.calls = 0
        self.value = value
        self.error: BaseException | None = None

    def __call__(self) -> object:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.value


class Gate:
    """A sync factory that counts its calls and blocks until `release()`, then returns `value`
    (or raises `error`)."""

    def __init__(self, value: object = "v", error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.calls = 0
        self._event = threading.Event()

    def release(self) -> None:
        self._event.set()

    def __call__(self) -> object:
        self.calls += 1
        self._event.wait(5)
        if self.error is not None:
            raise self.error
        return self.value


def run_threads(count: int, target: Callable[[], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


@pytest.fixture
def redis_l2() -> Iterator[RedisDistributedCache]:
    """The shared Redis on 127.0.0.1:6379 under this run's key prefix (cleaned up after)."""
    client = RedisDistributedCache("redis://127.0.0.1:6379/0", key_prefix=RUN_PREFIX)
    try:
        client._sync.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis must run on 127.0.0.1:6379 for these tests (bash scripts/services.sh): {exc}"
        )
    yield client
    keys = client._sync.keys(RUN_PREFIX + "*")
    if keys:
        client._sync.delete(*keys)
    client.close()
