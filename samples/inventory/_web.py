"""The inventory web app (Starlette): product pages read through `HybridCache` with fail-safe.

A product page combines the row the import job wrote to the database with live data from the
inventory system (the next delivery). Both are loaded by one cache factory; when that load
fails (the inventory system is down) fail-safe serves the last good value, and the response
says so: ``"fresh": false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cache import EntryOptions, HybridCache

from ._db import InventoryDb
from ._keys import ALL_PRODUCTS_KEY, product_key

log = logging.getLogger(__name__)


class ProductNotFound(LookupError):
    pass


class _Freshness:
    """Tells whether a value returned by the cache is the fallback of a failed refresh.

    Each loaded value carries ``loaded_at``; a value loaded before the latest failed refresh
    of its key is the stale value fail-safe kept (also while fail-safe throttles retries).
    """

    def __init__(self) -> None:
        self._failed_at: dict[str, float] = {}

    def failed(self, key: str) -> None:
        self._failed_at[key] = time.time()

    def is_fresh(self, key: str, value: dict[str, Any]) -> bool:
        return float(value["loaded_at"]) > self._failed_at.get(key, 0.0)


def create_app(
    *,
    name: str,
    cache: HybridCache,
    db: InventoryDb,
    feed_url: str,
    entry_options: EntryOptions,
    http: httpx.AsyncClient | None = None,
) -> Starlette:
    """The web app of one instance called `name` (shown in every response)."""
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
        }

    async def load_all() -> dict[str, Any]:
        products = await asyncio.to_thread(db.all)
        return {
            "products": [
                {"sku": p.sku, "name": p.name, "stock": p.stock, "price": p.price_cents / 100}
                for p in products
            ],
            "loaded_at": time.time(),
        }

    async def product(request: Request) -> JSONResponse:
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
        fresh = freshness.is_fresh(key, value)
        return JSONResponse({**value, "instance": name, "fresh": fresh, "stale": not fresh})

    async def products(request: Request) -> JSONResponse:
        try:
            value: dict[str, Any] = await cache.get_or_set_async(
                ALL_PRODUCTS_KEY, load_all, entry_options
            )
        except Exception as exc:
            freshness.failed(ALL_PRODUCTS_KEY)
            return JSONResponse({"error": str(exc), "instance": name}, status_code=503)
        fresh = freshness.is_fresh(ALL_PRODUCTS_KEY, value)
        return JSONResponse({**value, "instance": name, "fresh": fresh, "stale": not fresh})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "instance": name, "cache_entries": cache.memory_count})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if http is None:
            await client.aclose()

    return Starlette(
        routes=[
            Route("/products/{sku}", product),
            Route("/products", products),
            Route("/health", health),
        ],
        lifespan=lifespan,
    )
