"""`HybridCacheBackend`: a Django cache backend over `HybridCache` (L1 memory, L2 Redis, backplane).

```python
CACHES = {
    "default": {
        "BACKEND": "cache.contrib.django.HybridCacheBackend",
        "LOCATION": "redis://127.0.0.1:6379/0",   # "" : no L2 (memory and backplane only)
        "TIMEOUT": 300, "KEY_PREFIX": "shop", "VERSION": 1,
        "OPTIONS": {"MAX_ENTRIES": 10_000},
    }
}
```

Values are pickled (Django caches responses, model instances, tuples, bytes); L1 holds the
pickled bytes, so every read returns a fresh copy, as Django's own backends do. In Redis every
entry carries an HMAC-SHA256 over its Redis key and bytes, checked before anything is unpickled:
whoever can write to Redis cannot make the app unpickle their bytes. An entry that fails the
check is a miss, counted (`health()`) and logged at most once a minute. The signing key is
``OPTIONS["SIGNING_KEY"]`` (one key, or a list: the first signs, all verify), by default derived
from ``settings.SECRET_KEY`` (and ``SECRET_KEY_FALLBACKS``, which verify).

Every backend of one process with the same LOCATION, KEY_PREFIX and OPTIONS shares one
`HybridCache` (one L1, one Redis client, one backplane subscription): Django builds a backend
object per thread, and aliases that differ only in VERSION or KEY_FUNCTION see the same keys.
The backplane comes from `use_backplane()`, which the ``eventbroker.contrib.django`` app calls
once its broker runs. See docs/django.md.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import logging
import math
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs

try:
    from django.conf import settings
    from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
    from django.core.exceptions import ImproperlyConfigured
except ImportError as exc:  # pragma: no cover - the django extra is missing
    raise ImportError(
        f'cache.contrib.django needs Django: pip install "eventbroker-cache[django]" ({exc})'
    ) from None

from .._backplane import Backplane
from .._distributed import DistributedCache, describe
from .._errors import DistributedCacheError
from .._health import Health, HealthStatus
from .._hybrid import HybridCache, MaybeValue
from .._options import CacheOptions, EntryOptions
from .._redact import redact_text

__all__ = ["HybridCacheBackend", "close_caches", "shared_caches", "use_backplane"]

logger = logging.getLogger(__name__)

FOREVER = 1e15
"""Seconds standing for "no expiry" (TIMEOUT None): Redis stores such entries without a TTL."""
REPORT_PERIOD = 60.0
"""Failed signature checks are logged at most once per this many seconds; health counts them
over this window."""

_OPTION_NAMES = (
    "SIGNING_KEY",
    "MAX_ENTRIES",
    "CACHE_OPTIONS",
    "ENTRY_OPTIONS",
    "REDIS",
    "BACKPLANE",
)
_MAGIC = b"DJ1"
_MAC_SIZE = hashlib.sha256().digest_size
_KEY_CONTEXT = b"cache.contrib.django.HybridCacheBackend signing key"
_monotonic = time.monotonic  # tests replace it to move the report window
_MISSING: Any = object()


# ------------------------------------------------------------------------------------------
# What L2 holds: the HybridCache entry (header + pickled bytes) behind an HMAC.


_SIGNATURE_FAILED = (
    "L2 entry %r in %s failed the signature check (%s): treated as a miss, never unpickled; "
    "%d more since the last report. Either instances use different SIGNING_KEYs (or "
    "SECRET_KEYs), or something else writes to this Redis"
)
_UNPICKLING_FAILED = (
    "cache entry %r in %s cannot be unpickled (%s): treated as a miss; %d more since the last "
    "report. A class it holds was probably renamed or removed (a deploy): the entry is "
    "recomputed by get_or_set or expires"
)


class _Reporter:
    """Counts entries that could not be used; logs at most once per `REPORT_PERIOD`."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.total = 0
        self._recent: collections.deque[float] = collections.deque(maxlen=100_000)
        self._last_report = -math.inf
        self._suppressed = 0
        self._lock = threading.Lock()

    def add(self, key: str, why: str, where: str) -> None:
        now = _monotonic()
        with self._lock:
            self.total += 1
            self._recent.append(now)
            report = now - self._last_report >= REPORT_PERIOD
            if report:
                self._last_report, suppressed, self._suppressed = now, self._suppressed, 0
            else:
                self._suppressed += 1
        if report:
            logger.warning(self.message, key, where, why, suppressed)

    def last_period(self) -> int:
        horizon = _monotonic() - REPORT_PERIOD
        with self._lock:
            while self._recent and self._recent[0] < horizon:
                self._recent.popleft()
            return len(self._recent)


class _SignedStore:
    """A `DistributedCache` that signs what it stores and drops what fails the check.

    Stored bytes: ``DJ1`` + HMAC-SHA256(key, len(redis key) + redis key + entry) + entry. The MAC
    covers the whole HybridCache entry (its header too) and its key, so an entry cannot be
    forged, altered or moved to another key by whoever can write to Redis (it can be deleted,
    or an older signed entry of the same key put back)."""

    def __init__(
        self,
        inner: DistributedCache,
        namespace: str,
        keys: Sequence[bytes],
        rejections: _Reporter,
    ) -> None:
        self.inner = inner
        self.namespace = namespace
        self._keys = tuple(keys)
        self._rejections = rejections
        self.description = describe(inner)

    def _mac(self, secret: bytes, key: str, entry: bytes) -> bytes:
        name = (self.namespace + key).encode()
        message = len(name).to_bytes(4, "big") + name + entry
        return hmac.new(secret, message, hashlib.sha256).digest()

    def seal(self, key: str, entry: bytes) -> bytes:
        return _MAGIC + self._mac(self._keys[0], key, entry) + entry

    def open(self, key: str, data: bytes | None) -> bytes | None:
        """The entry inside `data`, or `None` (counted, logged once a minute) when unsigned."""
        if data is None:
            return None
        if not isinstance(data, bytes) or not data.startswith(_MAGIC):
            why = "no signature"
        elif len(data) < len(_MAGIC) + _MAC_SIZE:
            why = "truncated"
        else:
            mac = data[len(_MAGIC) : len(_MAGIC) + _MAC_SIZE]
            entry = data[len(_MAGIC) + _MAC_SIZE :]
            for secret in self._keys:
                if hmac.compare_digest(mac, self._mac(secret, key, entry)):
                    return entry
            why = "wrong signature"
        self._rejections.add(key, why, self.description)
        return None

    def get(self, key: str) -> bytes | None:
        return self.open(key, self.inner.get(key))

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self.inner.set(key, self.seal(key, value), ttl)

    def remove(self, key: str) -> None:
        self.inner.remove(key)

    async def get_async(self, key: str) -> bytes | None:
        return self.open(key, await self.inner.get_async(key))

    async def set_async(self, key: str, value: bytes, ttl: float) -> None:
        await self.inner.set_async(key, self.seal(key, value), ttl)

    async def remove_async(self, key: str) -> None:
        await self.inner.remove_async(key)


class _BytesSerializer:
    """The `Serializer` of the Django backend's `HybridCache`: its values are already pickled
    bytes (pickled by the backend, so an unpicklable value fails `set()` as Django expects)."""

    def serialize(self, value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise TypeError(f"the Django backend stores pickled bytes, got {type(value).__name__}")
        return value

    def deserialize(self, data: bytes, value_type: type[Any] | None) -> Any:
        return bytes(data)

    def resolve(self, type_tag: str) -> type[Any] | None:
        return bytes if type_tag == "builtins:bytes" else None


# ------------------------------------------------------------------------------------------
# One HybridCache per configuration, shared by every backend object of the process.


@attrs.frozen
class _Config:
    location: str
    namespace: str
    """Every Redis key of this cache starts with it; `clear()` deletes under it."""
    cache_options: CacheOptions
    entry_options: EntryOptions
    signing_keys: tuple[bytes, ...] = attrs.field(repr=False)
    redis_options: tuple[tuple[str, Any], ...]
    backplane: bool


class _Shared:
    """The `HybridCache` (and its Redis client) of one configuration."""

    def __init__(self, config: _Config, backplane: Backplane | None) -> None:
        self.config = config
        self.rejections = _Reporter(_SIGNATURE_FAILED)
        self.undecodable = _Reporter(_UNPICKLING_FAILED)
        self.redis: Any = None
        store: DistributedCache | None = None
        if config.location:
            try:
                from ..redis import RedisDistributedCache
            except ImportError as exc:  # pragma: no cover - redis-py is in the django extra
                raise ImproperlyConfigured(
                    f'a Redis LOCATION needs redis-py: pip install "eventbroker-cache[django]" ({exc})'
                ) from None
            try:
                self.redis = RedisDistributedCache(
                    config.location, key_prefix=config.namespace, **dict(config.redis_options)
                )
            except ValueError as exc:
                raise ImproperlyConfigured(f"HybridCacheBackend LOCATION: {exc}") from None
            store = _SignedStore(self.redis, config.namespace, config.signing_keys, self.rejections)
        self.has_backplane = backplane is not None
        self.hybrid = HybridCache(
            config.cache_options,
            store,
            backplane,
            serializer=_BytesSerializer(),
            owns_distributed_cache=False,
        )
        self.read_options = _entry_options(config.entry_options, FOREVER)

    def clear(self) -> None:
        if self.redis is not None:
            try:
                self.redis.clear()
            except DistributedCacheError as exc:
                self._clear_failed(exc)
        self.hybrid.clear(allow_fail_safe=False)

    async def clear_async(self) -> None:
        if self.redis is not None:
            try:
                await self.redis.clear_async()
            except DistributedCacheError as exc:
                self._clear_failed(exc)
        await self.hybrid.clear_async(allow_fail_safe=False)

    def _clear_failed(self, exc: Exception) -> None:
        logger.warning(
            "clear(): the Redis keys under %r could not be deleted (%s); this cache and the "
            "instances its backplane reaches serve none of them as fresh all the same",
            self.config.namespace,
            redact_text(str(exc)),
        )

    def health(self) -> Health:
        """The `HybridCache`'s health, DEGRADED too while entries fail the signature check."""
        health = self.hybrid.health()
        if health.status is HealthStatus.DOWN:
            return health
        reasons = list(health.reasons)
        rejected = self.rejections.last_period()
        if rejected:
            reasons.append(
                f"{_entries(rejected)} failed the signature check in the last "
                f"{REPORT_PERIOD:g}s (treated as misses): give every instance the same "
                "SIGNING_KEY (or SECRET_KEY), and let nothing else write under "
                f"{self.config.namespace!r}"
            )
        undecodable = self.undecodable.last_period()
        if undecodable:
            reasons.append(
                f"{_entries(undecodable)} could not be unpickled in the last "
                f"{REPORT_PERIOD:g}s (treated as misses): a cached class was renamed or removed?"
            )
        return Health.from_reasons(health.component, degraded=reasons)

    def close(self) -> None:
        self.hybrid.close()
        if self.redis is not None:
            self.redis.close()


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


_shared: dict[_Config, _Shared] = {}
_shared_lock = threading.Lock()
_backplane_factory: Callable[[], Backplane] | None = None
_warned_no_backplane = False


def _shared_for(config: _Config) -> _Shared:
    shared = _shared.get(config)
    if shared is not None:
        return shared
    with _shared_lock:
        shared = _shared.get(config)
        if shared is None:
            factory = _backplane_factory if config.backplane else None
            shared = _shared[config] = _Shared(config, factory() if factory else None)
        return shared


def use_backplane(factory: Callable[[], Backplane] | None) -> None:
    """Give every backend's `HybridCache` a backplane made by `factory` (one per cache), or none.

    The ``eventbroker.contrib.django`` app calls this once its broker runs, with
    ``lambda: EventBrokerBackplane(registry, broker)``. Caches built before are closed (their
    L1 is dropped) and rebuilt on next use."""
    global _backplane_factory
    with _shared_lock:
        _backplane_factory = factory
        old = list(_shared.values())
        _shared.clear()
    for shared in old:
        shared.close()


def close_caches() -> None:
    """Close every backend's `HybridCache` and Redis client (rebuilt on next use)."""
    with _shared_lock:
        old = list(_shared.values())
        _shared.clear()
    for shared in old:
        shared.close()


def shared_caches() -> list[HybridCache]:
    """The `HybridCache` of each configuration in use in this process."""
    with _shared_lock:
        return [shared.hybrid for shared in _shared.values()]


@functools.lru_cache(maxsize=512)
def _entry_options(base: EntryOptions, seconds: float) -> EntryOptions:
    return base.duplicate(duration=seconds)


@functools.lru_cache(maxsize=16)
def _derived_keys(secrets: tuple[str | bytes, ...]) -> tuple[bytes, ...]:
    return tuple(
        hmac.new(s.encode() if isinstance(s, str) else s, _KEY_CONTEXT, hashlib.sha256).digest()
        for s in secrets
    )


def _signing_keys(value: object) -> tuple[bytes, ...]:
    if value is None:
        secret = getattr(settings, "SECRET_KEY", "")
        if not secret:
            raise ImproperlyConfigured(
                "HybridCacheBackend signs its Redis entries with a key derived from SECRET_KEY, "
                'which is empty: set SECRET_KEY, or OPTIONS["SIGNING_KEY"]'
            )
        fallbacks = tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ())
        return _derived_keys((secret, *fallbacks))
    items = [value] if isinstance(value, str | bytes) else value
    if not isinstance(items, Iterable):
        raise ImproperlyConfigured(
            'OPTIONS["SIGNING_KEY"] must be a str, bytes or a list of them (the first signs), '
            f"got {type(value).__name__}"
        )
    keys = tuple(k.encode() if isinstance(k, str) else k for k in items)
    if not keys or not all(isinstance(k, bytes) and len(k) >= 16 for k in keys):
        raise ImproperlyConfigured(
            'OPTIONS["SIGNING_KEY"] must hold at least one key of 16 characters or more '
            "(a long random string; a list rotates keys: the first signs, every one verifies)"
        )
    return keys


def _mapping(options: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = options.get(name, {})
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f'OPTIONS["{name}"] must be a dict of keyword arguments, got {type(value).__name__}'
        )
    return dict(value)


def _config(location: str, params: Mapping[str, Any]) -> _Config:
    options = params.get("OPTIONS", {}) or {}
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ImproperlyConfigured(
            f"HybridCacheBackend does not know OPTIONS {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(_OPTION_NAMES)} (see docs/django.md)"
        )
    prefix = str(params.get("KEY_PREFIX", "") or "")
    namespace = f"django:{quote(prefix, safe='')}:"
    cache_kwargs = _mapping(options, "CACHE_OPTIONS")
    cache_kwargs.setdefault("name", namespace.rstrip(":"))
    if "MAX_ENTRIES" in options:
        cache_kwargs["max_entries"] = options["MAX_ENTRIES"]
    entry_kwargs = _mapping(options, "ENTRY_OPTIONS")
    entry_kwargs.pop("duration", None)  # TIMEOUT, per call
    try:
        entry = EntryOptions(**entry_kwargs)
        cache_options = CacheOptions(**{**cache_kwargs, "default_entry_options": entry})
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"HybridCacheBackend OPTIONS: {exc}") from None
    redis_options = _mapping(options, "REDIS")
    return _Config(
        location=str(location or ""),
        namespace=namespace,
        cache_options=cache_options,
        entry_options=entry,
        signing_keys=_signing_keys(options.get("SIGNING_KEY")),
        redis_options=tuple(sorted(redis_options.items())),
        backplane=bool(options.get("BACKPLANE", True)),
    )


# ------------------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes) -> Any:
    # only bytes this process pickled (L1) or whose signature checked out (L2) get here
    return pickle.loads(data)


class HybridCacheBackend(BaseCache):  # type: ignore[misc]
    """A Django cache backend over `HybridCache`: L1 in memory, L2 in Redis (``LOCATION``),
    and the backplane of the ``eventbroker.contrib.django`` app, so every instance drops its
    copy when another one writes. The whole Django cache API, sync and ``a*`` async.

    TIMEOUT: seconds (default 300); ``None`` keeps the value until evicted or deleted; ``0``
    or less removes the key (the value is not cached). ``add``, ``incr``/``decr`` and
    ``touch`` read then write: not atomic across instances (Django's base behaviour). ``close()``
    does nothing (Django calls it after every request); the shared caches close at exit.
    """

    def __init__(self, location: str, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self._config = _config(location, params)

    # ---------------------------------------------------------------- helpers

    @property
    def _shared(self) -> _Shared:
        return _shared_for(self._config)

    @property
    def hybrid(self) -> HybridCache:
        """The `HybridCache` behind this backend (shared by every backend of the same config)."""
        return self._shared.hybrid

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> float | None:
        """Seconds to keep a value: ``None`` forever, ``0`` not at all (as Django's Redis
        backend)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else max(0.0, float(timeout))

    def _write_options(self, timeout: Any) -> EntryOptions | None:
        """The entry options of a write, or `None`: expire now (remove the key)."""
        seconds = self.get_backend_timeout(timeout)
        if seconds is None:
            seconds = FOREVER
        elif seconds <= 0:
            return None
        elif not math.isfinite(seconds):
            raise ValueError(
                f"cache timeout must be a finite number of seconds or None, got {timeout!r}"
            )
        return _entry_options(self._config.entry_options, min(seconds, FOREVER))

    def _writing(self, shared: _Shared) -> HybridCache:
        global _warned_no_backplane
        if self._config.backplane and not shared.has_backplane and not _warned_no_backplane:
            _warned_no_backplane = True
            logger.warning(
                "cache %r written in a process without a running event broker: other "
                "instances are not told and may serve their old copy until it expires; start "
                "it with eventbroker.contrib.django.start() (the app does in serving "
                'processes), or set OPTIONS["BACKPLANE"] = False if that is intended',
                self._config.cache_options.name,
            )
        return shared.hybrid

    def _value(self, made: str, found: MaybeValue[bytes], default: Any = _MISSING) -> Any:
        """The unpickled value, or `default` when there is none or it cannot be unpickled."""
        if not found.has_value or found.value is None:
            return default
        try:
            return _loads(found.value)
        except Exception as exc:  # a class renamed or removed since it was cached
            why = redact_text(f"{type(exc).__name__}: {exc}")
            self._shared.undecodable.add(made, why, f"cache {self._config.cache_options.name!r}")
            return default

    def health(self) -> Health:
        """OK; DEGRADED while Redis is unreachable, the backplane is down or Redis entries fail
        the signature check; DOWN once closed."""
        return self._shared.health()

    # ---------------------------------------------------------------- sync face

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        found = shared.hybrid.try_get(made, shared.read_options, value_type=bytes)
        return self._value(made, found, default)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        return shared.hybrid.try_get(made, shared.read_options, value_type=bytes).has_value

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        made = self.make_and_validate_key(key, version=version)
        self._set(made, _dumps(value), timeout)

    def _set(self, made: str, data: bytes, timeout: Any) -> None:
        options = self._write_options(timeout)
        hybrid = self._writing(self._shared)
        if options is None:
            hybrid.remove(made)
        else:
            hybrid.set(made, data, options)

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made = self.make_and_validate_key(key, version=version)
        data = _dumps(value)
        shared = self._shared
        if shared.hybrid.try_get(made, shared.read_options, value_type=bytes).has_value:
            return False
        self._set(made, data, timeout)
        return True

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        found = shared.hybrid.try_get(made, shared.read_options, value_type=bytes)
        if not found.has_value or found.value is None:
            return False
        self._set(made, found.value, timeout)
        return True

    def delete(self, key: Any, version: int | None = None) -> bool:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        existed = shared.hybrid.try_get(made, shared.read_options, value_type=bytes).has_value
        self._writing(shared).remove(made)
        return existed

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        shared = self._shared
        found: dict[Any, Any] = {}
        for key in keys:
            made = self.make_and_validate_key(key, version=version)
            item = shared.hybrid.try_get(made, shared.read_options, value_type=bytes)
            value = self._value(made, item)
            if value is not _MISSING:
                found[key] = value
        return found

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        for key, value in data.items():
            self.set(key, value, timeout, version)
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        for key in keys:
            made = self.make_and_validate_key(key, version=version)
            self._writing(self._shared).remove(made)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        found = shared.hybrid.try_get(made, shared.read_options, value_type=bytes)
        new = self._incremented(key, self._value(made, found), delta)
        self._set(made, _dumps(new), DEFAULT_TIMEOUT)
        return new

    @staticmethod
    def _incremented(key: Any, value: Any, delta: int) -> Any:
        if value is _MISSING:
            raise ValueError(f"Key '{key}' not found")
        return value + delta

    def get_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """The cached value, else `default` (called if callable) stored with `timeout`; one
        call of `default` per key at a time in this process (stampede protection)."""
        made = self.make_and_validate_key(key, version=version)
        options = self._write_options(timeout)
        shared = self._shared
        if options is None:
            found = shared.hybrid.try_get(made, shared.read_options, value_type=bytes)
            value = self._value(made, found)
            return _call(default) if value is _MISSING else value
        hybrid = self._writing(shared)
        data = hybrid.get_or_set(made, lambda: _dumps(_call(default)), options, value_type=bytes)
        value = self._value(made, MaybeValue(True, data))
        if value is _MISSING:  # cached before a class it holds was renamed: make it again
            value = _call(default)
            hybrid.set(made, _dumps(value), options)
        return value

    def clear(self) -> None:
        """Remove this cache's keys: its L1 here and on every other instance, and its Redis keys
        (those under its ``django:<KEY_PREFIX>:`` prefix; never FLUSHDB)."""
        self._shared.clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing: Django calls this after every request; the shared cache stays open."""

    # ---------------------------------------------------------------- async face

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        found = await shared.hybrid.try_get_async(made, shared.read_options, value_type=bytes)
        return self._value(made, found, default)

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        found = await shared.hybrid.try_get_async(made, shared.read_options, value_type=bytes)
        return found.has_value

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        made = self.make_and_validate_key(key, version=version)
        await self._aset(made, _dumps(value), timeout)

    async def _aset(self, made: str, data: bytes, timeout: Any) -> None:
        options = self._write_options(timeout)
        hybrid = self._writing(self._shared)
        if options is None:
            await hybrid.remove_async(made)
        else:
            await hybrid.set_async(made, data, options)

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made = self.make_and_validate_key(key, version=version)
        data = _dumps(value)
        shared = self._shared
        found = await shared.hybrid.try_get_async(made, shared.read_options, value_type=bytes)
        if found.has_value:
            return False
        await self._aset(made, data, timeout)
        return True

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        found = await shared.hybrid.try_get_async(made, shared.read_options, value_type=bytes)
        if not found.has_value or found.value is None:
            return False
        await self._aset(made, found.value, timeout)
        return True

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        found = await shared.hybrid.try_get_async(made, shared.read_options, value_type=bytes)
        await self._writing(shared).remove_async(made)
        return found.has_value

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        shared = self._shared
        found: dict[Any, Any] = {}
        for key in keys:
            made = self.make_and_validate_key(key, version=version)
            item = await shared.hybrid.try_get_async(made, shared.read_options, value_type=bytes)
            value = self._value(made, item)
            if value is not _MISSING:
                found[key] = value
        return found

    async def aset_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        for key, value in data.items():
            await self.aset(key, value, timeout, version)
        return []

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        for key in keys:
            made = self.make_and_validate_key(key, version=version)
            await self._writing(self._shared).remove_async(made)

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        made = self.make_and_validate_key(key, version=version)
        shared = self._shared
        found = await shared.hybrid.try_get_async(made, shared.read_options, value_type=bytes)
        new = self._incremented(key, self._value(made, found), delta)
        await self._aset(made, _dumps(new), DEFAULT_TIMEOUT)
        return new

    async def aget_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """`get_or_set` for asyncio code; a callable `default` runs on the event loop, as in
        Django's own backends."""
        made = self.make_and_validate_key(key, version=version)
        options = self._write_options(timeout)
        shared = self._shared
        if options is None:
            found = await shared.hybrid.try_get_async(made, shared.read_options, value_type=bytes)
            value = self._value(made, found)
            return _call(default) if value is _MISSING else value

        async def load() -> bytes:
            return _dumps(_call(default))

        hybrid = self._writing(shared)
        data: bytes = await hybrid.get_or_set_async(made, load, options, value_type=bytes)
        value = self._value(made, MaybeValue(True, data))
        if value is _MISSING:  # cached before a class it holds was renamed: make it again
            value = _call(default)
            await hybrid.set_async(made, _dumps(value), options)
        return value

    async def aclear(self) -> None:
        await self._shared.clear_async()

    async def aclose(self, **kwargs: Any) -> None:
        """Nothing (see `close`)."""


def _call(default: Any) -> Any:
    return default() if callable(default) else default
