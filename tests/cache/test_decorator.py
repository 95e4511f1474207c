"""`@cache.cached(key=..., tags=..., options=...)` for sync and async functions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cache import EntryOptions, HybridCache

from .conftest import FakeClock

MakeCache = Callable[..., HybridCache]


def test_cached_function_is_called_once_per_key(make_cache: MakeCache) -> None:
    cache = make_cache()
    calls: list[int] = []

    @cache.cached()
    def load(product_id: int, currency: str = "EUR") -> str:
        """Load a price."""
        calls.append(product_id)
        return f"{product_id} {currency}"

    assert load(1) == "1 EUR" and load(1) == "1 EUR" and load(product_id=1) == "1 EUR"
    assert load(2, "USD") == "2 USD"
    assert calls == [1, 2]
    assert load.__name__ == "load" and load.__doc__ == "Load a price."
    key = load.cache_key(1)  # type: ignore[attr-defined]
    assert key.endswith("load(product_id=1, currency='EUR')")
    cache.remove(key)
    load(1)
    assert calls == [1, 2, 1]


def test_key_template_tags_and_options(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache()
    calls = 0

    @cache.cached(
        key="product:{product_id}",
        tags=["products", "category:{category}"],
        options=EntryOptions(duration=100),
    )
    def load(product_id: int, category: str) -> dict[str, object]:
        nonlocal calls
        calls += 1
        return {"id": product_id, "category": category}

    assert load(7, "shoes") == {"id": 7, "category": "shoes"}
    assert cache.get("product:7") == {"id": 7, "category": "shoes"}
    clock.advance(50)
    load(7, "shoes")
    assert calls == 1
    cache.remove_by_tag("category:shoes")
    load(7, "shoes")
    assert calls == 2


def test_key_and_tags_as_callables(make_cache: MakeCache) -> None:
    cache = make_cache()

    @cache.cached(
        key=lambda user, page: f"u:{user['id']}:{page}",
        tags=lambda user, page: [f"user:{user['id']}"],
    )
    def feed(user: dict[str, int], page: int) -> str:
        return f"feed {user['id']} {page}"

    assert feed({"id": 3}, 1) == "feed 3 1"
    assert cache.get("u:3:1") == "feed 3 1"
    cache.expire_by_tag("user:3")
    assert cache.get("u:3:1") is None


async def test_cached_async_function(make_cache: MakeCache) -> None:
    cache = make_cache()
    calls = 0

    @cache.cached(key="price:{product_id}")
    async def price(product_id: int) -> float:
        nonlocal calls
        calls += 1
        return 9.5

    assert await price(1) == 9.5 and await price(1) == 9.5
    assert calls == 1
    assert await cache.get_async("price:1") == 9.5


def test_bad_templates_name_the_arguments(make_cache: MakeCache) -> None:
    cache = make_cache()

    @cache.cached(key="product:{id}")
    def load(product_id: int) -> int:
        return product_id

    with pytest.raises(ValueError, match=r"'id'.*\(product_id\)"):
        load(1)
    with pytest.raises(TypeError, match="list of tags"):
        cache.cached(tags="products")  # type: ignore[arg-type]
