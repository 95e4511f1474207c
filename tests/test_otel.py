"""OpenTelemetry: metrics and traces of brokers, caches and jobs, read back from the SDK's
in-memory metric reader and span exporter (one set of providers per instance, as separate
processes would have), on the in-memory hub and over the loopback Service Bus."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind

from cache import (
    CacheOptions,
    EntryOptions,
    FactoryTimeoutError,
    HybridCache,
    MemoryBackplane,
    MemoryBackplaneHub,
)
from cache.eventbroker_backplane import EventBrokerBackplane
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventNotification,
    EventRaiseOption,
    EventRegistry,
    HubFaults,
    InMemoryHub,
    InMemoryTransport,
    TransportMessage,
)
from eventbroker.contrib.otel import Instrumentation, instrument
from eventbroker.servicebus import ServiceBusTransport
from eventbroker.testing import LoopbackServiceBus
from jobs import CacheInvalidator, JobContext, JobScheduler, ScheduledJob

from ._support import FakeClock, wait_until
from .cache.test_distributed import FlakyDistributedCache
from .servicebus_support import TOPIC, sb_options

SECRET = "otel-secret-0123456789abcdef"
EVENT = uuid.UUID("0f7e1000-0000-4000-8000-000000000001")
RAISER = uuid.UUID("0f7e1000-0000-4000-8000-000000000002")
NOW = 1_800_000_000.0


class Telemetry:
    """One instance's OpenTelemetry SDK: providers with an in-memory reader and exporter."""

    def __init__(self, *, sampler: Any = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider(**({"sampler": sampler} if sampler else {}))
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.instrumentations: list[Instrumentation] = []

    def instrument(self, **components: Any) -> Instrumentation:
        instrumentation = instrument(
            meter_provider=self.meters, tracer_provider=self.tracers, **components
        )
        self.instrumentations.append(instrumentation)
        return instrumentation

    def tracer(self) -> trace.Tracer:
        return self.tracers.get_tracer("test")

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            point
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def value(self, name: str, **attributes: str) -> Any:
        """The one data point of `name` whose attributes include `attributes`."""
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        matching = [
            p for p in self.points(name) if wanted.items() <= dict(p.attributes or {}).items()
        ]
        assert len(matching) == 1, f"{name} {wanted}: {[p.attributes for p in matching]}"
        point = matching[0]
        return point if hasattr(point, "bucket_counts") else point.value

    def close(self) -> None:
        for instrumentation in self.instrumentations:
            instrumentation.uninstrument()
        self.tracers.shutdown()
        self.meters.shutdown()


@pytest.fixture
def telemetry() -> Iterator[list[Telemetry]]:
    made: list[Telemetry] = []
    yield made
    for t in made:
        t.close()


def _node(
    hub: InMemoryHub, telemetry: list[Telemetry], clock: FakeClock | None = None, **options: Any
) -> tuple[EventBroker, EventRegistry, Telemetry]:
    broker = EventBroker(
        InMemoryTransport(hub),
        EventBrokerOptions(secret=SECRET, application_name="shop"),
        **({"clock": clock} if clock else {}),
    )
    t = Telemetry(**options)
    telemetry.append(t)
    t.instrument(broker=broker)
    return broker, EventRegistry(broker), t


def _current() -> trace.SpanContext:
    return trace.get_current_span().get_span_context()


# -- traces across instances ---------------------------------------------------------------------


def test_a_traced_raise_is_one_trace_on_every_receiving_instance(
    telemetry: list[Telemetry],
) -> None:
    hub = InMemoryHub()
    (a, ra, ta), (b, rb, tb), (c, _, tc) = (_node(hub, telemetry) for _ in range(3))
    seen: dict[str, trace.SpanContext] = {}
    inner = threading.Event()

    def plain(n: EventNotification) -> None:
        seen["plain"] = _current()
        with tb.tracer().start_as_current_span("work in the handler"):
            inner.set()

    async def coroutine(n: EventNotification) -> None:
        seen["async"] = _current()

    rb.get(EVENT).raised.subscribe(plain)
    rb.get(EVENT).raised.subscribe(coroutine)
    with a, b, c:
        with ta.tracer().start_as_current_span("request") as request:
            ra.get(EVENT).raise_(RAISER, {"sku": "A-1"})
        hub.drain()

    [producer] = ta.spans("send shop")
    assert producer.kind is SpanKind.PRODUCER
    assert (
        producer.parent is not None
        and producer.parent.span_id == request.get_span_context().span_id
    )
    trace_id = request.get_span_context().trace_id
    assert producer.context.trace_id == trace_id
    attributes = dict(producer.attributes or {})
    assert attributes["messaging.system"] == "eventbroker.memory"
    assert attributes["messaging.destination.name"] == "shop"
    assert attributes["messaging.operation.type"] == "send"
    assert attributes["eventbroker.event.id"] == str(EVENT)
    message_id = attributes["messaging.message.id"]
    for t in (tb, tc):
        [consumer] = t.spans("process shop")
        assert consumer.kind is SpanKind.CONSUMER
        assert consumer.context.trace_id == trace_id
        assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
        assert consumer.parent.is_remote
        assert dict(consumer.attributes or {})["messaging.message.id"] == message_id
        assert dict(consumer.attributes or {})["eventbroker.source.instance.id"] == a.instance_id
    # the handlers ran under b's consumer span; what they trace is its child
    [consumer_b] = tb.spans("process shop")
    assert seen["plain"].span_id == seen["async"].span_id == consumer_b.context.span_id
    [work] = tb.spans("work in the handler")
    assert work.parent is not None and work.parent.span_id == consumer_b.context.span_id
    assert consumer_b.end_time is not None and work.end_time is not None
    assert consumer_b.end_time >= work.end_time  # the consumer span covers its handlers


def test_a_raise_outside_any_trace_carries_none_unless_asked(telemetry: list[Telemetry]) -> None:
    hub = InMemoryHub()
    (a, ra, ta), (b, rb, tb) = (_node(hub, telemetry) for _ in range(2))
    seen: list[trace.SpanContext] = []
    rb.get(EVENT).raised.subscribe(lambda n: seen.append(_current()))
    with a, b:
        ra.get(EVENT).raise_(RAISER, 1)
        hub.drain()
        assert ta.spans() == [] and tb.spans() == [] and not seen[0].is_valid
        ta.instrument(broker=a, trace_new_raises=True)  # replaces the first instrumentation
        ra.get(EVENT).raise_(RAISER, 2)
        hub.drain()
    [producer] = ta.spans("send shop")
    [consumer] = tb.spans("process shop")
    assert producer.parent is None  # a new trace
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert seen[1].trace_id == producer.context.trace_id


def test_an_unsampled_trace_travels_without_spans(telemetry: list[Telemetry]) -> None:
    hub = InMemoryHub()
    (a, ra, ta), (b, rb, tb) = _node(hub, telemetry, sampler=ALWAYS_OFF), _node(hub, telemetry)
    seen: list[trace.SpanContext] = []
    rb.get(EVENT).raised.subscribe(lambda n: seen.append(_current()))
    with a, b:
        with ta.tracer().start_as_current_span("unsampled request") as request:
            ra.get(EVENT).raise_(RAISER, 1)
        hub.drain()
    assert ta.spans() == [] and tb.spans() == []
    # the handlers still see the caller's trace (unsampled): what they trace stays unsampled
    assert seen[0].trace_id == request.get_span_context().trace_id
    assert not seen[0].trace_flags.sampled


def test_tracing_that_fails_never_stops_an_event(
    telemetry: list[Telemetry], caplog: pytest.LogCaptureFixture
) -> None:
    hub = InMemoryHub()
    (a, ra, ta), (b, rb, _) = (_node(hub, telemetry) for _ in range(2))
    got: list[object] = []
    rb.get(EVENT).raised.subscribe(lambda n: got.append(n.param))

    class Broken:
        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter bug")

    for broker in (a, b):
        assert broker._telemetry is not None
        broker._telemetry._tracer = Broken()  # type: ignore[attr-defined]
    with a, b, caplog.at_level(logging.WARNING, logger="eventbroker.otel"):
        with ta.tracer().start_as_current_span("request"):
            ra.get(EVENT).raise_(RAISER, "still delivered")
        hub.drain()
        wait_until(lambda: got == ["still delivered"])
    assert "tracing a raise failed" in caplog.text
    assert b.stats.rejected == {}


# -- broker metrics ------------------------------------------------------------------------------


def test_broker_metrics_on_the_hub(telemetry: list[Telemetry]) -> None:
    hub = InMemoryHub()
    sender_clock, receiver_clock = FakeClock(NOW), FakeClock(NOW + 0.25)
    a, ra, ta = _node(hub, telemetry, sender_clock)
    b, rb, tb = _node(hub, telemetry, receiver_clock)
    rb.get(EVENT).raised.subscribe(lambda n: None)
    with a, b:
        for n in range(3):
            ra.get(EVENT).raise_(RAISER, n)
        hub.drain()
        hub.faults = HubFaults(duplicate=1.0, seed=1)
        ra.get(EVENT).raise_(RAISER, "twice")
        hub.drain()
        hub.faults = HubFaults(drop=1.0, seed=1)
        ra.get(EVENT).raise_(RAISER, "lost")
        hub.drain()
        hub.faults = HubFaults()
        ra.get(EVENT).raise_(RAISER, "after the lost one")
        hub.drain()
        receiver_clock.advance(10)  # past missed_event_timeout: the lost one is a gap
        assert len(b.check_missed_events()) == 1
        wire = a.transport
        assert isinstance(wire, InMemoryTransport)
        hub._publish(wire, TransportMessage(b'{"sig":"garbage"}', "x", "attacker"))
        hub.drain()
        hub.go_down()
        hub.come_up()
        hub.drain()

        base = {"messaging__system": "eventbroker.memory", "messaging__destination__name": "shop"}
        assert ta.value("eventbroker.messages.published", **base) == 6
        assert tb.value("eventbroker.messages.published", **base) == 0
        assert tb.value("eventbroker.messages.received", **base) == 7  # 5 + a duplicate + garbage
        assert tb.value("eventbroker.messages.dispatched", **base) == 5
        assert tb.value("eventbroker.messages.duplicates", **base) == 1
        assert (
            tb.value("eventbroker.messages.refused", eventbroker__refusal__cause="malformed") == 1
        )
        assert tb.value("eventbroker.messages.refused", eventbroker__refusal__cause="replay") == 0
        assert tb.value("eventbroker.gaps") == 1
        assert tb.value("eventbroker.reconnects") == 1
        # b started after a's hello: a hears b's, b knows a from its events
        assert ta.value("eventbroker.heartbeats", messaging__operation__type="receive") >= 1
        assert tb.value("eventbroker.heartbeats", messaging__operation__type="send") >= 1
        assert tb.value("eventbroker.instances") == 1
        assert tb.value("eventbroker.publish_queue.depth") == 0
        lag = tb.value("eventbroker.delivery.lag", eventbroker__source__application="shop")
        assert lag.count == 5  # the duplicate and the lost one are not deliveries
        assert lag.sum == pytest.approx(5 * 0.25)
        assert lag.explicit_bounds[0] == 0.005


def test_the_lag_histogram_samples_above_its_rate(telemetry: list[Telemetry]) -> None:
    hub = InMemoryHub()
    clock = FakeClock(NOW)
    a, ra, _ = _node(hub, telemetry, clock)
    b = EventBroker(
        InMemoryTransport(hub),
        EventBrokerOptions(secret=SECRET, application_name="shop"),
        clock=clock,
    )
    tb = Telemetry()
    telemetry.append(tb)
    tb.instrument(broker=b, lag_samples_per_second=2)
    with a, b:
        for n in range(5):
            ra.get(EVENT).raise_(RAISER, n)
        hub.drain()
        clock.advance(1)
        ra.get(EVENT).raise_(RAISER, "next second")
        hub.drain()
    assert tb.value("eventbroker.messages.dispatched") == 6
    assert tb.value("eventbroker.delivery.lag").count == 3  # 2 in the first second, 1 after


def test_uninstrument_stops_spans_and_lag(telemetry: list[Telemetry]) -> None:
    hub = InMemoryHub()
    (a, ra, ta), (b, _, tb) = (_node(hub, telemetry) for _ in range(2))
    with a, b:
        for t in (ta, tb):
            t.instrumentations[0].uninstrument()
        assert a._telemetry is None and b._telemetry is None
        with ta.tracer().start_as_current_span("request"):
            ra.get(EVENT).raise_(RAISER, 1)
        hub.drain()
    assert ta.spans("send shop") == [] and tb.spans("process shop") == []
    assert tb.points("eventbroker.messages.dispatched") == []
    assert tb.points("eventbroker.delivery.lag") == []


# -- over the loopback Service Bus -----------------------------------------------------------------


@pytest.fixture
def bus() -> Iterator[LoopbackServiceBus]:
    broker = LoopbackServiceBus()
    try:
        broker.start()
    except Exception as exc:
        pytest.fail(f"cannot start the loopback Service Bus broker: {exc!r}")
    try:
        yield broker
    finally:
        broker.stop()


def test_one_trace_and_the_metrics_over_the_loopback_service_bus(
    bus: LoopbackServiceBus, telemetry: list[Telemetry]
) -> None:
    nodes = []
    for _ in range(2):
        broker = EventBroker(
            ServiceBusTransport(sb_options(bus)),
            EventBrokerOptions(secret=SECRET, application_name="shop"),
        )
        t = Telemetry()
        telemetry.append(t)
        t.instrument(broker=broker)
        nodes.append((broker, EventRegistry(broker), t))
    (_, ra, ta), (_, rb, tb) = nodes
    arrived = threading.Event()
    seen: list[trace.SpanContext] = []

    def on_event(n: EventNotification) -> None:
        seen.append(_current())
        arrived.set()

    rb.get(EVENT).raised.subscribe(on_event)
    threads = [threading.Thread(target=broker.start) for broker, _, _ in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        with ta.tracer().start_as_current_span("job run") as root:
            ra.get(EVENT).raise_(RAISER, {"sku": "A-1"}, EventRaiseOption.RAISE_BROADCAST)
        assert arrived.wait(30)
        wait_until(lambda: len(tb.spans("process " + TOPIC)) == 1, 30)
        [producer] = ta.spans("send " + TOPIC)
        [consumer] = tb.spans("process " + TOPIC)
        assert producer.context.trace_id == consumer.context.trace_id
        assert producer.context.trace_id == root.get_span_context().trace_id
        assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
        assert seen[0].span_id == consumer.context.span_id
        base = {"messaging__system": "servicebus", "messaging__destination__name": TOPIC}
        assert ta.value("eventbroker.messages.published", **base) == 1
        assert tb.value("eventbroker.messages.dispatched", **base) == 1
        assert tb.value("eventbroker.delivery.lag", **base).count == 1
        wait_until(lambda: ta.value("eventbroker.publish_queue.depth", **base) == 0, 30)
    finally:
        for broker, _, _ in nodes:
            broker.stop()


# -- a job run's trace reaches the caches of every web instance ------------------------------------


class InvalidatingJob(ScheduledJob):
    id = uuid.UUID("0f7e1000-0000-4000-8000-0000000000a1")
    name = "Import"

    def __init__(self, registry: EventRegistry) -> None:
        self.invalidator = CacheInvalidator.for_registry(registry)

    def execute(self, ctx: JobContext) -> str:
        self.invalidator.invalidate(["product:1", "product:2"])
        return "2 products changed"


def test_a_job_run_span_leads_to_the_invalidation_on_each_web_instance(
    telemetry: list[Telemetry], tmp_path: Path
) -> None:
    hub = InMemoryHub()
    jobs_broker, jobs_registry, tj = _node(hub, telemetry)
    scheduler = JobScheduler(
        [InvalidatingJob(jobs_registry)], store=tmp_path / "jobs.sqlite3", registry=jobs_registry
    )
    tj.instrument(broker=jobs_broker, scheduler=scheduler)
    web = []
    backplanes = []
    for _ in range(2):
        broker, registry, t = _node(hub, telemetry)
        backplanes.append(EventBrokerBackplane(registry, broker))
        cache = HybridCache(CacheOptions(name="shop"), backplane=backplanes[-1])
        t.instrument(broker=broker, caches=[cache])
        web.append((broker, cache, t))
    options = EntryOptions(duration=60, is_fail_safe_enabled=True)
    with jobs_broker, web[0][0], web[1][0]:
        for _, cache, _ in web:
            cache.get_or_set("product:1", lambda: "old", options)
            cache.get_or_set("product:2", lambda: "old", options)
        scheduler.run_now(InvalidatingJob.id)
        [run] = scheduler.run_pending()
        for backplane in backplanes:  # the loads' set messages (a pack each)
            backplane.flush()
        hub.drain()
        assert run.outcome.value == "succeeded"

        [job_span] = tj.spans("job Import")
        assert job_span.parent is None and job_span.kind is SpanKind.INTERNAL
        assert dict(job_span.attributes or {})["jobs.run.outcome"] == "succeeded"
        producers = tj.spans("send shop")
        assert len(producers) == 1  # the two keys in one pack
        assert all(p.parent and p.parent.span_id == job_span.context.span_id for p in producers)
        for _, cache, t in web:
            consumers = t.spans("process shop")
            assert len(consumers) == 1
            assert {c.context.trace_id for c in consumers} == {job_span.context.trace_id}
            assert {c.parent.span_id for c in consumers if c.parent} == {
                p.context.span_id for p in producers
            }
            # the job's two, and the other web instance's two loads (untraced: no trace then)
            assert cache.stats.backplane_received == 4
            assert t.value("cache.backplane.messages", messaging__operation__type="receive") == 4
        assert [cache.get_or_set("product:1", lambda: "new", options) for _, cache, _ in web] == [
            "new",
            "new",
        ]
        assert tj.value("jobs.runs", jobs__job__name="Import", jobs__run__outcome="succeeded") == 1
        assert tj.value("jobs.run.duration", jobs__job__name="Import").count == 1
    for _, cache, _ in web:
        cache.close()


def test_a_failed_run_is_an_error_span(telemetry: list[Telemetry], tmp_path: Path) -> None:
    class Failing(ScheduledJob):
        id = uuid.UUID("0f7e1000-0000-4000-8000-0000000000a2")
        name = "Failing"

        def execute(self, ctx: JobContext) -> str:
            raise ValueError("feed down")

    t = Telemetry()
    telemetry.append(t)
    scheduler = JobScheduler([Failing()], store=tmp_path / "jobs.sqlite3")
    t.instrument(scheduler=scheduler)
    scheduler.run_now(Failing.id)
    scheduler.run_pending()
    [span] = t.spans("job Failing")
    assert span.status.status_code is trace.StatusCode.ERROR and "feed down" in (
        span.status.description or ""
    )
    assert t.value("jobs.runs", jobs__run__outcome="failed") == 1


def test_a_lost_lease_is_counted(telemetry: list[Telemetry], tmp_path: Path) -> None:
    from jobs import SqliteJobStore

    from ._jobs_helpers import BlockingJob
    from .test_jobs_health import T0, ManualClock, make

    clock = ManualClock(T0)
    job_a, job_b = BlockingJob(), BlockingJob()
    job_b.release.set()
    a = make(SqliteJobStore(tmp_path / "farm.sqlite3"), job_a, clock, "a")
    b = make(SqliteJobStore(tmp_path / "farm.sqlite3"), job_b, clock, "b")
    t = Telemetry()
    telemetry.append(t)
    t.instrument(scheduler=a)
    done = threading.Event()
    a.on_finished(lambda run: done.set())
    a.run_now(BlockingJob.id)
    a.run_pending(wait=False)
    assert job_a.started.wait(10)
    clock.advance(31)  # a froze for longer than its lease: b reaps it
    assert b.run_pending() == []
    a.run_pending(wait=False)  # a wakes up: its renewal fails
    assert done.wait(10)
    assert t.value("jobs.lease.losses", jobs__job__name="Blocking") == 1
    assert t.value("jobs.runs", jobs__run__outcome="stopped") == 1


# -- cache metrics and spans ---------------------------------------------------------------------


def test_cache_metrics_read_the_cache_statistics(telemetry: list[Telemetry]) -> None:
    clock = FakeClock(NOW)
    hub = MemoryBackplaneHub()
    l2 = FlakyDistributedCache(clock)  # type: ignore[arg-type]
    options = CacheOptions(
        name="products",
        default_entry_options=EntryOptions(
            duration=10, is_fail_safe_enabled=True, factory_hard_timeout=5
        ),
    )
    cache = HybridCache(options, distributed_cache=l2, backplane=MemoryBackplane(hub), clock=clock)
    other = HybridCache(options, distributed_cache=l2, backplane=MemoryBackplane(hub), clock=clock)
    t = Telemetry()
    telemetry.append(t)
    t.instrument(caches=[cache])
    try:
        other.set("k", "from another instance")
        assert cache.get_or_set("k", lambda: "db") == "from another instance"  # L1 miss, L2 hit
        assert cache.get_or_set("k", lambda: "db") == "from another instance"  # L1 hit
        assert cache.get_or_set("new", lambda: "db") == "db"  # L1 and L2 miss, factory
        clock.advance(11)

        def failing() -> str:
            raise ConnectionError("db down")

        assert cache.get_or_set("new", failing) == "db"  # fail-safe
        l2.down = True
        hub.connected = False
        cache.set("x", 1)  # L2 write fails, backplane publish fails (queued)
        name = {"cache__name": "products"}
        assert t.value("cache.hits", cache__level="l1", **name) == 1
        assert t.value("cache.hits", cache__level="l2", **name) == 1
        assert t.value("cache.misses", cache__level="l1", **name) == 3
        assert t.value("cache.misses", cache__level="l2", **name) == 2
        assert t.value("cache.stale_hits", **name) == 1
        assert t.value("cache.fail_safe.activations", **name) == 1
        assert t.value("cache.factory.calls", **name) == 2
        assert t.value("cache.factory.errors", **name) == 1
        assert t.value("cache.factory.timeouts", **name) == 0
        assert t.value("cache.backplane.messages", messaging__operation__type="send") == 1
        assert t.value("cache.backplane.messages", messaging__operation__type="receive") == 1
        assert t.value("cache.backplane.errors", **name) == 1
        assert t.value("cache.l2.errors", **name) == 1
        assert t.value("cache.l2.circuit_open", **name) == 1
        assert t.value("cache.auto_recovery.backlog", **name) == 1
        assert t.value("cache.entries", **name) == 3
        assert t.value("cache.evictions", **name) == 0
    finally:
        cache.close()
        other.close()


def test_cache_spans_are_opt_in_with_the_factory_as_a_child(telemetry: list[Telemetry]) -> None:
    t = Telemetry()
    telemetry.append(t)
    cache = HybridCache(CacheOptions(name="products"))
    plain = t.instrument(caches=[cache])
    cache.get_or_set("a", lambda: 1)
    assert t.spans() == []
    plain.uninstrument()

    traced = t.instrument(caches=[cache], cache_spans=True)
    with t.tracer().start_as_current_span("request") as request:
        assert cache.get_or_set("b", lambda: 2) == 2  # a miss: the factory runs
        assert cache.get_or_set("b", lambda: 3) == 2  # a hit
        timed = EntryOptions(factory_hard_timeout=5)  # the factory runs on a worker thread
        assert cache.get_or_set("c", lambda: 4, timed) == 4

        async def load() -> int:
            return 5

        assert asyncio.run(cache.get_or_set_async("d", load)) == 5
    calls = t.spans("cache get_or_set")
    factories = t.spans("cache factory")
    assert [dict(s.attributes or {})["cache.key"] for s in calls] == ["b", "b", "c", "d"]
    assert [dict(s.attributes or {})["cache.key"] for s in factories] == ["b", "c", "d"]
    by_key: dict[Any, ReadableSpan] = {}
    for call in calls:  # the first call of each key ran its factory
        by_key.setdefault(dict(call.attributes or {})["cache.key"], call)
    for factory in factories:
        key = dict(factory.attributes or {})["cache.key"]
        assert factory.parent is not None and factory.parent.span_id == by_key[key].context.span_id
    assert all(
        s.parent is not None and s.parent.span_id == request.get_span_context().span_id
        for s in calls
        if s.name == "cache get_or_set" and dict(s.attributes or {})["cache.key"] != "d"
    )
    traced.uninstrument()
    assert cache.get_or_set.__func__ is HybridCache.get_or_set  # type: ignore[attr-defined]
    assert "get_or_set" not in vars(cache)
    with pytest.raises(FactoryTimeoutError):
        cache.get_or_set(
            "e", lambda: threading.Event().wait(1), EntryOptions(factory_hard_timeout=0.01)
        )
    cache.close()


# -- nothing without OpenTelemetry -----------------------------------------------------------------


def test_the_library_never_imports_opentelemetry_by_itself() -> None:
    # (not cache.redis: redis-py 8 imports opentelemetry itself when it is installed)
    script = """
import sys, uuid
import cache, cache.eventbroker_backplane, jobs, eventbroker, eventbroker.servicebus
from eventbroker import EventBroker, EventBrokerOptions, EventRegistry, InMemoryHub, InMemoryTransport
hub = InMemoryHub()
options = EventBrokerOptions(secret="s" * 20, application_name="x")
a, b = EventBroker(InMemoryTransport(hub), options), EventBroker(InMemoryTransport(hub), options)
EventRegistry(b)
with a, b:
    EventRegistry(a).get(uuid.uuid4()).raise_(uuid.uuid4(), 1)
    hub.drain()
c = cache.HybridCache()
c.get_or_set("k", lambda: 1)
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout.strip().replace("'", '"')) == []


def test_the_contrib_module_names_the_extra_when_opentelemetry_is_missing() -> None:
    script = """
import sys
sys.modules["opentelemetry"] = None
try:
    import eventbroker.contrib.otel
except ImportError as exc:
    print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'eventbroker-cache[otel]'" in out.stdout


@pytest.mark.parametrize("bad", [-1, 1.5, "100"])
def test_a_bad_lag_sample_rate_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(ValueError, match="lag_samples_per_second"):
        instrument(lag_samples_per_second=bad)  # type: ignore[arg-type]


def test_cache_spans_keep_the_factory_context(telemetry: list[Telemetry]) -> None:
    from cache import FactoryContext

    t = Telemetry()
    telemetry.append(t)
    cache = HybridCache(CacheOptions(name="products"))
    traced = t.instrument(caches=[cache], cache_spans=True)
    seen: list[str] = []

    def load(ctx: FactoryContext[int]) -> int:
        seen.append(ctx.key)
        return 6

    async def load_async(ctx: FactoryContext[int]) -> int:
        seen.append(ctx.key)
        return 7

    assert cache.get_or_set("f", load) == 6
    assert asyncio.run(cache.get_or_set_async("g", load_async)) == 7
    assert seen == ["f", "g"]
    assert [dict(s.attributes or {})["cache.key"] for s in t.spans("cache factory")] == ["f", "g"]
    traced.uninstrument()
