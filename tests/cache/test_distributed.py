"""L2 behaviour with the in-process distributed cache: sharing, fail-safe, circuit breaker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache import (
    DistributedEntry,
    EntryOptions,
    HybridCache,
    JsonSerializer,
    MemoryDistributedCache,
)
from cache._serialization import decode_entry, encode_entry

from .conftest import Counter, FakeClock

MakeCache = Callable[..., HybridCache]


@attrs.frozen
class Product:
    sku: str
    price: float
    tags: tuple[str, ...] = ()


class FlakyDistributedCache(MemoryDistributedCache):
    """The in-memory L2 with a switch that makes every call fail, and a call counter."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("L2 unreachable")

    def get(self, key: str) -> bytes | None:
        self._check()
        return super().get(key)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._check()
        super().set(key, value, ttl)

    async def get_async(self, key: str) -> bytes | None:
        return self.get(key)


def test_second_instance_reads_the_first_ones_value(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    first, second = make_cache(distributed_cache=l2), make_cache(distributed_cache=l2)
    first.get_or_set("k", Counter({"a": [1, 2]}))
    factory = Counter("unused")
    assert second.get_or_set("k", factory) == {"a": [1, 2]}
    assert factory.calls == 0


def test_attrs_values_come_back_typed(make_cache: MakeCache, clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    product = Product("p-1", 9.5, ("new",))
    make_cache(distributed_cache=l2).set("p", product)
    assert make_cache(distributed_cache=l2).get("p", value_type=Product) == product
    registered = make_cache(distributed_cache=l2, serializer=JsonSerializer(types=[Product]))
    assert registered.get_or_set("p", Counter()) == product


def test_unknown_type_tag_is_a_miss_never_an_import(
    make_cache: MakeCache, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    make_cache(distributed_cache=l2).set("p", Product("p-1", 1.0))
    with caplog.at_level(logging.WARNING):
        assert make_cache(distributed_cache=l2).get_or_set("p", Counter("fresh")) == "fresh"
    assert "value_type=" in caplog.text


def test_stale_l2_value_is_a_fail_safe_fallback(make_cache: MakeCache, clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    options = EntryOptions(duration=10, is_fail_safe_enabled=True)
    make_cache(options, distributed_cache=l2).set("k", "old")
    clock.advance(11)
    failing = Counter()
    failing.error = RuntimeError("db down")
    assert make_cache(options, distributed_cache=l2).get_or_set("k", failing) == "old"


def test_failing_l2_never_fails_a_read_and_the_breaker_opens_then_closes(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    l2 = FlakyDistributedCache(clock)
    cache = make_cache(distributed_cache=l2)
    l2.down = True
    assert cache.get_or_set("a", Counter("va")) == "va"
    assert cache.distributed_cache_circuit_open
    calls = l2.calls
    assert cache.get_or_set("b", Counter("vb")) == "vb"
    assert l2.calls == calls  # skipped while open
    l2.down = False
    clock.advance(5.1)  # the default breaker duration has passed: probe again
    assert cache.get_or_set("c", Counter("vc")) == "vc"
    assert not cache.distributed_cache_circuit_open
    assert l2.get("c") is not None


async def test_failing_l2_async(make_cache: MakeCache, clock: FakeClock) -> None:
    l2 = FlakyDistributedCache(clock)
    l2.down = True
    cache = make_cache(distributed_cache=l2)
    assert await cache.get_or_set_async("a", Counter("va")) == "va"
    assert cache.distributed_cache_circuit_open


def test_newer_l2_value_replaces_a_stale_local_one(make_cache: MakeCache, clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    options = EntryOptions(duration=10, distributed_cache_duration=100)
    first, second = (
        make_cache(options, distributed_cache=l2),
        make_cache(options, distributed_cache=l2),
    )
    second.get_or_set("k", Counter("old"))
    clock.advance(1)
    first.set("k", "new")
    clock.advance(10)  # second's L1 copy is stale; L2 holds first's newer value
    assert second.get_or_set("k", Counter("factory")) == "new"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=50)
@given(value=json_values, timestamp=st.floats(0, 2e9), ttl=st.floats(0, 1e6))
def test_entry_codec_round_trips_json_values(value: Any, timestamp: float, ttl: float) -> None:
    serializer = JsonSerializer()
    entry = DistributedEntry(value, timestamp, timestamp + ttl)
    decoded = decode_entry(serializer, encode_entry(serializer, entry), None, "k")
    assert decoded == entry


@settings(max_examples=50)
@given(
    sku=st.text(),
    price=st.floats(allow_nan=False, allow_infinity=False),
    tags=st.lists(st.text(), max_size=3),
)
def test_entry_codec_round_trips_attrs_classes(sku: str, price: float, tags: list[str]) -> None:
    serializer = JsonSerializer(types=[Product])
    entry = DistributedEntry(Product(sku, price, tuple(tags)), 1.0, 2.0)
    assert decode_entry(serializer, encode_entry(serializer, entry), None, "k") == entry


@settings(max_examples=50)
@given(data=st.binary())
def test_garbage_in_l2_never_raises(data: bytes) -> None:
    for blob in (data, b"HC1" + data):
        result = decode_entry(JsonSerializer(), blob, None, "k")
        assert result is None or isinstance(result, DistributedEntry)
