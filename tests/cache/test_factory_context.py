"""The factory context: adaptive caching, conditional refresh (ETag / Last-Modified),
`ctx.fail`, and `fail_safe_default_value`."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cache import (
    CacheOptions,
    EntryOptions,
    FactoryContext,
    FactoryFailedError,
    HybridCache,
    MemoryDistributedCache,
)

from .conftest import Counter, FakeClock

MakeCache = Callable[..., HybridCache]
FAIL_SAFE = EntryOptions(duration=10, is_fail_safe_enabled=True, fail_safe_throttle_duration=3)


def test_adaptive_caching_sets_the_duration_from_the_data(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(EntryOptions(duration=10))
    calls = 0

    def load(ctx: FactoryContext[dict[str, object]]) -> dict[str, object]:
        nonlocal calls
        calls += 1
        product = {"id": 1, "archived": True}
        if product["archived"]:
            ctx.options = ctx.options.duplicate(duration=600)
        return product

    cache.get_or_set("p", load)
    clock.advance(300)
    assert cache.get_or_set("p", load)["archived"] is True
    assert calls == 1


def test_adaptive_tags_are_stored_with_the_value(make_cache: MakeCache) -> None:
    cache = make_cache()

    def load(ctx: FactoryContext[str]) -> str:
        ctx.tags = [*ctx.tags, "category:shoes"]
        return "boot"

    assert cache.get_or_set("p", load, tags=["products"]) == "boot"
    cache.remove_by_tag("category:shoes")
    assert cache.get("p") is None


def test_conditional_refresh_keeps_a_not_modified_value_and_renews_it(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(FAIL_SAFE)  # fail-safe keeps the expired value for the refresh
    seen: list[tuple[bool, object, str | None, float | None]] = []

    def load(ctx: FactoryContext[str]) -> str:
        seen.append((ctx.has_stale_value, ctx.stale_value, ctx.etag, ctx.last_modified))
        if ctx.etag == '"v1"':
            return ctx.not_modified()
        return ctx.modified("body", etag='"v1"', last_modified=1_600_000_000.0)

    assert cache.get_or_set("page", load) == "body"
    clock.advance(11)  # expired: the factory sees the old value and its ETag
    assert cache.get_or_set("page", load) == "body"
    assert seen == [(False, None, None, None), (True, "body", '"v1"', 1_600_000_000.0)]
    clock.advance(9)  # renewed at the second call: still fresh
    assert cache.get("page") == "body"
    assert len(seen) == 2


def test_conditional_refresh_sees_the_etag_from_l2_on_another_instance(clock: FakeClock) -> None:
    l2 = MemoryDistributedCache(clock=clock)
    options = CacheOptions(name="t", default_entry_options=FAIL_SAFE)
    etags: list[str | None] = []

    def load(ctx: FactoryContext[str]) -> str:
        etags.append(ctx.etag)
        return ctx.not_modified() if ctx.has_stale_value else ctx.modified("v", etag="e1")

    with HybridCache(options, l2, clock=clock) as first:
        first.get_or_set("page", load)
    clock.advance(11)
    with HybridCache(options, l2, clock=clock) as second:
        assert second.get_or_set("page", load) == "v"
    assert etags == [None, "e1"]


def test_not_modified_without_an_older_value_is_an_error(make_cache: MakeCache) -> None:
    cache = make_cache()
    with pytest.raises(ValueError, match="holds no older value"):
        cache.get_or_set("k", lambda ctx: ctx.not_modified())


def test_ctx_fail_activates_fail_safe_without_an_exception(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(FAIL_SAFE)
    cache.set("k", "good")
    clock.advance(11)
    assert cache.get_or_set("k", lambda ctx: ctx.fail("upstream 503")) == "good"
    assert cache.stats.fail_safe_activations == 1
    assert cache.stats.factory_errors == 1


def test_ctx_fail_with_nothing_to_serve_raises_factory_failed(make_cache: MakeCache) -> None:
    cache = make_cache(FAIL_SAFE)
    with pytest.raises(FactoryFailedError, match=r"'k' failed: upstream 503"):
        cache.get_or_set("k", lambda ctx: ctx.fail("upstream 503"))


def test_fail_safe_default_value_is_served_when_nothing_is_stale(make_cache: MakeCache) -> None:
    cache = make_cache(FAIL_SAFE)
    failing = Counter()
    failing.error = RuntimeError("db down")
    assert cache.get_or_set("k", failing, fail_safe_default_value=[]) == []
    assert cache.get("k") is None  # served, not stored
    assert cache.get_or_set("j", lambda ctx: ctx.fail("no"), fail_safe_default_value=0) == 0
    with pytest.raises(RuntimeError):  # without fail-safe the error goes through
        cache.get_or_set("k", failing, EntryOptions(), fail_safe_default_value=[])


async def test_async_factories_take_the_context_too(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache(FAIL_SAFE)

    async def load(ctx: FactoryContext[int]) -> int:
        ctx.options = ctx.options.duplicate(duration=100)
        return 1

    assert await cache.get_or_set_async("k", load) == 1
    clock.advance(50)
    assert await cache.get_async("k") == 1

    async def failing(ctx: FactoryContext[int]) -> int:
        return ctx.fail("down")

    clock.advance(51)
    assert await cache.get_or_set_async("k", failing) == 1
    assert await cache.get_or_set_async("new", failing, fail_safe_default_value=-1) == -1


def test_a_timed_out_factory_stores_with_its_context_in_the_background(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    import threading

    from .conftest import wait_until

    cache = make_cache(FAIL_SAFE.duplicate(factory_soft_timeout=0.02, factory_hard_timeout=5))
    cache.set("k", "old")
    clock.advance(11)
    release = threading.Event()

    def slow(ctx: FactoryContext[str]) -> str:
        release.wait(5)
        ctx.tags = ["late"]
        return "new"

    assert cache.get_or_set("k", slow) == "old"
    release.set()
    wait_until(lambda: cache.get("k") == "new")
    cache.remove_by_tag("late")
    assert cache.get("k") is None
