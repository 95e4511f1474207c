"""The Starlette/FastAPI integration: lifespan, app.state, jobs role, health route, stop order."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import redis
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cache import HybridCache
from cache.eventbroker_backplane import EventBrokerBackplane
from eventbroker import (
    ConnectionState,
    EventBroker,
    EventBrokerOptions,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
)
from eventbroker.contrib.starlette import (
    AppServices,
    EventBrokerLifespan,
    app_services,
    health_endpoint,
    health_route,
)
from eventbroker.testing import LoopbackServiceBus
from jobs import CacheInvalidator, JobContext, JobScheduler, ScheduledJob

from ._jobs_helpers import CountingJob
from ._support import wait_until
from .servicebus_support import TOPIC

ROOT = Path(__file__).resolve().parent.parent
Services = Annotated[AppServices, Depends(app_services)]
SECRET = "starlette-integration-secret-0123"
ENV = {"EVENTBROKER_SECRET": SECRET, "EVENTBROKER_APPLICATION_NAME": "shop"}


def app_with(lifespan: EventBrokerLifespan) -> Starlette:
    return Starlette(lifespan=lifespan, routes=[health_route()])


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_health_is_down_with_503_before_the_lifespan_ran() -> None:
    client = TestClient(app_with(EventBrokerLifespan(environ=ENV)))  # no `with`: no lifespan
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert "not started" in body["reasons"][0]
    assert [c["status"] for c in body["components"]] == ["down"]
    assert response.headers["cache-control"] == "no-store"


def test_lifespan_starts_exposes_on_app_state_and_stops_everything() -> None:
    app = app_with(EventBrokerLifespan(environ=ENV))
    with TestClient(app) as client:
        state = app.state
        broker: EventBroker = state.broker
        assert broker.is_started and broker.connection_state is ConnectionState.CONNECTED
        assert type(broker.transport) is InMemoryTransport  # no Service Bus configured
        assert state.registry.broker is broker
        assert state.caches == {"default": state.cache} and not state.cache.closed
        assert state.scheduler is None  # jobs role off by default
        assert state.services.broker is broker
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "reasons": [],
            "components": [
                {"status": "ok", "component": "eventbroker 'shop'", "reasons": []},
                {"status": "ok", "component": "cache 'default'", "reasons": []},
            ],
        }
    assert not broker.is_started and state.cache.closed
    after = client.get("/healthz")
    assert after.status_code == 503 and after.json()["status"] == "down"


def test_built_caches_keep_their_l2_keys_in_redis_under_prefix_and_name() -> None:
    prefix = f"test-starlette:{uuid.uuid4().hex}:"
    env = {**ENV, "CACHE_REDIS_URL": "redis://127.0.0.1:6379/0", "CACHE_REDIS_KEY_PREFIX": prefix}
    app = app_with(EventBrokerLifespan(caches=["items", "prices"], environ=env))
    direct = redis.Redis(host="127.0.0.1", port=6379)
    try:
        with TestClient(app) as client:
            app.state.caches["items"].set("k", {"v": 1})
            app.state.caches["prices"].set("k", {"v": 2})
            assert app.state.cache is app.state.caches["items"]
            assert client.get("/healthz").json()["status"] == "ok"
        assert sorted(direct.keys(f"{prefix}*")) == [
            f"{prefix}items:k".encode(),
            f"{prefix}prices:k".encode(),
        ]
    finally:
        for key in direct.scan_iter(f"{prefix}*"):
            direct.delete(key)
        direct.close()


def test_health_degraded_200_when_redis_is_down_and_no_secret_in_it(closed_port: int) -> None:
    env = {**ENV, "CACHE_REDIS_URL": f"redis://:redis-pass-9f8e@127.0.0.1:{closed_port}/0"}
    app = app_with(EventBrokerLifespan(environ=env))
    with TestClient(app) as client:
        assert app.state.cache.get_or_set("k", lambda: "from the factory") == "from the factory"
        response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    [reason] = body["reasons"]
    assert reason.startswith("cache 'default': distributed cache (Redis 127.0.0.1:")
    assert [c["status"] for c in body["components"]] == ["ok", "degraded"]
    assert "redis-pass-9f8e" not in response.text and SECRET not in response.text


def test_a_startup_error_names_the_setting_and_the_app_does_not_start() -> None:
    app = app_with(EventBrokerLifespan(environ={}))
    with pytest.raises(ValueError, match="EVENTBROKER_SECRET"), TestClient(app):
        pass


class InvalidateOnStop(ScheduledJob):
    """Runs until asked to stop, then invalidates a key: what an import does with its last
    batch when the instance shuts down."""

    id = uuid.UUID("5a7e0b1c-0000-4000-8000-0000000000f1")
    stoppable = True

    def __init__(self, registry: EventRegistry) -> None:
        self.registry = registry
        self.invalidator = CacheInvalidator.for_registry(registry, publish_timeout=1.0)
        self.started = threading.Event()
        self.sent: int | None = None

    def execute(self, ctx: JobContext) -> str:
        self.started.set()
        while not ctx.stop_requested:
            time.sleep(0.01)
        self.sent = self.invalidator.invalidate(["k"])
        return "stopped"


def test_jobs_role_runs_the_scheduler_and_stops_it_before_the_broker(tmp_path: Path) -> None:
    """The scheduler stops first: a job finishing its work on shutdown can still tell the other
    instances (their caches expire the key)."""
    hub = InMemoryHub()
    options = EventBrokerOptions(secret=SECRET, application_name="shop")
    made: list[InvalidateOnStop] = []

    def jobs(registry: EventRegistry) -> list[ScheduledJob]:
        made.append(InvalidateOnStop(registry))
        return list(made)

    worker = AppServices.build(
        transport=InMemoryTransport(hub),
        broker_options=options,
        caches=(),
        jobs=jobs,
        jobs_store=str(tmp_path / "jobs.sqlite3"),
        environ={"JOBS_RUN_SCHEDULER": "yes"},
    )
    web = AppServices.build(
        transport=InMemoryTransport(hub), broker_options=options, caches=["items"], environ={}
    )
    assert web.scheduler is None
    [job] = made
    assert job.registry is worker.registry
    with web:
        web.cache.set("k", "old")
        worker.start()
        assert isinstance(worker.scheduler, JobScheduler)
        assert worker.health().is_ok, worker.health()
        worker.scheduler.run_now(job.id)
        assert job.started.wait(10)
        worker.stop()
        assert job.sent == 1
        hub.drain()
        assert web.cache.get_or_set("k", lambda: "new") == "new"
    assert not worker.broker.is_started
    assert "stopped" in str(worker.health())


@pytest.mark.parametrize(
    ("environ", "run_jobs", "runs"),
    [
        ({}, None, False),
        ({"JOBS_RUN_SCHEDULER": "true"}, None, True),
        ({"JOBS_RUN_SCHEDULER": "0"}, None, False),
        ({"JOBS_RUN_SCHEDULER": "false"}, True, True),  # the argument wins
        ({"JOBS_RUN_SCHEDULER": "1"}, False, False),
    ],
)
def test_one_setting_decides_the_jobs_role(
    tmp_path: Path, environ: dict[str, str], run_jobs: bool | None, runs: bool
) -> None:
    args: dict[str, Any] = {} if run_jobs is None else {"run_jobs": run_jobs}
    env = {**ENV, **environ, "JOBS_STORE": str(tmp_path / "jobs.sqlite3")}
    app = app_with(EventBrokerLifespan(jobs=[CountingJob(None)], environ=env, **args))
    with TestClient(app) as client:
        scheduler = app.state.scheduler
        components = [c["component"] for c in client.get("/healthz").json()["components"]]
        assert (scheduler is not None) is runs
        assert any(c.startswith("job scheduler") for c in components) is runs
        if runs:
            assert scheduler.health().is_ok
    if runs:
        assert not scheduler.health().is_ok  # stopped with the app


def test_jobs_role_settings_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"JOBS_RUN_SCHEDULER='maybe' is not a boolean"):
        AppServices.build(jobs=[CountingJob(None)], environ={**ENV, "JOBS_RUN_SCHEDULER": "maybe"})
    with pytest.raises(ValueError, match=r"the jobs role is on .* but no jobs were given"):
        AppServices.build(environ={**ENV, "JOBS_RUN_SCHEDULER": "on"})


def test_the_scheduler_may_be_a_function_of_the_registry_called_on_the_jobs_role_only(
    tmp_path: Path,
) -> None:
    made: list[EventRegistry] = []

    def build(registry: EventRegistry) -> JobScheduler:
        made.append(registry)
        return JobScheduler(store=tmp_path / "jobs.sqlite3", registry=registry)

    off = AppServices.build(caches=(), scheduler=build, run_jobs=False, environ=ENV)
    assert off.scheduler is None and made == []
    on = AppServices.build(caches=(), scheduler=build, run_jobs=True, environ=ENV)
    assert made == [on.registry]
    assert isinstance(on.scheduler, JobScheduler)
    with on:
        assert on.scheduler.health().is_ok
    assert not on.scheduler.health().is_ok


def test_caches_built_later_get_the_backplane_once_the_broker_runs_and_lose_it_before_it_stops(
    tmp_path: Path,
) -> None:
    """`attach_backplane` serves caches built outside, lazily (Django's cache framework): it is
    called with a backplane factory after the broker started and before the scheduler starts,
    and with None after the scheduler stopped and before the broker stops (sync and async)."""
    seen: list[tuple[str, bool, bool]] = []
    services: list[AppServices] = []

    def attach(factory: Any) -> None:
        current = services[-1]
        assert current.scheduler is not None
        if factory is not None:
            backplane = factory()
            assert isinstance(backplane, EventBrokerBackplane)
            assert backplane.broker is current.broker
        seen.append(
            (
                "attach" if factory is not None else "detach",
                current.broker.is_started,
                current.scheduler.health().is_ok,
            )
        )

    def build() -> AppServices:
        services.append(
            AppServices.build(
                caches=(),
                jobs=[],
                run_jobs=True,
                jobs_store=str(tmp_path / f"jobs{len(services)}.sqlite3"),
                attach_backplane=attach,
                environ=ENV,
            )
        )
        return services[-1]

    with build():
        assert seen == [("attach", True, False)]  # broker running, scheduler not yet
    assert seen[1:] == [("detach", True, False)]  # scheduler stopped, broker not yet

    seen.clear()
    lifespan = EventBrokerLifespan(
        caches=(),
        jobs=[],
        run_jobs=True,
        attach_backplane=attach,
        environ=ENV,
        jobs_store=str(tmp_path / "lifespan.sqlite3"),
    )
    original = AppServices.build

    def recording_build(**args: Any) -> AppServices:
        services.append(original(**args))
        return services[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AppServices, "build", staticmethod(recording_build))
        with TestClient(app_with(lifespan)):
            assert seen == [("attach", True, False)]
    assert seen[1:] == [("detach", True, False)]


def test_ready_objects_are_started_and_stopped_with_the_app() -> None:
    broker = EventBroker(InMemoryTransport(InMemoryHub()), EventBrokerOptions(secret=SECRET))
    registry = EventRegistry(broker)
    cache = HybridCache()
    app = app_with(EventBrokerLifespan(broker=broker, registry=registry, caches=[cache]))
    with TestClient(app):
        assert broker.is_started and app.state.cache is cache and app.state.registry is registry
    assert not broker.is_started and cache.closed
    with pytest.raises(TypeError, match="either a ready broker or transport"):
        AppServices.build(broker=broker, transport=InMemoryTransport(InMemoryHub()))
    with pytest.raises(TypeError, match=r"unknown AppServices setting\(s\) \['cachez'\]"):
        AppServices.build(cachez=["items"], environ=ENV)  # type: ignore[call-arg]


def test_your_lifespan_runs_inside_with_everything_started() -> None:
    seen: list[tuple[str, bool]] = []

    @contextlib.asynccontextmanager
    async def mine(app: Starlette) -> AsyncIterator[None]:
        seen.append(("startup", app.state.broker.is_started))
        yield
        seen.append(("shutdown", app.state.broker.is_started))

    app = app_with(EventBrokerLifespan(environ=ENV, lifespan=mine))
    with TestClient(app):
        pass
    assert seen == [("startup", True), ("shutdown", True)]
    assert not app.state.broker.is_started


def test_fastapi_lifespan_nested_in_a_stateful_one_with_depends_and_health() -> None:
    services = EventBrokerLifespan(caches=["items"], environ=ENV)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        async with services(app):
            yield {"greeting": "hello"}

    app = FastAPI(lifespan=lifespan)
    app.router.routes.append(health_route("/healthz"))
    app.get("/health")(health_endpoint)  # the other way to mount it in FastAPI
    loads: list[str] = []

    @app.get("/items/{key}")
    async def item(key: str, request: Request, services: Services) -> dict[str, Any]:
        async def load() -> dict[str, Any]:
            loads.append(key)
            return {"key": key}

        value = await services.cache.get_or_set_async(key, load)
        return {**value, "greeting": request.state.greeting}

    with TestClient(app) as client:
        assert client.get("/items/a").json() == {"key": "a", "greeting": "hello"}
        assert client.get("/items/a").json() == {"key": "a", "greeting": "hello"}
        assert loads == ["a"]
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/health").json()["status"] == "ok"
    assert client.get("/healthz").status_code == 503
    assert client.get("/health").status_code == 503


def test_bound_health_route_works_in_a_mounted_sub_app() -> None:
    services = EventBrokerLifespan(environ=ENV)

    async def home(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    from starlette.routing import Mount

    ops = Starlette(routes=[services.health_route("/health")])
    app = Starlette(lifespan=services, routes=[Route("/", home), Mount("/ops", app=ops)])
    with TestClient(app) as client:
        assert client.get("/ops/health").json()["status"] == "ok"


def test_without_starlette_the_import_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "try:\n"
        "    import eventbroker.contrib.starlette\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert 'pip install "eventbroker-cache[starlette]"' in result.stdout, result.stderr


def test_service_bus_down_at_start_the_app_serves_degraded_then_recovers(
    servicebus_broker: LoopbackServiceBus,
) -> None:
    bus = servicebus_broker
    env = {
        **ENV,
        "EVENTBROKER_SERVICEBUS_CONNECTION_STRING": bus.connection_string,
        "EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT": bus.admin_endpoint,
        "EVENTBROKER_SERVICEBUS_TOPIC": TOPIC,
        "EVENTBROKER_SERVICEBUS_RECONNECT_INITIAL_BACKOFF": "0.05",
        "EVENTBROKER_SERVICEBUS_RECONNECT_MAX_BACKOFF": "0.5",
        "EVENTBROKER_SERVICEBUS_SDK_RETRY_TOTAL": "0",
    }
    app = app_with(EventBrokerLifespan(environ=env))
    with contextlib.ExitStack() as running:
        refusing = contextlib.ExitStack()
        refusing.enter_context(bus.connections_refused())
        client = running.enter_context(TestClient(app))  # starts while Service Bus is down
        app.state.cache.set("k", "served from memory meanwhile")
        assert app.state.cache.get("k") == "served from memory meanwhile"
        response = client.get("/healthz")
        assert response.status_code == 200 and response.json()["status"] == "degraded"
        assert "SharedAccessKey" not in response.text
        refusing.close()  # the namespace is back: the transport connects by itself
        wait_until(lambda: client.get("/healthz").json()["status"] == "ok", timeout=30)
