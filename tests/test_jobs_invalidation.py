"""CacheInvalidator: a job with no cache of its own makes keys stale on every instance."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cache import (
    BackplaneError,
    BackplaneMessage,
    CacheOptions,
    EntryOptions,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
)
from cache.eventbroker_backplane import EventBrokerBackplane
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
    PublishError,
)
from jobs import CacheInvalidator, InvalidationError

FAIL_SAFE = EntryOptions(duration=60, is_fail_safe_enabled=True)


class Source:
    """A data source whose value changes and which can fail."""

    def __init__(self) -> None:
        self.value = "v1"
        self.failing = False
        self.calls = 0

    def load(self) -> str:
        self.calls += 1
        if self.failing:
            raise ConnectionError("source down")
        return self.value


def caches(hub: MemoryBackplaneHub, n: int) -> list[HybridCache]:
    return [
        HybridCache(CacheOptions(name="shop"), backplane=MemoryBackplane(hub)) for _ in range(n)
    ]


def test_expire_reaches_every_instance_and_keeps_value_for_fail_safe() -> None:
    hub = MemoryBackplaneHub()
    web, source = caches(hub, 2), Source()
    assert [c.get_or_set("p:1", source.load, FAIL_SAFE) for c in web] == ["v1", "v1"]
    source.value = "v2"
    invalidator = CacheInvalidator(MemoryBackplane(hub))  # the job: no cache, no source id
    assert invalidator.invalidate(["p:1", "p:1", "p:unknown"]) == 2  # de-duplicated
    assert [c.get_or_set("p:1", source.load, FAIL_SAFE) for c in web] == ["v2", "v2"]
    source.value, source.failing = "v3", True
    invalidator.invalidate(["p:1"])
    assert [c.get_or_set("p:1", source.load, FAIL_SAFE) for c in web] == ["v2", "v2"]


def test_remove_on_request_drops_the_value() -> None:
    hub = MemoryBackplaneHub()
    [web], source = caches(hub, 1), Source()
    web.get_or_set("p:1", source.load, FAIL_SAFE)
    source.failing = True
    CacheInvalidator(MemoryBackplane(hub)).invalidate(["p:1"], remove=True)
    with pytest.raises(ConnectionError):
        web.get_or_set("p:1", source.load, FAIL_SAFE)  # nothing left to fall back on


def test_batch_sends_after_a_clean_block_only() -> None:
    hub = MemoryBackplaneHub()
    [web], source = caches(hub, 1), Source()
    web.get_or_set("p:1", source.load, FAIL_SAFE)
    invalidator = CacheInvalidator(MemoryBackplane(hub))
    source.value = "v2"
    with pytest.raises(RuntimeError), invalidator.batch() as batch:
        batch.add("p:1")
        raise RuntimeError("update rolled back")
    assert web.get_or_set("p:1", source.load, FAIL_SAFE) == "v1"
    with invalidator.batch() as batch:
        batch.add("p:1", "p:2")
    assert batch.sent == 2 and web.get_or_set("p:1", source.load, FAIL_SAFE) == "v2"


class Refusing:
    """A backplane whose transport pushes back `refusals` times (a full outgoing queue)."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.sent: list[str] = []

    def publish(self, message: BackplaneMessage, options: EntryOptions) -> None:
        if self.refusals:
            self.refusals -= 1
            if self.refusals % 2:
                raise PublishError("outgoing queue full")
            raise BackplaneError("event broker cannot publish backplane message")
        self.sent.append(message.cache_key)


def test_push_back_is_retried_and_a_deadline_names_the_unsent_keys() -> None:
    backplane = Refusing(3)
    assert CacheInvalidator(backplane).invalidate(["a", "b"]) == 2  # type: ignore[arg-type]
    assert backplane.sent == ["a", "b"]
    stuck = Refusing(10**6)
    with pytest.raises(InvalidationError, match="published 0 of 2") as info:
        CacheInvalidator(stuck, publish_timeout=0.05).invalidate(["a", "b"])  # type: ignore[arg-type]
    assert info.value.keys == ["a", "b"]
    with pytest.raises(TypeError, match="non-empty str"):
        CacheInvalidator(backplane).invalidate(["ok", ""])  # type: ignore[arg-type]


class Web:
    """A web instance over the in-memory hub: broker, cache, the envelopes it received."""

    def __init__(self, hub: InMemoryHub) -> None:
        self.broker = EventBroker(InMemoryTransport(hub), EventBrokerOptions(secret=SECRET))
        self.broker.start()
        self.backplane = EventBrokerBackplane(EventRegistry(self.broker), self.broker)
        self.cache = HybridCache(CacheOptions(name="shop"), backplane=self.backplane)
        self.envelopes = 0
        self.broker.event_received.subscribe(lambda _: self._count())

    def _count(self) -> None:
        self.envelopes += 1

    def close(self) -> None:
        self.cache.close()
        self.broker.stop()


SECRET = "test-secret-0123456789"


class RefusingAfter(EventBrokerBackplane):
    """Sends `ok` envelopes, then the transport pushes back `refusals` times."""

    def __init__(self, registry: EventRegistry, ok: int, refusals: int) -> None:
        super().__init__(registry, registry.broker)
        self.ok, self.refusals = ok, refusals

    def publish_envelope(self, messages: Sequence[BackplaneMessage]) -> None:
        if self.ok <= 0 and self.refusals > 0:
            self.refusals -= 1
            raise BackplaneError("outgoing queue full")
        self.ok -= 1
        super().publish_envelope(messages)


def test_for_registry_takes_the_pack_limits_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = InMemoryHub()
    web = Web(hub)
    job = EventBroker(InMemoryTransport(hub), EventBrokerOptions(secret=SECRET))
    try:
        job.start()
        registry = EventRegistry(job)
        monkeypatch.setenv("CACHE_BACKPLANE_COALESCE_MAX_MESSAGES", "40")
        invalidator = CacheInvalidator.for_registry(registry)
        hub.drain()
        before = web.envelopes
        assert invalidator.invalidate([f"p:{i}" for i in range(100)]) == 100
        hub.drain()
        assert web.envelopes - before == 3  # 40 a pack
        monkeypatch.setenv("CACHE_BACKPLANE_COALESCE_WINDOW", "0")
        invalidator = CacheInvalidator.for_registry(registry)
        before = web.envelopes
        assert invalidator.invalidate([f"q:{i}" for i in range(5)]) == 5
        hub.drain()
        assert web.envelopes - before == 5  # packs off: one envelope a key
        monkeypatch.setenv("CACHE_BACKPLANE_COALESCE_WINDOW", "soon")
        with pytest.raises(ValueError, match="CACHE_BACKPLANE_COALESCE_WINDOW"):
            CacheInvalidator.for_registry(registry)
    finally:
        job.stop()
        web.close()


def test_over_the_event_broker_keys_travel_in_packs() -> None:
    hub = InMemoryHub()
    web = [Web(hub), Web(hub)]
    job = EventBroker(InMemoryTransport(hub), EventBrokerOptions(secret=SECRET))
    keys = [f"p:{i}" for i in range(250)]
    try:
        job.start()
        for node in web:
            for key in keys:
                node.cache.get_or_set(key, lambda: "v1", FAIL_SAFE)
            node.backplane.flush()
        hub.drain()
        before = [node.envelopes for node in web]
        registry = EventRegistry(job)
        invalidator = CacheInvalidator.for_registry(registry)
        assert invalidator.invalidate(keys) == 250
        hub.drain()
        assert [n.envelopes - b for n, b in zip(web, before, strict=True)] == [3, 3]  # 100 a pack
        for node in web:
            assert not any(node.cache.try_get(key).has_value for key in keys)
            assert node.cache.get_or_set("p:7", lambda: "v2", FAIL_SAFE) == "v2"
        # push back is retried per envelope; at the deadline the error names the unsent keys
        assert CacheInvalidator(RefusingAfter(registry, 1, 3)).invalidate(keys) == 250
        stuck = CacheInvalidator(RefusingAfter(registry, 1, 10**6), publish_timeout=0.05)
        with pytest.raises(InvalidationError, match="published 100 of 250") as info:
            stuck.invalidate(keys)
        assert info.value.keys == keys[100:]
    finally:
        job.stop()
        for node in web:
            node.close()
