"""Hypothesis state machines: L1 with fail-safe against a small model of FusionCache's rules;
two caches sharing L2 and a backplane, with tags."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cache import (
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
    MemoryDistributedCache,
)

from .conftest import Counter, FakeClock

D, F, THROTTLE = 10.0, 30.0, 3.0
OPTIONS = EntryOptions(
    duration=D,
    is_fail_safe_enabled=True,
    fail_safe_max_duration=F,
    fail_safe_throttle_duration=THROTTLE,
)
keys = st.sampled_from(["a", "b", "c"])


class CacheModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cache = HybridCache(CacheOptions(default_entry_options=OPTIONS), clock=self.clock)
        # key -> [value, logical expiration, physical expiration]
        self.model: dict[str, list[object]] = {}

    def teardown(self) -> None:
        self.cache.close()

    def _live(self, key: str) -> list[object] | None:
        item = self.model.get(key)
        if item is None or float(item[2]) <= self.clock.now:  # type: ignore[arg-type]
            self.model.pop(key, None)
            return None
        return item

    @rule(key=keys, value=st.integers())
    def set(self, key: str, value: int) -> None:
        self.cache.set(key, value)
        self.model[key] = [value, self.clock.now + D, self.clock.now + F]

    @rule(key=keys)
    def remove(self, key: str) -> None:
        self.cache.remove(key)
        self.model.pop(key, None)

    @rule(key=keys)
    def expire(self, key: str) -> None:
        self.cache.expire(key)
        item = self._live(key)
        if item is not None:
            item[1] = min(float(item[1]), self.clock.now)  # type: ignore[arg-type]

    @rule(seconds=st.floats(0, 15))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(key=keys)
    def get_or_set_with_failing_factory(self, key: str) -> None:
        factory = Counter()
        factory.error = RuntimeError("down")
        item = self._live(key)
        if item is None:
            with pytest.raises(RuntimeError):
                self.cache.get_or_set(key, factory)
            return
        assert self.cache.get_or_set(key, factory) == item[0]
        if self.clock.now >= float(item[1]):  # type: ignore[arg-type]
            assert factory.calls == 1  # fail-safe: stale value, throttled
            item[1] = self.clock.now + THROTTLE
            item[2] = max(float(item[2]), self.clock.now + THROTTLE)  # type: ignore[arg-type]
        else:
            assert factory.calls == 0

    @invariant()
    def fresh_values_match(self) -> None:
        for key in ("a", "b", "c"):
            item = self._live(key)
            expected = item[0] if item is not None and self.clock.now < float(item[1]) else None  # type: ignore[arg-type]
            assert self.cache.get(key) == expected


CacheModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestCacheModel = CacheModel.TestCase


tags = st.lists(st.sampled_from(["t1", "t2"]), max_size=2, unique=True)
caches = st.sampled_from([0, 1])


class TwoCachesModel(RuleBasedStateMachine):
    """Two caches sharing L2 and a backplane, with tags: whichever cache is asked, a value is
    fresh exactly while the model says so (set, remove, expire, by tag, clear, time)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        hub = MemoryBackplaneHub()
        l2 = MemoryDistributedCache(clock=self.clock)
        options = CacheOptions(name="m", default_entry_options=OPTIONS)
        self.caches = [
            HybridCache(options, l2, MemoryBackplane(hub), clock=self.clock) for _ in range(2)
        ]
        # key -> [value, tags, fresh until]
        self.model: dict[str, list[Any]] = {}

    def teardown(self) -> None:
        for cache in self.caches:
            cache.close()

    def _tick(self) -> None:  # every change happens at its own instant
        self.clock.advance(0.001)

    @rule(which=caches, key=keys, value=st.integers(), with_tags=tags)
    def set(self, which: int, key: str, value: int, with_tags: list[str]) -> None:
        self._tick()
        self.caches[which].set(key, value, tags=with_tags)
        self.model[key] = [value, set(with_tags), self.clock.now + D]

    @rule(which=caches, key=keys)
    def remove(self, which: int, key: str) -> None:
        self._tick()
        self.caches[which].remove(key)
        self.model.pop(key, None)

    @rule(which=caches, key=keys)
    def expire(self, which: int, key: str) -> None:
        self._tick()
        self.caches[which].expire(key)
        if key in self.model:
            self.model[key][2] = min(self.model[key][2], self.clock.now)

    @rule(which=caches, tag=st.sampled_from(["t1", "t2"]))
    def remove_by_tag(self, which: int, tag: str) -> None:
        self._tick()
        self.caches[which].remove_by_tag(tag)
        for key in [k for k, item in self.model.items() if tag in item[1]]:
            del self.model[key]

    @rule(which=caches, tag=st.sampled_from(["t1", "t2"]))
    def expire_by_tag(self, which: int, tag: str) -> None:
        self._tick()
        self.caches[which].expire_by_tag(tag)
        for item in self.model.values():
            if tag in item[1]:
                item[2] = min(item[2], self.clock.now)

    @rule(which=caches, allow_fail_safe=st.booleans())
    def clear(self, which: int, allow_fail_safe: bool) -> None:
        self._tick()
        self.caches[which].clear(allow_fail_safe)
        if allow_fail_safe:
            for item in self.model.values():
                item[2] = min(item[2], self.clock.now)
        else:
            self.model.clear()

    @rule(seconds=st.floats(0, 15))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def both_caches_serve_what_the_model_says(self) -> None:
        for key in ("a", "b", "c"):
            item = self.model.get(key)
            expected = item[0] if item is not None and self.clock.now < item[2] else None
            for cache in self.caches:
                assert cache.get(key) == expected, (key, cache.instance_id)


TwoCachesModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestTwoCachesModel = TwoCachesModel.TestCase
