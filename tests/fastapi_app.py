"""A small FastAPI app on the Starlette integration, run by uvicorn in the two-process test.

``python -m uvicorn tests.fastapi_app:app``; every setting comes from the environment
(``EVENTBROKER_*``, ``EVENTBROKER_SERVICEBUS_*``, ``CACHE_*``); ``TEST_INSTANCE`` names the
process in its answers.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from eventbroker.contrib.starlette import (
    AppServices,
    EventBrokerLifespan,
    app_services,
    health_route,
)

INSTANCE = os.environ.get("TEST_INSTANCE", "?")
Services = Annotated[AppServices, Depends(app_services)]

# the library's INFO lines (a few per start and stop) next to uvicorn's
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("azure").setLevel(logging.WARNING)

app = FastAPI(lifespan=EventBrokerLifespan(caches=["items"]))
app.router.routes.append(health_route("/healthz"))


@app.get("/items/{key}")
async def read(key: str, services: Services) -> dict[str, Any]:
    """The cached value, loaded by this instance if no instance had it."""

    async def load() -> dict[str, Any]:
        return {"value": f"loaded by {INSTANCE}"}

    value: dict[str, Any] = await services.cache.get_or_set_async(key, load)
    return {**value, "served_by": INSTANCE}


@app.put("/items/{key}")
async def write(key: str, value: dict[str, Any], services: Services) -> dict[str, str]:
    """A write: the new value goes to this instance's memory and Redis, and every other
    instance is told that its copy is stale."""
    await services.cache.set_async(key, value)
    return {"written_by": INSTANCE}


@app.get("/subscription")
async def subscription(services: Services) -> dict[str, Any]:
    """This instance's Service Bus subscription."""
    return {"name": getattr(services.broker.transport, "subscription_name", None)}
