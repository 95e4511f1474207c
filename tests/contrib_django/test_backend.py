"""`HybridCacheBackend` beyond Django's suite: signed Redis entries, clear() scope, timeouts,
the async face, configuration errors. Real Redis at 127.0.0.1:6379, unique key prefixes."""

from __future__ import annotations

import logging
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.cache import CacheKeyWarning, caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

import cache.contrib.django as backend_module
from cache import HealthStatus, MemoryDistributedCache
from cache.contrib.django import HybridCacheBackend

from .testsite.settings import REDIS_URL

UNPICKLED: list[str] = []


def _mark(what: str) -> str:
    UNPICKLED.append(what)
    return what


class Exploit:
    """Unpickling this calls `_mark`: stands for code an attacker would run."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_mark, ("pwned",))


@pytest.fixture
def prefix() -> str:
    return f"test-django-backend-{uuid.uuid4().hex}"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


def _caches(prefix: str, **extra: Any) -> dict[str, Any]:
    config = {
        "BACKEND": "cache.contrib.django.HybridCacheBackend",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": prefix,
    }
    return {"default": config | extra}


@pytest.fixture
def cache(prefix: str, client: redis.Redis) -> Iterator[HybridCacheBackend]:
    with override_settings(CACHES=_caches(prefix)):
        backend = caches["default"]
        yield backend
        backend.clear()
    backend_module.close_caches()
    for key in client.scan_iter(match=f"django:{prefix}:*"):
        client.delete(key)


def _redis_key(backend: HybridCacheBackend, key: str) -> str:
    return f"django:{backend.key_prefix}:{backend.make_key(key)}"


def _drop_memory(backend: HybridCacheBackend) -> None:
    """Forget the L1 copies so the next read goes to Redis (as on another instance)."""
    backend.hybrid._memory.clear()


# ------------------------------------------------------------------ signed entries


def test_values_round_trip_through_redis_as_python_objects(cache: HybridCacheBackend) -> None:
    value = {"tuple": (1, 2), "bytes": b"\x00\xff", "set": {3}, "none": None}
    cache.set("k", value)
    _drop_memory(cache)
    assert cache.get("k") == value


def test_reads_return_copies(cache: HybridCacheBackend) -> None:
    cache.set("k", {"n": 1})
    cache.get("k")["n"] = 2
    assert cache.get("k") == {"n": 1}


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda data: b"garbage", id="garbage"),
        pytest.param(lambda data: pickle.dumps(Exploit()), id="bare-pickle"),
        pytest.param(lambda data: data[:-8] + pickle.dumps(Exploit())[-8:], id="payload-altered"),
        pytest.param(lambda data: data[:3] + b"\x00" * 32 + data[35:], id="mac-zeroed"),
        pytest.param(lambda data: data[:40], id="truncated"),
    ],
)
def test_a_tampered_redis_entry_is_a_miss_and_never_unpickled(
    cache: HybridCacheBackend, client: redis.Redis, tamper: Any
) -> None:
    cache.set("k", "genuine", timeout=None)
    key = _redis_key(cache, "k")
    client.set(key, tamper(client.get(key)))
    _drop_memory(cache)
    UNPICKLED.clear()
    assert cache.get("k", "missing") == "missing"
    assert not UNPICKLED


def test_an_entry_signed_with_another_key_is_a_miss(prefix: str, client: redis.Redis) -> None:
    exploit = pickle.dumps(Exploit())
    try:
        with override_settings(CACHES=_caches(prefix, OPTIONS={"SIGNING_KEY": "k" * 32})):
            attacker = caches["default"]
            attacker.hybrid.set(attacker.make_key("k"), exploit)
        backend_module.close_caches()
        with override_settings(CACHES=_caches(prefix)):
            UNPICKLED.clear()
            assert caches["default"].get("k", "missing") == "missing"
            assert not UNPICKLED
    finally:
        backend_module.close_caches()
        for key in client.scan_iter(match=f"django:{prefix}:*"):
            client.delete(key)


def test_an_entry_moved_to_another_key_is_a_miss(
    cache: HybridCacheBackend, client: redis.Redis
) -> None:
    cache.set("admin-permissions", ["all"], timeout=None)
    cache.set("guest-permissions", ["read"], timeout=None)
    client.set(
        _redis_key(cache, "guest-permissions"), client.get(_redis_key(cache, "admin-permissions"))
    )
    _drop_memory(cache)
    assert cache.get("guest-permissions") is None
    assert cache.get("admin-permissions") == ["all"]


def test_signature_failures_are_counted_logged_once_a_minute_and_degrade_health(
    cache: HybridCacheBackend,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(backend_module, "_monotonic", lambda: now[0])
    for name in ("a", "b", "c"):
        client.set(_redis_key(cache, name), b"garbage")
    with caplog.at_level(logging.WARNING, logger="cache.contrib.django"):
        for name in ("a", "b", "c"):
            assert cache.get(name) is None
        now[0] += 61
        assert cache.get("a") is None
    reports = [r for r in caplog.records if "signature check" in r.getMessage()]
    assert len(reports) == 2
    assert "2 more since the last report" in reports[1].getMessage()
    health = cache.health()
    assert health.status is HealthStatus.DEGRADED
    assert "1 entry failed the signature check" in health.reasons[0]
    now[0] += 61
    assert cache.health().status is HealthStatus.OK
    assert cache._shared.rejections.total == 4


def test_the_signing_key_rotates_through_a_list(prefix: str, client: redis.Redis) -> None:
    old, new = "old-signing-key-0123456789", "new-signing-key-0123456789"
    try:
        with override_settings(CACHES=_caches(prefix, OPTIONS={"SIGNING_KEY": old})):
            caches["default"].set("k", "v", None)
        backend_module.close_caches()
        with override_settings(CACHES=_caches(prefix, OPTIONS={"SIGNING_KEY": [new, old]})):
            assert caches["default"].get("k") == "v"
    finally:
        backend_module.close_caches()
        for key in client.scan_iter(match=f"django:{prefix}:*"):
            client.delete(key)


# ------------------------------------------------------------------ keys, clear, timeouts


def test_clear_touches_only_this_caches_keys(
    prefix: str, cache: HybridCacheBackend, client: redis.Redis
) -> None:
    other_prefix = prefix + ":other"  # a KEY_PREFIX that extends this one
    neighbour = f"{prefix}-unrelated"
    client.set(neighbour, b"x")
    try:
        config = {
            "default": _caches(prefix)["default"],
            "other": _caches(other_prefix)["default"],
        }
        with override_settings(CACHES=config):
            mine, other = caches["default"], caches["other"]
            mine.set("k", 1)
            other.set("k", 2)
            mine.clear()
            assert mine.get("k") is None
            assert other.get("k") == 2
            _drop_memory(other)
            assert other.get("k") == 2
            assert client.get(neighbour) == b"x"
            other.clear()
    finally:
        client.delete(neighbour)


def test_timeouts_follow_django(cache: HybridCacheBackend, client: redis.Redis) -> None:
    cache.set("default", 1)
    assert 299_000 < client.pttl(_redis_key(cache, "default")) <= 300_000
    cache.set("forever", 1, timeout=None)
    assert client.pttl(_redis_key(cache, "forever")) == -1
    cache.set("zero", 1)
    cache.set("zero", 2, timeout=0)
    assert cache.get("zero") is None
    assert client.exists(_redis_key(cache, "zero")) == 0
    cache.set("negative", 1, timeout=-5)
    assert cache.get("negative") is None
    assert cache.get_or_set("not-stored", lambda: "v", timeout=0) == "v"
    assert not cache.has_key("not-stored")


def test_key_warnings_and_versions(cache: HybridCacheBackend) -> None:
    with pytest.warns(CacheKeyWarning):
        cache.set("key with spaces", 1)
    cache.set("k", "v1", version=1)
    cache.set("k", "v2", version=2)
    assert (cache.get("k"), cache.get("k", version=2)) == ("v1", "v2")


def test_get_or_set_calls_the_default_once_per_key(cache: HybridCacheBackend) -> None:
    calls = []
    for _ in range(3):
        assert cache.get_or_set("k", lambda: calls.append(1) or "v") == "v"
    assert calls == [1]


# ------------------------------------------------------------------ the async face


async def test_the_async_face(cache: HybridCacheBackend) -> None:
    assert await cache.aadd("a", 1) is True
    assert await cache.aadd("a", 2) is False
    assert await cache.aget("a") == 1
    assert await cache.aincr("a", 5) == 6
    assert await cache.adecr("a") == 5
    with pytest.raises(ValueError, match="not found"):
        await cache.aincr("missing")
    await cache.aset_many({"b": (1, 2), "c": None})
    assert await cache.aget_many(["a", "b", "c", "d"]) == {"a": 5, "b": (1, 2), "c": None}
    assert await cache.ahas_key("c") is True
    assert await cache.atouch("b", None) is True
    assert await cache.atouch("missing") is False
    assert await cache.adelete("b") is True
    assert await cache.adelete("b") is False
    assert await cache.aget_or_set("e", lambda: "made") == "made"
    assert await cache.aget_or_set("e", lambda: "again") == "made"
    await cache.adelete_many(["a", "e"])
    assert await cache.aget("a", "gone") == "gone"
    await cache.aset("f", 1)
    await cache.aclear()
    assert await cache.aget("f") is None
    _drop_memory(cache)
    assert await cache.aget("c", "gone") == "gone"  # cleared in Redis too


async def test_async_reads_see_sync_writes_through_redis(cache: HybridCacheBackend) -> None:
    cache.set("k", {"v": 1})
    _drop_memory(cache)
    assert await cache.aget("k") == {"v": 1}


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"SIGNNG_KEY": "x" * 20}, "does not know OPTIONS 'SIGNNG_KEY'"),
        ({"SIGNING_KEY": "short"}, "16 characters"),
        ({"MAX_ENTRIES": 0}, "max_entries must be an int >= 1"),
        (
            {"ENTRY_OPTIONS": {"is_fail_safe_enabled": True, "fail_safe_max_duration": -1}},
            "fail_safe_max_duration",
        ),
        ({"CACHE_OPTIONS": []}, "must be a dict"),
    ],
)
def test_bad_options_name_the_problem(prefix: str, options: dict[str, Any], message: str) -> None:
    with (
        override_settings(CACHES=_caches(prefix, OPTIONS=options)),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        caches["default"]


def test_a_bad_location_names_it_without_the_password(prefix: str) -> None:
    with (
        override_settings(CACHES=_caches(prefix, LOCATION="http://user:hunter2@host/0")),
        pytest.raises(ImproperlyConfigured) as error,
    ):
        caches["default"].get("k")
    assert "hunter2" not in str(error.value)
    assert "redis://" in str(error.value)


def test_clear_with_redis_down_logs_and_clears_memory(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(CACHES=_caches(prefix, LOCATION="redis://127.0.0.1:1/0")):
        backend = caches["default"]
        backend.set("k", 1)
        backend.clear()
        assert backend.get("k") is None
    backend_module.close_caches()
    assert any("could not be deleted" in r.getMessage() for r in caplog.records)


async def test_aclear_with_redis_down(prefix: str) -> None:
    with override_settings(CACHES=_caches(prefix, LOCATION="redis://127.0.0.1:1/0")):
        backend = caches["default"]
        await backend.aset("k", 1)
        await backend.aclear()
        assert await backend.aget("k") is None
    backend_module.close_caches()


def test_an_empty_location_is_memory_only(prefix: str) -> None:
    with override_settings(CACHES=_caches(prefix, LOCATION="")):
        backend = caches["default"]
        backend.set("k", [1])
        assert backend.get("k") == [1]
        backend.clear()
        assert backend.get("k") is None
    backend_module.close_caches()


def test_aliases_with_the_same_store_share_one_memory_layer(prefix: str) -> None:
    config = {"default": _caches(prefix)["default"], "v2": _caches(prefix, VERSION=2)["default"]}
    try:
        with override_settings(CACHES=config):
            assert caches["default"].hybrid is caches["v2"].hybrid
            caches["v2"].set("k", 1, version=1)
            assert caches["default"].get("k") == 1
    finally:
        with override_settings(CACHES=config):
            caches["default"].clear()
        backend_module.close_caches()


class Renamed:
    """A cached class that a deploy renames (the test deletes it from this module)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Renamed)


def test_an_entry_whose_class_is_gone_is_a_miss_not_an_error(
    cache: HybridCacheBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache.set("gone", Renamed())
    cache.set("counter", Renamed())
    monkeypatch.delattr(__import__(__name__, fromlist=["Renamed"]), "Renamed")
    assert cache.get("gone", "default") == "default"
    assert cache.get_many(["gone", "other"]) == {}
    assert cache.get_or_set("gone", lambda: "made again") == "made again"
    assert cache.get("gone") == "made again"
    with pytest.raises(ValueError, match="not found"):
        cache.incr("counter")
    reports = [r for r in caplog.records if "cannot be unpickled" in r.getMessage()]
    assert len(reports) == 1  # then once a minute
    assert cache.health().status is HealthStatus.DEGRADED
    assert "could not be unpickled" in cache.health().reasons[0]


async def test_an_entry_whose_class_is_gone_is_a_miss_async(
    cache: HybridCacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cache.aset("gone", Renamed())
    monkeypatch.delattr(__import__(__name__, fromlist=["Renamed"]), "Renamed")
    assert await cache.aget("gone", "default") == "default"
    assert await cache.aget_or_set("gone", lambda: "made again") == "made again"
    assert await cache.aget_many(["gone"]) == {"gone": "made again"}


# ------------------------------------------------------------------ the signed store, any input


@given(key=st.text(max_size=40), entry=st.binary(max_size=200), junk=st.binary(max_size=80))
def test_the_signed_store_opens_what_it_sealed_and_nothing_else(
    key: str, entry: bytes, junk: bytes
) -> None:
    rejections = backend_module._Reporter("%r %s %s %d")
    store = backend_module._SignedStore(
        MemoryDistributedCache(), "django:p:", [b"k" * 32], rejections
    )
    try:
        key.encode()
    except UnicodeEncodeError:
        return  # check_key refuses such keys before any store sees them
    sealed = store.seal(key, entry)
    assert store.open(key, sealed) == entry
    assert store.open(key + "x", sealed) is None  # bound to its key
    assert store.open(key, junk) is None  # never raises
    assert store.open(key, sealed[:-1] + bytes([sealed[-1] ^ 1])) is None
    assert rejections.total == 3
