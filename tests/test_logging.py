"""Logging at INFO: a few lines per start and stop, none per message, one warning per outage."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cache import CacheOptions, HybridCache, MemoryDistributedCache
from cache.eventbroker_backplane import EVENT_ID as BACKPLANE_EVENT_ID
from cache.eventbroker_backplane import RAISER_ID as BACKPLANE_RAISER_ID
from cache.eventbroker_backplane import BackplaneWireMessage, EventBrokerBackplane
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
)
from jobs import CacheInvalidator

SECRET = "test-secret-0123456789"
LIBRARY = ("eventbroker", "cache", "jobs")


def _library_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= level and r.name.split(".")[0] in LIBRARY
    ]


class _Farm:
    def __init__(self, hub: InMemoryHub) -> None:
        self.hub = hub
        self.brokers: list[EventBroker] = []
        self.caches: list[HybridCache] = []

    def node(self) -> tuple[EventRegistry, HybridCache]:
        broker = EventBroker(
            InMemoryTransport(self.hub), EventBrokerOptions(secret=SECRET, application_name="log")
        )
        registry = EventRegistry(broker)
        broker.start()
        cache = HybridCache(
            CacheOptions(name="log"), backplane=EventBrokerBackplane(registry, broker)
        )
        self.brokers.append(broker)
        self.caches.append(cache)
        return registry, cache

    def close(self) -> None:
        for cache in self.caches:
            cache.close()
        for broker in self.brokers:
            broker.stop()


@pytest.fixture
def farm() -> Iterator[_Farm]:
    farm = _Farm(InMemoryHub())
    yield farm
    farm.close()


def _normal_run(messages: int) -> None:
    farm = _Farm(InMemoryHub())
    try:
        _, web_1 = farm.node()
        _, web_2 = farm.node()
        job_registry, _ = farm.node()
        invalidator = CacheInvalidator.for_registry(job_registry)
        for i in range(messages):
            web_1.set(f"k{i}", i)
            web_2.get_or_set(f"k{i}", lambda i=i: i)
            web_1.expire(f"k{i}")
            web_2.remove(f"k{i}")
            invalidator.invalidate([f"k{i}"])
        farm.hub.drain()
    finally:
        farm.close()


def test_a_normal_run_logs_the_same_few_lines_at_info_whatever_the_traffic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    _normal_run(3)
    few = _library_records(caplog, logging.INFO)
    caplog.clear()
    _normal_run(40)
    many = _library_records(caplog, logging.INFO)
    assert len(many) == len(few), many  # nothing per message
    assert len(many) <= 3 * 3, many  # a few lines per instance's start and stop


def test_a_broker_outage_warns_once_not_once_per_write(
    farm: _Farm, caplog: pytest.LogCaptureFixture
) -> None:
    _, cache = farm.node()
    farm.node()
    caplog.set_level(logging.INFO)
    farm.hub.go_down()
    for i in range(20):
        cache.set(f"k{i}", i)
    warnings = [
        m for m in _library_records(caplog, logging.WARNING) if "queued for auto-recovery" in m
    ]
    assert len(warnings) == 1, warnings
    assert cache.health().reasons  # the backlog shows in health meanwhile


def test_messages_from_a_newer_peer_warn_once_per_unknown_action(
    farm: _Farm, caplog: pytest.LogCaptureFixture
) -> None:
    farm.node()  # a cache listening
    peer, _ = farm.node()
    event = peer.get(BACKPLANE_EVENT_ID)
    caplog.set_level(logging.INFO)
    for i in range(10):
        event.raise_(BACKPLANE_RAISER_ID, BackplaneWireMessage(f"k{i}", "entry_teleport", "peer"))
    farm.hub.drain()
    warned = [m for m in _library_records(caplog, logging.WARNING) if "entry_teleport" in m]
    assert len(warned) == 1, warned


def test_debug_traces_one_cache_call_and_its_event_step_by_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At DEBUG, one `get_or_set` miss reads as: L1, L2, factory, store, backplane; and its
    backplane event as: send, receive and verify, dispatch, applied by the other cache."""
    hub = InMemoryHub()
    l2 = MemoryDistributedCache()
    nodes = []
    for _ in range(2):
        broker = EventBroker(
            InMemoryTransport(hub), EventBrokerOptions(secret=SECRET, application_name="log")
        )
        registry = EventRegistry(broker)
        broker.start()
        nodes.append(
            (
                broker,
                HybridCache(CacheOptions(name="log"), l2, EventBrokerBackplane(registry, broker)),
            )
        )
    try:
        (_, web_1), (_, web_2) = nodes
        web_2.set("other", 1)  # the second instance has an entry to expire later
        hub.drain()
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        web_1.get_or_set("product:42", lambda: {"sku": "A-1"})
        hub.drain()
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.DEBUG and r.name.split(".")[0] in LIBRARY
        ]
        sender = [
            "'product:42' not fresh in L1",
            "'product:42' not fresh in L2",
            "calling the factory of 'product:42'",
            "the factory of 'product:42' returned a value",
            "storing 'product:42' (L1 and L2)",
            "send: event a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d",
            "told the other instances ENTRY_SET for 'product:42'",
        ]
        receiver = [
            "send: event",
            "receive: message",
            "dispatch: message",
            "backplane message ENTRY_SET for 'product:42'",
        ]
        for steps in (sender, receiver):  # each instance's steps in order
            found = [
                next((i for i, line in enumerate(lines) if step in line), -1) for step in steps
            ]
            assert -1 not in found, (dict(zip(steps, found, strict=True)), lines)
            assert found == sorted(found), lines
        message_id = next(line for line in lines if line.startswith("send:")).split()[-3]
        assert any(line.startswith(f"receive: message {message_id} verified") for line in lines)
    finally:
        for broker, cache in nodes:
            cache.close()
            broker.stop()
