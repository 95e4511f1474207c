"""Hypothesis state machine: L1 with fail-safe against a small model of FusionCache's rules."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cache import CacheOptions, EntryOptions, HybridCache

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
