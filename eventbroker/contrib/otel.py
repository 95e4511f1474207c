"""OpenTelemetry metrics and traces for the event broker, hybrid caches and the job scheduler.

```python
from eventbroker.contrib.otel import instrument

telemetry = instrument(broker=broker, caches=[products], scheduler=scheduler)
...
telemetry.uninstrument()  # or use it as a context manager
```

Needs ``opentelemetry-api`` (``pip install "eventbroker-cache[otel]"``) and, to export anything,
an SDK or distro configured by the application (``configure_azure_monitor()``, or the SDK's
providers with an OTLP exporter): see docs/observability.md. Instrumentation is explicit: the
library never imports OpenTelemetry on its own.

Cost model: counters are the ones the components keep anyway (`EventBroker.stats`,
`HybridCache.stats`), read by observable instruments when the reader collects, so they cost
nothing per message or per cache call. Per message: the delivery lag histogram, and spans for
the events that belong to a trace. Per job run: a span, a run counter and a duration. Cache
``get_or_set`` spans are opt-in (`cache_spans`), since the L1 hit path is a few hundred ns.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        TraceState,
    )
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        f"eventbroker.contrib.otel needs opentelemetry-api: pip install "
        f"'eventbroker-cache[otel]' ({exc})"
    ) from None

from .._broker import EventBroker
from .._diagnostics import LogLimiter
from .._envelope import Envelope, TraceContext
from .._telemetry import DeliveryScope

if TYPE_CHECKING:
    from cache import HybridCache
    from jobs import JobContext, JobOutcome, JobScheduler, ScheduledJob

__all__ = ["INSTRUMENTATION_NAME", "Instrumentation", "instrument"]

INSTRUMENTATION_NAME = "eventbroker"
"""The name of the meter and tracer (the instrumentation scope)."""
_VERSION = "0.1.0"

logger = logging.getLogger("eventbroker.otel")
_limiter = LogLimiter(logger, time.monotonic)

REFUSAL_CAUSES = (
    "bad_signature",
    "unknown_key",
    "unknown_version",
    "malformed",
    "oversize",
    "replay_window",
    "replay",
    "bad_param",
    "delivery_failed",
)
"""Refusal causes always reported (0 until one happens), so dashboards have every series."""
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""Seconds: the boundaries OpenTelemetry's semantic conventions give messaging durations."""
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
"""Seconds: job run durations."""

_SYSTEM = "messaging.system"
_DESTINATION = "messaging.destination.name"
_OPERATION = "messaging.operation.type"
_OPERATION_NAME = "messaging.operation.name"
_MAX_SOURCES = 100


def instrument(
    broker: EventBroker | None = None,
    caches: Iterable[HybridCache] = (),
    scheduler: JobScheduler | None = None,
    *,
    meter_provider: metrics.MeterProvider | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    metrics_enabled: bool = True,
    traces_enabled: bool = True,
    trace_new_raises: bool = False,
    cache_spans: bool = False,
    lag_samples_per_second: int | None = 1000,
) -> Instrumentation:
    """Report metrics and traces of `broker`, `caches` and `scheduler` (any of them).

    Providers default to the global ones (set by ``configure_azure_monitor()`` or
    ``metrics.set_meter_provider``/``trace.set_tracer_provider``), looked up now.

    - `trace_new_raises`: a raise outside any trace starts one (its own producer span, and a
      consumer span on every receiving instance: two SDK spans per event, more than the whole
      pipeline costs). By default only raises inside a trace (a request, a job run, a handler
      of a traced event) are traced; the others carry no trace context.
    - `cache_spans`: a span per `get_or_set` / `get_or_set_async` call, with the factory call
      as its child (off by default: the L1 hit path would pay a span per hit).
    - `lag_samples_per_second`: the most deliveries per second whose lag the histogram
      records, per broker (None: every one). Below that rate every delivery is recorded;
      above it the histogram is a sample (its distribution holds, its count is of samples:
      ``eventbroker.messages.dispatched`` counts every delivery). One SDK histogram record
      costs about as much as a fifth of the whole pipeline per event.
    - `metrics_enabled`, `traces_enabled`: turn either signal off.

    Instrumenting a component again replaces its earlier instrumentation.
    """
    if lag_samples_per_second is not None and (
        type(lag_samples_per_second) is not int or lag_samples_per_second < 0
    ):
        raise ValueError(
            f"lag_samples_per_second must be an int >= 0 (or None: every delivery), got "
            f"{lag_samples_per_second!r}"
        )
    meter_provider = meter_provider or metrics.get_meter_provider()
    tracer_provider = tracer_provider or trace.get_tracer_provider()
    tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME, _VERSION) if traces_enabled else None
    meters = _Meters.of(meter_provider) if metrics_enabled else None
    instrumentation = Instrumentation(meters)
    if broker is not None:
        instrumentation._add_broker(broker, tracer, trace_new_raises, lag_samples_per_second)
    for cache in caches:
        instrumentation._add_cache(cache, tracer if cache_spans else None)
    if scheduler is not None:
        instrumentation._add_scheduler(scheduler, tracer)
    return instrumentation


class Instrumentation:
    """What `instrument` set up; `uninstrument()` (or leaving its ``with`` block) removes it."""

    def __init__(self, meters: _Meters | None) -> None:
        self._meters = meters
        self._undo: list[Callable[[], None]] = []

    def uninstrument(self) -> None:
        """Stop reporting (idempotent). Observable instruments stay registered with the meter
        provider (OpenTelemetry cannot remove them) but report nothing for these components."""
        undo, self._undo = self._undo, []
        for step in reversed(undo):
            step()

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstrument()

    # -- the broker ------------------------------------------------------------------------------

    def _add_broker(
        self,
        broker: EventBroker,
        tracer: trace.Tracer | None,
        trace_new_raises: bool,
        lag_samples: int | None,
    ) -> None:
        base = broker_attributes(broker)
        meters = self._meters
        if meters is not None:
            meters.brokers[broker] = base
            self._undo.append(lambda: _forget(meters.brokers, broker, base))
        lag = None if meters is None else meters.delivery_lag
        if tracer is None and lag is None:
            return
        hook = _BrokerTelemetry(broker, base, tracer, lag, trace_new_raises, lag_samples)
        broker._telemetry = hook

        def undo() -> None:
            if broker._telemetry is hook:
                broker._telemetry = None

        self._undo.append(undo)

    # -- caches ----------------------------------------------------------------------------------

    def _add_cache(self, cache: HybridCache, tracer: trace.Tracer | None) -> None:
        meters = self._meters
        if meters is not None:
            attributes = {"cache.name": cache.options.name}
            meters.caches[cache] = attributes
            self._undo.append(lambda: _forget(meters.caches, cache, attributes))
        _untrace_cache(cache)  # an earlier instrumentation's wrappers
        if tracer is None:
            return
        wrappers = _trace_cache(cache, tracer)
        self._undo.append(lambda: _untrace_cache(cache, wrappers))

    # -- the scheduler ---------------------------------------------------------------------------

    def _add_scheduler(self, scheduler: JobScheduler, tracer: trace.Tracer | None) -> None:
        meters = self._meters
        if tracer is None and meters is None:
            return
        hook = _JobTelemetry(tracer, meters, scheduler.instance_id)
        scheduler._telemetry = hook

        def undo() -> None:
            if scheduler._telemetry is hook:
                scheduler._telemetry = None

        self._undo.append(undo)


def _forget(registry: weakref.WeakKeyDictionary[Any, dict[str, str]], key: Any, value: Any) -> None:
    if registry.get(key) is value:  # not re-instrumented since
        del registry[key]


def broker_attributes(broker: EventBroker) -> dict[str, str]:
    """``messaging.system`` (the transport's) and ``messaging.destination.name`` (the Service
    Bus topic; the application name on the in-memory hub)."""
    transport = broker.transport
    system = getattr(transport, "messaging_system", None)
    destination = getattr(transport, "destination_name", None)
    return {
        _SYSTEM: system if isinstance(system, str) else type(transport).__name__.lower(),
        _DESTINATION: destination
        if isinstance(destination, str)
        else broker.options.application_name,
    }


# ---------------------------------------------------------------------------------------------
# Metrics: one set of instruments per meter provider, reading every registered component.


class _Meters:
    _by_provider: ClassVar[weakref.WeakKeyDictionary[Any, _Meters]] = weakref.WeakKeyDictionary()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def of(cls, provider: metrics.MeterProvider) -> _Meters:
        with cls._lock:
            meters = cls._by_provider.get(provider)
            if meters is None:
                meters = cls._by_provider[provider] = cls(provider)
            return meters

    def __init__(self, provider: metrics.MeterProvider) -> None:
        self.brokers: weakref.WeakKeyDictionary[EventBroker, dict[str, str]] = (
            weakref.WeakKeyDictionary()
        )
        self.caches: weakref.WeakKeyDictionary[HybridCache, dict[str, str]] = (
            weakref.WeakKeyDictionary()
        )
        meter = provider.get_meter(INSTRUMENTATION_NAME, _VERSION)
        self._broker_instruments(meter)
        self._cache_instruments(meter)
        self.job_runs = meter.create_counter(
            "jobs.runs", unit="{run}", description="Job runs that ended here, by outcome"
        )
        self.job_duration = meter.create_histogram(
            "jobs.run.duration",
            unit="s",
            description="How long job runs took, by outcome",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.lease_losses = meter.create_counter(
            "jobs.lease.losses",
            unit="{lease}",
            description="Runs whose lease another instance reaped (the run is asked to stop)",
        )

    # -- broker ----------------------------------------------------------------------------------

    def _broker_instruments(self, meter: metrics.Meter) -> None:
        self.delivery_lag = meter.create_histogram(
            "eventbroker.delivery.lag",
            unit="s",
            description="Receive time minus the envelope's send time, per source application",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS,
        )

        def counter(name: str, unit: str, description: str, read: _Reader) -> None:
            meter.create_observable_counter(
                name, [self._broker_callback(read)], unit=unit, description=description
            )

        counter(
            "eventbroker.messages.published",
            "{message}",
            "Events handed to the transport",
            lambda s, b: [({_OPERATION: "send"}, s.published)],
        )
        counter(
            "eventbroker.messages.received",
            "{message}",
            "Messages the transport delivered (before any check), heartbeats excepted",
            lambda s, b: [({_OPERATION: "receive"}, s.received)],
        )
        counter(
            "eventbroker.messages.dispatched",
            "{message}",
            "Verified events from other instances dispatched to handlers",
            lambda s, b: [({_OPERATION: "process"}, s.dispatched)],
        )
        counter(
            "eventbroker.messages.duplicates",
            "{message}",
            "Redeliveries of a recent message id (dropped)",
            lambda s, b: [({}, s.duplicates)],
        )
        counter(
            "eventbroker.messages.refused",
            "{message}",
            "Messages refused, by cause (eventbroker.refusal.cause)",
            lambda s, b: [
                ({"eventbroker.refusal.cause": cause}, s.rejected.get(cause, 0))
                for cause in (*REFUSAL_CAUSES, *sorted(set(s.rejected) - set(REFUSAL_CAUSES)))
            ],
        )
        counter(
            "eventbroker.messages.ignored",
            "{message}",
            "This instance's own messages echoed back, and other applications' messages",
            lambda s, b: [
                ({"eventbroker.ignored.reason": "own"}, s.own),
                ({"eventbroker.ignored.reason": "other_application"}, s.other_application),
            ],
        )
        counter(
            "eventbroker.gaps",
            "{gap}",
            "Sequence gaps reported through event_missed (events lost)",
            lambda s, b: [({}, s.gaps)],
        )
        counter(
            "eventbroker.reconnects",
            "{reconnect}",
            "Reconnections and recreated subscriptions",
            lambda s, b: [({}, s.reconnects)],
        )
        counter(
            "eventbroker.heartbeats",
            "{message}",
            "Control messages sent (hello, presence, idle, bye) and received",
            lambda s, b: [
                ({_OPERATION: "send"}, s.heartbeats_sent),
                ({_OPERATION: "receive"}, s.heartbeats_received),
            ],
        )
        meter.create_observable_up_down_counter(
            "eventbroker.publish_queue.depth",
            [self._broker_callback(lambda s, b: [({}, _queued(b))], stats=False)],
            unit="{message}",
            description="Messages accepted by the transport and not yet sent",
        )
        meter.create_observable_up_down_counter(
            "eventbroker.instances",
            [self._broker_callback(lambda s, b: [({}, len(b.instances))], stats=False)],
            unit="{instance}",
            description="Other instances of this application heard from",
        )

    def _broker_callback(
        self, read: _Reader, *, stats: bool = True
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            totals: dict[frozenset[tuple[str, str]], tuple[dict[str, str], int]] = {}
            for broker, base in list(self.brokers.items()):
                snapshot = broker.stats if stats else None
                for extra, value in read(snapshot, broker):
                    attributes = base | extra
                    key = frozenset(attributes.items())
                    previous = totals.get(key, (attributes, 0))[1]
                    totals[key] = (attributes, previous + value)
            return [Observation(value, attributes) for attributes, value in totals.values()]

        return callback

    # -- caches ----------------------------------------------------------------------------------

    def _cache_instruments(self, meter: metrics.Meter) -> None:
        def counter(name: str, unit: str, description: str, read: _CacheReader) -> None:
            meter.create_observable_counter(
                name, [self._cache_callback(read)], unit=unit, description=description
            )

        def gauge(name: str, unit: str, description: str, read: _CacheReader) -> None:
            meter.create_observable_up_down_counter(
                name, [self._cache_callback(read, stats=False)], unit=unit, description=description
            )

        counter(
            "cache.hits",
            "{hit}",
            "Reads answered by memory (cache.level l1) or the distributed cache (l2)",
            lambda s, c: (
                [({"cache.level": "l1"}, s.l1_hits), ({"cache.level": "l2"}, s.l2_hits)]
                if c._l2 is not None
                else [({"cache.level": "l1"}, s.l1_hits)]
            ),
        )
        counter(
            "cache.misses",
            "{miss}",
            "Reads a level could not answer (cache.level l1 or l2)",
            lambda s, c: (
                [
                    ({"cache.level": "l1"}, s.l1_misses),
                    ({"cache.level": "l2"}, s.l2_misses),
                ]
                if c._l2 is not None
                else [({"cache.level": "l1"}, s.l1_misses)]
            ),
        )
        counter(
            "cache.stale_hits",
            "{hit}",
            "Stale values served by fail-safe",
            lambda s, c: [({}, s.stale_hits)],
        )
        counter(
            "cache.fail_safe.activations",
            "{activation}",
            "Factory failures or timeouts answered with the last good value",
            lambda s, c: [({}, s.fail_safe_activations)],
        )
        counter(
            "cache.factory.calls",
            "{call}",
            "Factory calls (loads from the source of truth)",
            lambda s, c: [({}, s.factory_calls)],
        )
        counter(
            "cache.factory.errors",
            "{error}",
            "Factory calls that raised",
            lambda s, c: [({}, s.factory_errors)],
        )
        counter(
            "cache.factory.timeouts",
            "{timeout}",
            "Factory calls that ran past their soft or hard timeout",
            lambda s, c: [({}, s.factory_timeouts)],
        )
        counter(
            "cache.evictions",
            "{entry}",
            "Entries dropped from memory to stay within max_entries",
            lambda s, c: [({}, s.evictions)],
        )
        counter(
            "cache.backplane.messages",
            "{message}",
            "Backplane messages sent to and received from other instances",
            lambda s, c: [
                ({_OPERATION: "send"}, s.backplane_sent),
                ({_OPERATION: "receive"}, s.backplane_received),
            ],
        )
        counter(
            "cache.backplane.errors",
            "{error}",
            "Backplane publishes that failed (queued for auto-recovery)",
            lambda s, c: [({}, s.backplane_errors)],
        )
        counter(
            "cache.l2.errors",
            "{error}",
            "Distributed cache calls that failed",
            lambda s, c: [({}, s.l2_errors)] if c._l2 is not None else [],
        )
        gauge(
            "cache.l2.circuit_open",
            "1",
            "1 while the distributed cache is skipped after an outage (its circuit is open)",
            lambda s, c: [({}, int(c.distributed_cache_circuit_open))] if c._l2 is not None else [],
        )
        gauge(
            "cache.auto_recovery.backlog",
            "{message}",
            "Backplane messages waiting to be published again",
            lambda s, c: [({}, len(c.auto_recovery_pending))] if c._backplane is not None else [],
        )
        gauge(
            "cache.entries",
            "{entry}",
            "Entries in memory (fresh or stale)",
            lambda s, c: [({}, c.memory_count)],
        )

    def _cache_callback(
        self, read: _CacheReader, *, stats: bool = True
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            totals: dict[frozenset[tuple[str, str]], tuple[dict[str, str], int]] = {}
            for cache, base in list(self.caches.items()):
                snapshot = cache.stats if stats else None
                for extra, value in read(snapshot, cache):
                    attributes = base | extra
                    key = frozenset(attributes.items())
                    previous = totals.get(key, (attributes, 0))[1]
                    totals[key] = (attributes, previous + value)
            return [Observation(value, attributes) for attributes, value in totals.values()]

        return callback


_Reader = Callable[[Any, EventBroker], Iterable[tuple[dict[str, str], int]]]
_CacheReader = Callable[[Any, "HybridCache"], Iterable[tuple[dict[str, str], int]]]


def _queued(broker: EventBroker) -> int:
    queued = getattr(broker.transport, "queued", 0)
    return queued if isinstance(queued, int) else 0


# ---------------------------------------------------------------------------------------------
# The broker's per-event hook: producer spans, consumer spans, the delivery lag.


def traceparent(context: SpanContext) -> str:
    """The W3C ``traceparent`` of a span context."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _trace_field(context: SpanContext) -> dict[str, str]:
    state = context.trace_state.to_header() if context.trace_state else ""
    return TraceContext(traceparent(context), state or None).fields()


def remote_span_context(carried: TraceContext) -> SpanContext:
    """The sending span's context from an envelope's (validated) trace field."""
    text = carried.traceparent
    state = TraceState.from_header([carried.tracestate]) if carried.tracestate else None
    return SpanContext(
        trace_id=int(text[3:35], 16),
        span_id=int(text[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(text[53:55], 16)),
        trace_state=state,
    )


def _noop() -> None:
    pass


class _BrokerTelemetry:
    """`eventbroker._telemetry.BrokerTelemetry` with OpenTelemetry."""

    def __init__(
        self,
        broker: EventBroker,
        base: dict[str, str],
        tracer: trace.Tracer | None,
        lag: metrics.Histogram | None,
        trace_new_raises: bool,
        lag_samples: int | None = None,
    ) -> None:
        self._tracer = tracer
        self._lag = lag
        self._lag_budget = lag_samples  # None: every delivery
        self._lag_second = 0  # the second (broker clock) the budget is counted in
        self._lag_left = 0
        self._new_traces = trace_new_raises
        self._base = base
        self._instance_id = broker.instance_id
        destination = base[_DESTINATION]
        self._send_name = f"send {destination}"
        self._process_name = f"process {destination}"
        self._lag_attributes: dict[str, dict[str, str]] = {}

    # -- sending (the raising thread, under the broker's send lock) -----------------------------

    def send(self, fields: dict[str, Any], publish: Callable[[dict[str, Any]], None]) -> None:
        span = None
        if self._tracer is not None:
            try:
                span = self._start_producer(fields)
            except Exception as exc:  # telemetry must never stop an event
                _limiter.warn("send", "tracing a raise failed: %s: %s", type(exc).__name__, exc)
        if span is None:
            publish(fields)
            return
        try:
            publish(fields)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.end()

    def _start_producer(self, fields: dict[str, Any]) -> trace.Span | None:
        current = trace.get_current_span()
        context = current.get_span_context()
        if not current.is_recording():
            if context.is_valid:  # an unsampled trace: carried on unchanged, no span to record
                fields["trace"] = _trace_field(context)
                return None
            if not self._new_traces:
                return None
        assert self._tracer is not None
        span = self._tracer.start_span(
            self._send_name,
            kind=SpanKind.PRODUCER,
            attributes={
                **self._base,
                _OPERATION: "send",
                _OPERATION_NAME: "send",
                "messaging.message.id": fields["message_id"],
                "messaging.client.id": self._instance_id,
                "eventbroker.event.id": fields["event_id"],
                "eventbroker.raiser.id": fields["raiser_id"],
            },
        )
        made = span.get_span_context()
        if made.is_valid:
            fields["trace"] = _trace_field(made)
        return span

    # -- receiving (the broker loop) -------------------------------------------------------------

    def receive(self, envelope: Envelope, now: float) -> DeliveryScope | None:
        try:
            lag = now - envelope.sent_at
            if self._lag is not None and self._lag_sample(now):
                self._lag.record(lag if lag > 0 else 0.0, self._lag_for(envelope.application_name))
            if self._tracer is None or envelope.trace is None:
                return None
            return self._consumer_scope(envelope, lag)
        except Exception as exc:  # telemetry must never refuse an event
            _limiter.warn("receive", "tracing a delivery failed: %s: %s", type(exc).__name__, exc)
            return None

    def _lag_sample(self, now: float) -> bool:
        """Whether this delivery's lag is recorded (`lag_samples_per_second`)."""
        if self._lag_budget is None:
            return True
        second = int(now)
        if second != self._lag_second:
            self._lag_second, self._lag_left = second, self._lag_budget
        if self._lag_left <= 0:
            return False
        self._lag_left -= 1
        return True

    def _lag_for(self, application: str) -> dict[str, str]:
        attributes = self._lag_attributes.get(application)
        if attributes is None:
            source = application if len(self._lag_attributes) < _MAX_SOURCES else "other"
            attributes = self._base | {"eventbroker.source.application": source}
            if source != "other":
                self._lag_attributes[application] = attributes
        return attributes

    def _consumer_scope(self, envelope: Envelope, lag: float) -> DeliveryScope:
        assert self._tracer is not None and envelope.trace is not None
        sender = remote_span_context(envelope.trace)
        remote = trace.set_span_in_context(NonRecordingSpan(sender))
        context = contextvars.copy_context()
        if not sender.trace_flags.sampled:  # carried to the handlers, nothing to record
            context.run(otel_context.attach, remote)
            return DeliveryScope(context, _noop)
        span = self._tracer.start_span(
            self._process_name,
            context=remote,
            kind=SpanKind.CONSUMER,
            attributes={
                **self._base,
                _OPERATION: "process",
                _OPERATION_NAME: "process",
                "messaging.message.id": envelope.message_id,
                "messaging.client.id": self._instance_id,
                "eventbroker.event.id": str(envelope.event_id),
                "eventbroker.raiser.id": str(envelope.raiser_id),
                "eventbroker.source.instance.id": envelope.instance_id,
                "eventbroker.source.application": envelope.application_name,
                "eventbroker.delivery.lag": lag,
            },
        )
        context.run(otel_context.attach, trace.set_span_in_context(span, remote))
        return DeliveryScope(context, span.end)


# ---------------------------------------------------------------------------------------------
# Cache spans (opt-in): the instance's get_or_set faces wrapped; the class is untouched.


def _trace_cache(cache: HybridCache, tracer: trace.Tracer) -> dict[str, Callable[..., Any]]:
    """Wrap the instance's `get_or_set` faces (the class keeps its untraced hit path)."""
    from cache._context import takes_context
    from cache._hybrid import _is_async_callable

    plain = cache.get_or_set
    awaited = cache.get_or_set_async
    name = cache.options.name

    def attributes(key: str) -> dict[str, str]:
        return {"cache.name": name, "cache.key": key[:256] if isinstance(key, str) else repr(key)}

    def traced_factory(factory: Callable[..., Any], key: str) -> Callable[..., Any]:
        """`factory` under a span; takes the `FactoryContext` too when `factory` does."""
        parent = otel_context.get_current()  # the factory may run on a worker thread

        def span() -> Any:
            return tracer.start_as_current_span(
                "cache factory", context=parent, attributes=attributes(key)
            )

        # The cache tells factories apart by being async and by taking a context: keep both.
        if _is_async_callable(factory):
            if takes_context(factory):

                async def run_async_with(ctx: Any) -> Any:
                    with span():
                        return await factory(ctx)

                return run_async_with

            async def run_async() -> Any:
                with span():
                    return await factory()

            return run_async
        if takes_context(factory):

            def run_with(ctx: Any) -> Any:
                with span():
                    return factory(ctx)

            return run_with

        def run() -> Any:
            with span():
                return factory()

        return run

    def get_or_set(key: str, factory: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
        with tracer.start_as_current_span("cache get_or_set", attributes=attributes(key)):
            return plain(key, traced_factory(factory, key), *args, **kwargs)

    async def get_or_set_async(
        key: str, factory: Callable[[], Any], *args: Any, **kwargs: Any
    ) -> Any:
        with tracer.start_as_current_span("cache get_or_set", attributes=attributes(key)):
            return await awaited(key, traced_factory(factory, key), *args, **kwargs)

    wrappers: dict[str, Callable[..., Any]] = {
        "get_or_set": get_or_set,
        "get_or_set_async": get_or_set_async,
    }
    for attribute, wrapper in wrappers.items():
        setattr(cache, attribute, wrapper)
    return wrappers


def _untrace_cache(cache: HybridCache, only: dict[str, Callable[..., Any]] | None = None) -> None:
    """Remove the wrappers (`only` these, if given). Through getattr and delattr: reading the
    instance's ``__dict__`` would slow every later attribute read of the object."""
    for attribute in ("get_or_set", "get_or_set_async"):
        current = getattr(cache, attribute)
        if inspect.ismethod(current):
            continue  # the class's own
        if only is None or only.get(attribute) is current:
            delattr(cache, attribute)


# ---------------------------------------------------------------------------------------------
# Jobs: a span per run (the root of what the run raises), runs, durations, lost leases.


class _JobTelemetry:
    """`jobs._telemetry.RunTelemetry` with OpenTelemetry."""

    def __init__(self, tracer: trace.Tracer | None, meters: _Meters | None, instance: str) -> None:
        self._tracer = tracer
        self._meters = meters
        self._instance = instance

    def run(
        self,
        job: ScheduledJob,
        ctx: JobContext,
        execute: Callable[[], tuple[JobOutcome, str]],
    ) -> tuple[JobOutcome, str]:
        started = time.perf_counter()
        with self._span(job, ctx) as span:
            outcome, message = execute()
            try:
                if span is not None:
                    span.set_attribute("jobs.run.outcome", outcome.value)
                    if outcome.value == "failed":
                        span.set_status(Status(StatusCode.ERROR, message[:200]))
                if self._meters is not None:
                    attributes = {
                        "jobs.job.name": job.display_name,
                        "jobs.run.outcome": outcome.value,
                    }
                    self._meters.job_runs.add(1, attributes)
                    self._meters.job_duration.record(time.perf_counter() - started, attributes)
            except Exception as exc:
                _limiter.warn("job", "recording a job run failed: %s: %s", type(exc).__name__, exc)
        return outcome, message

    def _span(self, job: ScheduledJob, ctx: JobContext) -> _MaybeSpan:
        return _MaybeSpan(self._tracer, job, ctx, self._instance)

    def lease_lost(self, job: ScheduledJob) -> None:
        if self._meters is not None:
            try:
                self._meters.lease_losses.add(1, {"jobs.job.name": job.display_name})
            except Exception as exc:
                _limiter.warn("lease", "recording a lost lease failed: %s", exc)


class _MaybeSpan:
    """The current span of a job run, when tracing is on and starting it works."""

    def __init__(
        self, tracer: trace.Tracer | None, job: ScheduledJob, ctx: JobContext, instance: str
    ) -> None:
        self._cm: Any = None
        if tracer is None:
            return
        try:
            self._cm = tracer.start_as_current_span(
                f"job {job.display_name}",
                kind=SpanKind.INTERNAL,
                attributes={
                    "jobs.job.name": job.display_name,
                    "jobs.job.id": str(job.id),
                    "jobs.run.id": ctx.run_id,
                    "jobs.run.trigger": ctx.trigger.value,
                    "jobs.instance.id": instance,
                },
                record_exception=False,
                set_status_on_exception=False,
            )
        except Exception as exc:
            _limiter.warn("job", "tracing a job run failed: %s: %s", type(exc).__name__, exc)

    def __enter__(self) -> trace.Span | None:
        if self._cm is None:
            return None
        try:
            span: trace.Span = self._cm.__enter__()
        except Exception as exc:
            self._cm = None
            _limiter.warn("job", "tracing a job run failed: %s: %s", type(exc).__name__, exc)
            return None
        return span

    def __exit__(self, *exc: object) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)
