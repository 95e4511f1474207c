"""The inventory web app: fresh and stale responses, 404, 503, list and health."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cache import CacheOptions, EntryOptions, HybridCache
from eventbroker import EventBrokerOptions, InMemoryHub, InMemoryTransport
from eventbroker.contrib.starlette import EventBrokerLifespan
from samples.inventory._db import InventoryDb, Product
from samples.inventory._feed import InventoryFeed
from samples.inventory._web import create_app

FAIL_SAFE = EntryOptions(duration=60, is_fail_safe_enabled=True, fail_safe_throttle_duration=30)
KEY = "inventory:product:SKU-001"


@pytest.fixture
def feed() -> Iterator[InventoryFeed]:
    with InventoryFeed() as feed:
        yield feed


@pytest.fixture
def db(tmp_path: Path) -> InventoryDb:
    db = InventoryDb(tmp_path / "inventory.sqlite3")
    db.upsert([Product("SKU-001", "Trail running shoe", 10, 990)])
    return db


@pytest.fixture
def cache() -> Iterator[HybridCache]:
    with HybridCache(CacheOptions(name="inventory")) as cache:
        yield cache


@contextlib.asynccontextmanager
async def client(
    db: InventoryDb, cache: HybridCache, feed: InventoryFeed
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running (the integration starts a broker, serves `cache`)."""
    services = EventBrokerLifespan(
        transport=InMemoryTransport(InMemoryHub()),
        broker_options=EventBrokerOptions(secret="inventory-web-test-secret"),
        caches=[cache],
        environ={},
    )
    app = create_app(
        name="web-x", services=services, db=db, feed_url=feed.url, entry_options=FAIL_SAFE
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://web-x") as web,
    ):
        yield web


async def test_product_fresh_then_stale_when_the_reload_fails(
    db: InventoryDb, cache: HybridCache, feed: InventoryFeed
) -> None:
    async with client(db, cache, feed) as web:
        first = (await web.get("/products/SKU-001")).json()
        assert (first["stock"], first["fresh"], first["instance"]) == (10, True, "web-x")
        assert first["incoming"] >= 0 and "_load" not in first
        db.upsert([Product("SKU-001", "Trail running shoe", 3, 990)])
        cache.expire(KEY, FAIL_SAFE)  # what the import job's invalidation does remotely
        feed.failing = True
        stale = await web.get("/products/SKU-001")
        assert stale.status_code == 200
        assert (stale.json()["stock"], stale.json()["fresh"], stale.json()["stale"]) == (
            10,
            False,
            True,
        )
        again = (await web.get("/products/SKU-001")).json()  # throttled retries: still stale
        assert (again["stock"], again["fresh"]) == (10, False)
        feed.failing = False
        cache.expire(KEY, FAIL_SAFE)
        fresh = (await web.get("/products/SKU-001")).json()
        assert (fresh["stock"], fresh["fresh"]) == (3, True)


async def test_unknown_product_404_and_no_last_good_value_503(
    db: InventoryDb, cache: HybridCache, feed: InventoryFeed
) -> None:
    async with client(db, cache, feed) as web:
        missing = await web.get("/products/SKU-404")
        assert missing.status_code == 404 and "no product SKU-404" in missing.json()["error"]
        feed.failing = True
        down = await web.get("/products/SKU-001")
        assert down.status_code == 503 and "unavailable" in down.json()["error"]


async def test_list_and_health(db: InventoryDb, cache: HybridCache, feed: InventoryFeed) -> None:
    async with client(db, cache, feed) as web:
        listing = (await web.get("/products")).json()
        assert [p["sku"] for p in listing["products"]] == ["SKU-001"] and listing["fresh"] is True
        health = await web.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert [c["component"] for c in health.json()["components"]] == [
            "eventbroker 'default'",
            "cache 'inventory'",
        ]
