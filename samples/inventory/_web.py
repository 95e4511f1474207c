"""The inventory web app (Starlette): product pages read through `HybridCache` with fail-safe.

A product page combines the row the import job wrote to the database with live data from the
inventory system (the next delivery). Both are loaded by one cache factory; when that load
fails (the inventory system is down) fail-safe serves the last good value, and the response
says so: ``"fresh": false``.

The broker and the cache come from the library's Starlette integration
(`eventbroker.contrib.starlette.EventBrokerLifespan`): it starts them with the app, stops them
with it (on SIGTERM too) and serves ``/healthz``. The library's farm view
(`eventbroker.contrib.farm`) is mounted at ``/_eventbroker`` (off unless a token is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from cache import EntryOptions, HybridCache
from eventbroker.contrib.farm import FarmSettings, farm_app
from eventbroker.contrib.starlette import AppServices, EventBrokerLifespan

from ._db import InventoryDb
from ._keys import ALL_PRODUCTS_KEY, product_key

log = logging.getLogger(__name__)


FARM_PATH = "/_eventbroker"
"""Where the farm view is mounted."""


class ProductNotFound(LookupError):
    pass


class _Freshness:
    """Tells whether a value returned by the cache is the fallback of a failed refresh.

    Every load and every failed load takes a number from one counter; a value loaded before
    the latest failed load of its key is the stale value fail-safe kept (also while fail-safe
    throttles retries), a value loaded after it is fresh.
    """

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._failed: dict[str, int] = {}

    def loaded(self) -> int:
        return next(self._counter)

    def failed(self, key: str) -> None:
        self._failed[key] = next(self._counter)

    def respond(self, key: str, value: dict[str, Any], name: str) -> JSONResponse:
        fresh = int(value["_load"]) > self._failed.get(key, 0)
        body = {k: v for k, v in value.items() if not k.startswith("_")}
        return JSONResponse({**body, "instance": name, "fresh": fresh, "stale": not fresh})


def create_app(
    *,
    name: str,
    services: EventBrokerLifespan,
    db: InventoryDb,
    feed_url: str,
    entry_options: EntryOptions,
    http: httpx.AsyncClient | None = None,
    on_started: Callable[[AppServices], None] | None = None,
    farm: FarmSettings | None = None,
) -> Starlette:
    """The web app of one instance called `name` (shown in every response).

    `services` runs the broker and the cache (``request.app.state.cache``); `on_started` is
    called once they run. The farm view is at ``/_eventbroker`` (`farm`: its settings, default
    from the environment: off without ``EVENTBROKER_FARM_TOKEN``).
    """
    feed = feed_url.rstrip("/")
    freshness = _Freshness()
    client = http or httpx.AsyncClient(timeout=5.0)

    async def load_product(sku: str) -> dict[str, Any]:
        key = product_key(sku)
        try:
            product = await asyncio.to_thread(db.get, sku)
            if product is None:
                raise ProductNotFound(sku)
            live = await client.get(f"{feed}/incoming/{sku}")
            live.raise_for_status()
            incoming = live.json()
        except ProductNotFound:
            raise
        except Exception:
            freshness.failed(key)
            raise
        return {
            "sku": product.sku,
            "name": product.name,
            "stock": product.stock,
            "price": product.price_cents / 100,
            "incoming": incoming["incoming"],
            "eta_days": incoming["eta_days"],
            "loaded_at": time.time(),
            "loaded_by": name,
            "_load": freshness.loaded(),
        }

    async def load_all() -> dict[str, Any]:
        try:
            products = await asyncio.to_thread(db.all)
        except Exception:
            freshness.failed(ALL_PRODUCTS_KEY)
            raise
        return {
            "products": [
                {"sku": p.sku, "name": p.name, "stock": p.stock, "price": p.price_cents / 100}
                for p in products
            ],
            "loaded_at": time.time(),
            "_load": freshness.loaded(),
        }

    async def product(request: Request) -> JSONResponse:
        cache: HybridCache = request.app.state.cache
        sku = request.path_params["sku"]
        key = product_key(sku)
        try:
            value: dict[str, Any] = await cache.get_or_set_async(
                key, lambda: load_product(sku), entry_options
            )
        except ProductNotFound:
            return JSONResponse({"error": f"no product {sku}", "instance": name}, status_code=404)
        except Exception as exc:
            log.warning("product %s unavailable and no last good value: %s", sku, exc)
            return JSONResponse(
                {"error": f"product {sku} unavailable: {exc}", "instance": name}, status_code=503
            )
        return freshness.respond(key, value, name)

    async def products(request: Request) -> JSONResponse:
        cache: HybridCache = request.app.state.cache
        try:
            value: dict[str, Any] = await cache.get_or_set_async(
                ALL_PRODUCTS_KEY, load_all, entry_options
            )
        except Exception as exc:
            return JSONResponse({"error": str(exc), "instance": name}, status_code=503)
        return freshness.respond(ALL_PRODUCTS_KEY, value, name)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # the app's own lifespan around the integration's: broker and cache run inside it
        async with services(app):
            if on_started is not None:
                on_started(app.state.services)
            try:
                yield
            finally:
                if http is None:
                    await client.aclose()

    return Starlette(
        routes=[
            Route("/products/{sku}", product),
            Route("/products", products),
            services.health_route("/healthz"),
            Mount(FARM_PATH, farm_app(services, settings=farm)),
        ],
        lifespan=lifespan,
    )
