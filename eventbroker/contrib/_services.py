"""`AppServices`: the event broker, registry, caches and job scheduler of one app instance.

Framework-neutral: built from settings (the environment) or from ready objects, started in order
(broker, caches, scheduler) and stopped in reverse (scheduler, caches, broker), with one health
report for all of them. The Starlette/FastAPI lifespan (`eventbroker.contrib.starlette`) is a
thin layer over it; a plain process (a job instance) uses `start()` / `stop()` directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import attrs

from cache import Backplane, CacheOptions, Health, HealthStatus, HybridCache
from cache._redact import redact_text
from cache._settings import EnvSettings, env, read_variable, url_repr
from cache.eventbroker_backplane import BackplaneOptions, EventBrokerBackplane

from .._broker import EventBroker
from .._memory_transport import InMemoryHub, InMemoryTransport
from .._options import EventBrokerOptions
from .._registry import EventRegistry
from .._transport import Transport
from ._farm import FarmReporter

if TYPE_CHECKING:
    from cache import DistributedCache
    from jobs import JobScheduler, ScheduledJob, SchedulerOptions

logger = logging.getLogger("eventbroker.contrib")

JOBS_RUN_SCHEDULER = "JOBS_RUN_SCHEDULER"
"""The environment variable of the jobs role: true on the instance(s) that run the scheduler."""

_SERVICEBUS_VARIABLES = (
    "EVENTBROKER_SERVICEBUS_CONNECTION_STRING",
    "EVENTBROKER_SERVICEBUS_FULLY_QUALIFIED_NAMESPACE",
)


@attrs.frozen
class ServicesSettings(EnvSettings):
    """The integration's own settings (the broker, caches and scheduler have theirs)."""

    run_jobs: bool = attrs.field(default=False, metadata=env(JOBS_RUN_SCHEDULER))
    """The jobs role: whether this instance runs the job scheduler."""
    redis_url: str | None = attrs.field(
        default=None, repr=url_repr, metadata=env("CACHE_REDIS_URL", url=True)
    )
    """Redis for every cache's L2 (none: the caches have no L2)."""
    redis_key_prefix: str = attrs.field(default="", metadata=env("CACHE_REDIS_KEY_PREFIX"))
    """Put before ``<cache name>:`` in every Redis key."""
    jobs_store: str = attrs.field(
        default="jobs.sqlite3", repr=url_repr, metadata=env("JOBS_STORE", url=True)
    )
    """The job store on the jobs role: a SQLite path or a ``postgresql://`` URL."""
    heartbeat_summary: bool = attrs.field(
        default=True, metadata=env("EVENTBROKER_HEARTBEAT_SUMMARY")
    )
    """Whether this instance's heartbeats carry a summary of its counters (events, lag, caches,
    jobs) that the farm page of every other instance shows."""


class AppServicesArgs(TypedDict, total=False):
    """What `AppServices.build` (and `EventBrokerLifespan`) take; every key is optional.

    Anything not given is built from the environment (`environ`, default: the process's).
    """

    broker: EventBroker
    """A ready broker (then not `transport` / `broker_options`). Default: built from
    `transport` and `broker_options`."""
    transport: Transport
    """Default: Service Bus when ``EVENTBROKER_SERVICEBUS_CONNECTION_STRING`` or
    ``..._FULLY_QUALIFIED_NAMESPACE`` is set (`ServiceBusOptions.from_env()`), else an in-memory
    hub of this process (local development)."""
    broker_options: EventBrokerOptions
    """Default: `EventBrokerOptions.from_env()` (``EVENTBROKER_SECRET`` is required)."""
    registry: EventRegistry
    """Default: a new `EventRegistry` on the broker."""
    caches: Iterable[HybridCache | CacheOptions | str]
    """Ready caches, or options / names of caches to build (`CacheOptions.from_env(name=...)`,
    Redis L2 when a Redis URL is set, an `EventBrokerBackplane` on the broker). Default: one
    cache from `CacheOptions.from_env()`; ``()`` for none."""
    redis_url: str
    """L2 of the built caches. Default: ``CACHE_REDIS_URL``; unset or empty: no L2."""
    redis_key_prefix: str
    """Built caches store their L2 keys as ``redis_key_prefix + cache name + ":" + key``.
    Default: ``CACHE_REDIS_KEY_PREFIX`` or empty."""
    run_jobs: bool
    """The jobs role: whether this instance runs the job scheduler. Default:
    ``JOBS_RUN_SCHEDULER`` (true/false, 1/0, yes/no, on/off), else false."""
    jobs: Iterable[ScheduledJob] | Callable[[EventRegistry], Iterable[ScheduledJob]]
    """The jobs of the scheduler built when the jobs role is on, or a function of the registry
    returning them (called only then)."""
    scheduler: JobScheduler | Callable[[EventRegistry], JobScheduler]
    """A ready scheduler (then not `jobs`), or a function of the registry returning one (called
    only when the jobs role is on); started only when the jobs role is on."""
    jobs_store: str
    """The built scheduler's store. Default: ``JOBS_STORE``, else ``jobs.sqlite3``."""
    scheduler_options: SchedulerOptions
    """The built scheduler's options."""
    attach_backplane: Callable[[Callable[[], Backplane] | None], None]
    """For caches built outside, later and lazily (Django's cache framework builds its backends
    at first use): called with a function making an `EventBrokerBackplane` on the broker once
    the broker runs, and with None when stopping (after the scheduler, before the broker).
    Django's is `cache.contrib.django.use_backplane`."""
    heartbeat_summary: bool
    """Whether heartbeats carry this instance's summary for the farm page. Default:
    ``EVENTBROKER_HEARTBEAT_SUMMARY``, else true."""
    environ: Mapping[str, str]
    """Where settings are read from. Default: the process's environment."""


def servicebus_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a Service Bus connection string or namespace is set in the environment."""
    return any(read_variable(name, environ=environ) for name in _SERVICEBUS_VARIABLES)


def servicebus_transport(environ: Mapping[str, str] | None = None, **options: Any) -> Transport:
    """A Service Bus transport: `ServiceBusOptions.from_env(environ, **options)`; an import
    error names the extra to install."""
    try:
        from eventbroker.servicebus import ServiceBusOptions, ServiceBusTransport
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"Service Bus is configured but its transport cannot be imported ({exc}): "
            'pip install "eventbroker-cache[servicebus]"',
            name=exc.name,
        ) from exc
    return ServiceBusTransport(ServiceBusOptions.from_env(environ, **options))


def transport_from_env(environ: Mapping[str, str] | None = None) -> Transport:
    """Service Bus when a connection string or namespace is configured, else an in-memory hub."""
    if servicebus_configured(environ):
        return servicebus_transport(environ)
    logger.info(
        "no %s: events stay in this process (in-memory hub, local development)",
        " or ".join(_SERVICEBUS_VARIABLES),
    )
    return InMemoryTransport(InMemoryHub())


def _redis_l2(url: str, prefix: str) -> DistributedCache:
    try:
        from cache.redis import RedisDistributedCache
    except ImportError as exc:
        raise ModuleNotFoundError(
            f'a Redis URL is set (CACHE_REDIS_URL) but redis-py is missing ({exc}): pip install "eventbroker-cache[redis]"',
            name=exc.name,
        ) from exc
    return RedisDistributedCache(url, key_prefix=prefix)


def _build_scheduler(
    args: AppServicesArgs, registry: EventRegistry, settings: ServicesSettings
) -> JobScheduler:
    try:
        from jobs import JobScheduler
    except ImportError as exc:
        raise ModuleNotFoundError(
            f'the jobs role is on but the jobs package cannot be imported ({exc}): pip install "eventbroker-cache[jobs]"',
            name=exc.name,
        ) from exc
    jobs = args.get("jobs")
    if jobs is None:
        raise ValueError(
            f"the jobs role is on ({JOBS_RUN_SCHEDULER} or run_jobs=True) but no jobs were "
            f"given: pass jobs=... or scheduler=..., or set {JOBS_RUN_SCHEDULER}=false"
        )
    listed = list(jobs(registry) if callable(jobs) else jobs)
    store = args.get("jobs_store") or settings.jobs_store
    return JobScheduler(
        listed, store=store, options=args.get("scheduler_options"), registry=registry
    )


_StopStep = tuple[str, Callable[[], None], Callable[[], Awaitable[None]]]


class AppServices:
    """The event broker, registry, caches and (on the jobs role) the job scheduler of one app
    instance, started and stopped together.

    ```python
    services = AppServices.build(caches=["products"], jobs=lambda registry: [ImportJob(registry)])
    services.start()                    # broker, then the scheduler (jobs role only)
    services.cache.get_or_set(...)
    services.stop()                     # scheduler, caches, broker (deletes its subscription)
    ```
    Objects passed in ready are started and stopped like the built ones (brokers and caches
    cannot be restarted: one `AppServices` per process run).
    """

    def __init__(
        self,
        broker: EventBroker,
        registry: EventRegistry,
        caches: Mapping[str, HybridCache],
        scheduler: JobScheduler | None = None,
        attach_backplane: Callable[[Callable[[], Backplane] | None], None] | None = None,
        *,
        heartbeat_summary: bool = True,
    ) -> None:
        self.broker = broker
        self.registry = registry
        self.caches: dict[str, HybridCache] = dict(caches)
        """The caches by name, in the order given."""
        self.scheduler = scheduler
        """The job scheduler; None when this instance does not have the jobs role."""
        self._attach_backplane = attach_backplane
        self.more_caches: Callable[[], Iterable[HybridCache]] | None = None
        """Caches built elsewhere (Django's cache framework builds its own) that the farm page
        and the heartbeat summary show besides `caches`."""
        self.heartbeat_summary = heartbeat_summary
        self.reporter = FarmReporter(
            broker, registry, lambda: self.all_caches().values(), scheduler, self.health
        )
        """What this instance tells the farm in its heartbeats and shows on its farm page."""
        self._lock = threading.Lock()
        self._started = False
        self._stop_steps: list[_StopStep] | None = None

    @classmethod
    def build(cls, **args: Unpack[AppServicesArgs]) -> AppServices:
        """Build (not start) from ready objects and settings (`AppServicesArgs` lists them).

        Opens the job store when the jobs role is on; raises on bad settings, naming them.
        """
        unknown = set(args) - set(AppServicesArgs.__annotations__)
        if unknown:
            raise TypeError(
                f"unknown AppServices setting(s) {sorted(unknown)}; "
                f"known: {sorted(AppServicesArgs.__annotations__)}"
            )
        env = args.get("environ")  # None: the process environment
        settings = ServicesSettings.from_env(env)
        broker = args.get("broker")
        if broker is None:
            options = args.get("broker_options")
            if options is None:
                options = EventBrokerOptions.from_env(env)
            transport = args.get("transport")
            broker = EventBroker(
                transport_from_env(env) if transport is None else transport, options
            )
        elif "transport" in args or "broker_options" in args:
            raise TypeError("pass either a ready broker or transport/broker_options, not both")
        registry = args.get("registry")
        if registry is None:
            registry = EventRegistry(broker)
        if registry.broker is not broker:
            raise ValueError(f"the registry belongs to {registry.broker!r}, not to {broker!r}")
        built: list[HybridCache] = []
        caches: dict[str, HybridCache] = {}
        try:
            specs = args["caches"] if "caches" in args else [CacheOptions.from_env(env)]
            for spec in specs:
                if isinstance(spec, HybridCache):
                    cache = spec
                else:
                    cache = cls._build_cache(spec, args, broker, registry, env, settings)
                    built.append(cache)
                name = cache.options.name
                if name in caches:
                    raise ValueError(
                        f"two caches are named {name!r}: give each cache its own name "
                        "(caches of one name share backplane messages and L2 keys)"
                    )
                caches[name] = cache
            scheduler = cls._scheduler(args, registry, settings)
        except BaseException:
            for cache in built:
                cache.close()
            raise
        summary = args.get("heartbeat_summary")
        return cls(
            broker,
            registry,
            caches,
            scheduler,
            args.get("attach_backplane"),
            heartbeat_summary=settings.heartbeat_summary if summary is None else summary,
        )

    @staticmethod
    def _build_cache(
        spec: CacheOptions | str,
        args: AppServicesArgs,
        broker: EventBroker,
        registry: EventRegistry,
        env: Mapping[str, str] | None,
        settings: ServicesSettings,
    ) -> HybridCache:
        options = spec if isinstance(spec, CacheOptions) else CacheOptions.from_env(env, name=spec)
        url = args.get("redis_url", settings.redis_url)
        l2 = None
        if url:
            prefix = args.get("redis_key_prefix", settings.redis_key_prefix)
            l2 = _redis_l2(url, f"{prefix}{options.name}:")
        return HybridCache(
            options,
            distributed_cache=l2,
            backplane=EventBrokerBackplane(
                registry, broker, options=BackplaneOptions.from_env(env)
            ),
            owns_distributed_cache=True,
        )

    @staticmethod
    def _scheduler(
        args: AppServicesArgs, registry: EventRegistry, settings: ServicesSettings
    ) -> JobScheduler | None:
        if "scheduler" in args and "jobs" in args:
            raise TypeError("pass either a ready scheduler or jobs, not both")
        run = args.get("run_jobs")
        if run is None:
            run = settings.run_jobs
        if not run:
            if "scheduler" in args or "jobs" in args:
                logger.info(
                    "jobs role off (%s is not true): no job scheduler runs on this instance",
                    JOBS_RUN_SCHEDULER,
                )
            return None
        ready = args.get("scheduler")
        if ready is None:
            return _build_scheduler(args, registry, settings)
        return ready(registry) if callable(ready) else ready

    # ---------------------------------------------------------------- access

    @property
    def cache(self) -> HybridCache:
        """The first cache (the only one, usually)."""
        for cache in self.caches.values():
            return cache
        raise LookupError("no cache was configured: pass caches=[...] (or leave it unset)")

    @property
    def is_started(self) -> bool:
        return self._started

    def all_caches(self) -> dict[str, HybridCache]:
        """`caches` and those of `more_caches`, by name (the first of a name wins)."""
        found = dict(self.caches)
        if self.more_caches is not None:
            try:
                for cache in self.more_caches():
                    found.setdefault(cache.options.name, cache)
            except Exception as exc:
                logger.debug("listing more caches failed: %s", exc)
        return found

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the broker, then attach the backplane (`attach_backplane`), then start the
        scheduler (caches need no start). If a step fails, what started is stopped again and the
        error raised. Returns while Service Bus is still connecting (see
        `EventBrokerOptions.connect_timeout`)."""
        with self._lock:
            if self._started or self._stop_steps is not None:
                raise RuntimeError("AppServices.start() was already called: build new services")
            self._stop_steps = self._steps()
            self._started = True
        began = time.monotonic()
        try:
            self.reporter.attach(summary=self.heartbeat_summary)
            self.broker.start()
            if self._attach_backplane is not None:
                self._attach_backplane(self._backplane)
            if self.scheduler is not None:
                self.scheduler.start()
            self.broker.request_heartbeat()  # the hello went out while starting: say "started"
        except BaseException:
            self.stop()
            raise
        logger.info(
            "started in %.2f s: %s, caches %s, job scheduler %s",
            time.monotonic() - began,
            self.broker,
            ", ".join(repr(name) for name in self.caches)
            or ("built outside" if self._attach_backplane is not None else "none"),
            "on" if self.scheduler is not None else "off (jobs role)",
        )

    async def start_async(self) -> None:
        """`start()` without blocking the caller's loop."""
        await asyncio.to_thread(self.start)

    def stop(self) -> None:
        """Stop the scheduler (running jobs finish or are asked to stop, within its
        shutdown_timeout), close the caches, stop the broker (within its stop_timeout; deletes
        the Service Bus subscription). A failing step is logged and the next one still runs.
        Idempotent; also closes what was built if `start()` never ran."""
        began = time.monotonic()
        for label, stop, _ in self._take_stop_steps():
            try:
                stop()
            except Exception:
                logger.warning("stopping the %s failed", label, exc_info=True)
        logger.info("stopped in %.2f s", time.monotonic() - began)

    async def stop_async(self) -> None:
        """`stop()` for asyncio code (closes the caches' Redis clients of this loop too)."""
        began = time.monotonic()
        for label, _, stop in self._take_stop_steps():
            try:
                await stop()
            except Exception:
                logger.warning("stopping the %s failed", label, exc_info=True)
        logger.info("stopped in %.2f s", time.monotonic() - began)

    def _backplane(self) -> Backplane:
        return EventBrokerBackplane(self.registry, self.broker, options=BackplaneOptions.from_env())

    def _steps(self) -> list[_StopStep]:
        steps: list[_StopStep] = []
        if self.scheduler is not None:
            steps.append(("job scheduler", self.scheduler.stop, self.scheduler.stop_async))
        attach = self._attach_backplane
        if attach is not None:

            def detach() -> None:
                attach(None)

            async def detach_async() -> None:
                await asyncio.to_thread(detach)

            steps.append(("backplane of the lazily built caches", detach, detach_async))
        steps += [
            (f"cache {name!r}", cache.close, cache.close_async)
            for name, cache in reversed(self.caches.items())
        ]
        steps.append(("farm reporter", self.reporter.detach, _async(self.reporter.detach)))
        steps.append(("event broker", self.broker.stop, self.broker.stop_async))
        return steps

    def _take_stop_steps(self) -> list[_StopStep]:
        with self._lock:
            steps = self._stop_steps if self._stop_steps is not None else self._steps()
            self._stop_steps = []
            self._started = False
            return steps

    def __enter__(self) -> AppServices:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> AppServices:
        await self.start_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    # ---------------------------------------------------------------- health

    def health_parts(self) -> list[Health]:
        """Each component's health: the broker, every cache, the scheduler (jobs role)."""
        checks: list[tuple[str, Callable[[], Health]]] = [
            (f"eventbroker {self.broker.options.application_name!r}", self.broker.health)
        ]
        checks += [(f"cache {name!r}", cache.health) for name, cache in self.caches.items()]
        if self.scheduler is not None:
            checks.append(("job scheduler", self.scheduler.health))
        return [_checked(component, check) for component, check in checks]

    def health(self) -> Health:
        """The worst status of the components, every reason prefixed by its component."""
        return Health.combine(*self.health_parts())

    def health_report(self) -> dict[str, Any]:
        """``{"status": ..., "reasons": [...], "components": [...]}``, JSON-ready, no secrets."""
        return health_report(self)

    def __repr__(self) -> str:
        state = "started" if self._started else "not started"
        return (
            f"<AppServices {state} broker={self.broker!r} caches={list(self.caches)} "
            f"scheduler={'on' if self.scheduler is not None else 'off'}>"
        )


def _async(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        fn()

    return run


def _checked(component: str, check: Callable[[], Health]) -> Health:
    """`check()`, or DOWN naming the error: a health check never raises."""
    try:
        return check()
    except Exception as exc:
        return Health(
            HealthStatus.DOWN, [f"health() failed: {type(exc).__name__}: {exc}"], component
        )


NOT_STARTED = Health(
    HealthStatus.DOWN,
    ["not started: the app's lifespan has not run (or failed); see the log"],
    "app services",
)
"""What the health report says before the services exist."""


def health_report(services: AppServices | None) -> dict[str, Any]:
    """The JSON body of a health endpoint: the combined status, every reason (prefixed by its
    component) and each component's own report; URLs and secret ``name=value`` pairs are
    redacted whatever a component put in its reasons."""
    return report_of([NOT_STARTED] if services is None else services.health_parts())


def http_status(report: Mapping[str, Any]) -> int:
    """The HTTP status of a health report: 200 when OK or DEGRADED (the instance serves), 503
    when DOWN."""
    return 503 if report["status"] == HealthStatus.DOWN.value else 200


def report_of(parts: Iterable[Health]) -> dict[str, Any]:
    """`health_report` of the components' health `parts`."""
    parts = list(parts)
    combined = Health.combine(*parts)
    return {
        "status": combined.status.value,
        "reasons": [redact_text(reason) for reason in combined.reasons],
        "components": [
            {**part.to_dict(), "reasons": [redact_text(r) for r in part.reasons]} for part in parts
        ],
    }
