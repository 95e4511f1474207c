"""Starlette and FastAPI: a lifespan that runs the broker, caches and job scheduler, and a
health route. Needs ``pip install "eventbroker-cache[starlette]"`` (FastAPI already has it).

```python
from fastapi import FastAPI, Request
from eventbroker.contrib.starlette import EventBrokerLifespan, health_route

services = EventBrokerLifespan(caches=["products"])   # the rest from EVENTBROKER_* / CACHE_* / JOBS_*
app = FastAPI(lifespan=services)
app.router.routes.append(health_route("/healthz"))    # 200 OK/DEGRADED, 503 DOWN


@app.get("/products/{sku}")
async def product(sku: str, request: Request) -> dict[str, object]:
    return await request.app.state.cache.get_or_set_async(f"product:{sku}", lambda: load(sku))
```

At startup the lifespan builds what was not given (`AppServicesArgs`), starts the broker, then
the scheduler (on the jobs role: ``JOBS_RUN_SCHEDULER=true``), and sets on ``app.state``:

- ``app.state.services``: the `AppServices` (in a handler also `app_services(request)`)
- ``app.state.broker``: the `EventBroker`; ``app.state.registry``: its `EventRegistry`
- ``app.state.caches``: the `HybridCache` objects by name; ``app.state.cache``: the first one
  (None when there is none)
- ``app.state.scheduler``: the `jobs.JobScheduler`, None unless this instance runs jobs

At shutdown (also on SIGTERM under uvicorn) it stops the scheduler, closes the caches and stops
the broker, which deletes its Service Bus subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Unpack

try:
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without starlette
    raise ModuleNotFoundError(
        "eventbroker.contrib.starlette needs Starlette: "
        'pip install "eventbroker-cache[starlette]" (FastAPI includes it)',
        name=exc.name,
    ) from exc

from ._services import (
    JOBS_RUN_SCHEDULER,
    AppServices,
    AppServicesArgs,
    health_report,
    http_status,
    transport_from_env,
)

__all__ = [
    "JOBS_RUN_SCHEDULER",
    "AppServices",
    "AppServicesArgs",
    "EventBrokerLifespan",
    "app_services",
    "health_endpoint",
    "health_report",
    "health_route",
    "transport_from_env",
]

UserLifespan = Callable[[Any], AbstractAsyncContextManager[None]]
"""Your own (stateless) lifespan; for one that yields state, nest this lifespan in it."""

_STATE_NAMES = ("services", "broker", "registry", "caches", "cache", "scheduler")


class EventBrokerLifespan:
    """A Starlette/FastAPI lifespan: ``Starlette(lifespan=EventBrokerLifespan(...))``.

    Keyword arguments are `AppServicesArgs` (ready objects, or what to build from settings);
    `lifespan` is your own lifespan, run inside this one (it sees ``app.state.cache`` and the
    others). Or nest this one in yours (also when yours yields state):
    ``async with services(app): yield``. Each run builds new services from the settings; ready
    objects you pass are started and stopped with the app, so they serve one run.
    """

    def __init__(
        self, *, lifespan: UserLifespan | None = None, **args: Unpack[AppServicesArgs]
    ) -> None:
        self._args = args
        self._lifespan = lifespan
        self.services: AppServices | None = None
        """The running services (None before the first startup)."""

    def __call__(self, app: Any) -> AbstractAsyncContextManager[None]:
        return self._run(app)

    @contextlib.asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[None]:
        # building may open the job store (file or database I/O): off the event loop
        services = await asyncio.to_thread(lambda: AppServices.build(**self._args))
        self.services = services
        try:
            await services.start_async()
            _expose(app, services)
            if self._lifespan is None:
                yield
            else:
                async with self._lifespan(app):
                    yield
        finally:
            await services.stop_async()

    def health_route(self, path: str = "/healthz", *, name: str = "healthz") -> Route:
        """A health route for these services, wherever it is mounted (see `health_route`)."""

        async def endpoint(request: Request) -> JSONResponse:
            return _health_response(self.services)

        return Route(path, endpoint, methods=["GET"], name=name)


def _expose(app: Any, services: AppServices) -> None:
    state = app.state
    values = (
        services,
        services.broker,
        services.registry,
        services.caches,
        next(iter(services.caches.values()), None),
        services.scheduler,
    )
    for name, value in zip(_STATE_NAMES, values, strict=True):
        setattr(state, name, value)


def app_services(connection: HTTPConnection) -> AppServices:
    """The `AppServices` of the app serving this request (``request.app.state.services``);
    also a FastAPI dependency: ``services: AppServices = Depends(app_services)``."""
    services = getattr(connection.app.state, "services", None)
    if not isinstance(services, AppServices):
        raise RuntimeError(
            "no AppServices on app.state: pass EventBrokerLifespan(...) as the app's lifespan "
            "(Starlette(lifespan=...) or FastAPI(lifespan=...)) and let it start"
        )
    return services


def _health_response(services: AppServices | None) -> JSONResponse:
    report = health_report(services)
    return JSONResponse(
        report,
        status_code=http_status(report),
        headers={"Cache-Control": "no-store"},
    )


async def health_endpoint(request: Request) -> JSONResponse:
    """The health of the app's services: 200 when OK or DEGRADED, 503 when DOWN (also before
    the lifespan ran), body ``{"status": ..., "reasons": [...], "components": [...]}``."""
    services = getattr(request.app.state, "services", None)
    return _health_response(services if isinstance(services, AppServices) else None)


def health_route(path: str = "/healthz", *, name: str = "healthz") -> Route:
    """``Route(path, health_endpoint)``: ``Starlette(routes=[health_route()])``, or
    ``app.router.routes.append(health_route())`` in FastAPI. It reads ``app.state.services`` of
    the app it is in; in a mounted sub-app use `EventBrokerLifespan.health_route` instead."""
    return Route(path, health_endpoint, methods=["GET"], name=name)
