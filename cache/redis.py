"""`RedisDistributedCache`: the L2 on Redis, through redis-py's sync and asyncio clients.

Configure with a URL (``redis://host:6379/0``, ``rediss://`` for TLS, ``unix:///path/to/socket``),
from the argument or the ``CACHE_REDIS_URL`` environment variable. Calls fail fast (no
client-side retries, short socket timeouts): the hybrid cache logs the error and opens its
circuit breaker instead of waiting. The URL's password never appears in an error, a repr or a
log line: `redacted_url` is the form to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.backoff import NoBackoff

from ._errors import DistributedCacheError
from ._keys import check_key
from ._redact import redact_url, shows_secret, split_credentials, url_secrets
from ._settings import URL, read_variable

DEFAULT_URL = "redis://127.0.0.1:6379/0"

_EXPECTED = (
    "expected redis://[user:password@]host[:port][/db], rediss://... (TLS) or "
    "unix://[user:password@]/path/to/socket[?db=N]"
)
_DB_PATH = re.compile(r"/?(\d+/?)?")
_SCAN_BATCH = 500
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
"""Characters SCAN's MATCH pattern treats specially: escaped in a key prefix."""
_MAX_PX = 2**53
"""Longer TTLs (and infinity) are stored without expiry."""


class RedisDistributedCache:
    """A `DistributedCache` on Redis. Keys are stored as ``key_prefix + key`` with a
    millisecond TTL. One sync client (thread-safe pool) and one asyncio client per event loop.
    Server and connection failures raise `DistributedCacheError`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        key_prefix: str = "",
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        **client_options: Any,
    ) -> None:
        url = url or read_variable("CACHE_REDIS_URL", secrecy=URL) or DEFAULT_URL
        self.redacted_url = redact_url(url)
        """The URL with its password replaced by ``***``: the form to log or show."""
        check_key(key_prefix, "key_prefix")
        self.key_prefix = key_prefix
        self._url = url
        self._secrets = url_secrets(url)
        self._client_options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            **client_options,
        }
        self._sync = self._sync_client()
        kwargs = self._sync.connection_pool.connection_kwargs
        where = (
            f"unix:{kwargs['path']}"
            if "path" in kwargs
            else f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        )
        db = kwargs.get("db", 0)
        self.description = f"Redis {where}" + (f" db {db}" if db else "")
        """Where the data lives, without credentials (``Redis 127.0.0.1:6379``): health
        reasons and error messages use it."""
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def _sync_client(self) -> redis.Redis:
        """The sync client, or `ValueError` naming what is wrong with the URL (redacted)."""
        problem = _url_problem(self._url)
        client: redis.Redis | None = None
        if problem is None:
            try:
                client = redis.Redis.from_url(
                    self._url, retry=redis.retry.Retry(NoBackoff(), 0), **self._client_options
                )
                pool = client.connection_pool
                pool.connection_class(**pool.connection_kwargs)  # unknown options fail here
                db = pool.connection_kwargs.get("db", 0)
                if not isinstance(db, int) or db < 0:
                    problem = "the database number must be >= 0"
            except TypeError:
                problem = (
                    "the query holds an option redis-py does not know (its name is not shown: "
                    "it could be part of a password with an unencoded '&')"
                )
            except ValueError as exc:
                problem = str(exc).rstrip(".")
                if shows_secret(problem, self._secrets):
                    problem = "it cannot be parsed (details withheld: they show the credentials)"
        if problem is not None:  # raised here, not in `except`: no chained error shows the URL
            if client is not None:
                client.close()
            raise ValueError(f"bad Redis URL {self.redacted_url!r}: {problem}; {_EXPECTED}")
        assert client is not None
        return client

    def __repr__(self) -> str:
        prefix = f", key_prefix={self.key_prefix!r}" if self.key_prefix else ""
        return f"{type(self).__name__}({self.redacted_url!r}{prefix})"

    def _aclient(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = redis.asyncio.Redis.from_url(
                self._url,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                **self._client_options,
            )
            self._async[loop] = client
        return client

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        """redis-py's errors as the cache's: `DistributedCacheError` for the server or the
        connection, `ValueError` for input redis-py refused before sending."""
        try:
            yield
        except redis.RedisError as exc:
            detail = f"{type(exc).__name__}: {exc}"
            clean = not shows_secret(detail, self._secrets)
            if not clean:
                detail = f"{type(exc).__name__} (details withheld: they show the credentials)"
            message = f"{self.description}: {op} of {key!r} failed ({detail})"
            error: Exception = (
                ValueError(message)
                if isinstance(exc, redis.DataError)
                else DistributedCacheError(message)
            )
            raise error from (exc if clean else None)

    def get(self, key: str) -> bytes | None:
        with self._errors("GET", key):
            return _as_bytes(self._sync.get(self.key_prefix + key))

    def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds (infinity, or more than Redis can count: no expiry)."""
        with self._errors("SET", key):
            self._sync.set(self.key_prefix + key, value, px=_px(ttl))

    def remove(self, key: str) -> None:
        with self._errors("DEL", key):
            self._sync.delete(self.key_prefix + key)

    async def get_async(self, key: str) -> bytes | None:
        with self._errors("GET", key):
            return _as_bytes(await self._aclient().get(self.key_prefix + key))

    async def set_async(self, key: str, value: bytes, ttl: float) -> None:
        with self._errors("SET", key):
            await self._aclient().set(self.key_prefix + key, value, px=_px(ttl))

    async def remove_async(self, key: str) -> None:
        with self._errors("DEL", key):
            await self._aclient().delete(self.key_prefix + key)

    def clear(self) -> int:
        """Delete every key under `key_prefix` (SCAN and UNLINK in batches; never FLUSHDB) and
        return how many. Keys written meanwhile may survive. Refused without a `key_prefix`:
        that would be every key of the database."""
        pattern = self._prefix_pattern()
        deleted = 0
        with self._errors("SCAN/UNLINK", pattern):
            batch: list[bytes] = []
            for key in self._sync.scan_iter(match=pattern, count=_SCAN_BATCH):
                batch.append(key)
                if len(batch) >= _SCAN_BATCH:
                    deleted += self._sync.unlink(*batch)
                    batch.clear()
            if batch:
                deleted += self._sync.unlink(*batch)
        return deleted

    async def clear_async(self) -> int:
        """`clear()` for asyncio code."""
        pattern = self._prefix_pattern()
        client = self._aclient()
        deleted = 0
        with self._errors("SCAN/UNLINK", pattern):
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=_SCAN_BATCH):
                batch.append(key)
                if len(batch) >= _SCAN_BATCH:
                    deleted += await client.unlink(*batch)
                    batch.clear()
            if batch:
                deleted += await client.unlink(*batch)
        return deleted

    def _prefix_pattern(self) -> str:
        if not self.key_prefix:
            raise ValueError(
                "RedisDistributedCache.clear() needs a key_prefix: without one it would delete "
                "every key of the database; build the cache with key_prefix='app:'"
            )
        return _GLOB_SPECIAL.sub(r"\\\1", self.key_prefix) + "*"

    def close(self) -> None:
        """Close the sync client's connections. Asyncio clients are closed by `close_async()`
        on their own loop."""
        self._sync.close()

    async def close_async(self) -> None:
        """Close the asyncio client of the running loop and the sync client."""
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()

    aclose = close_async
    """The same as `close_async` (the redis-py and httpx name)."""


def _url_problem(url: str) -> str | None:
    """What redis-py would accept silently or explain with the password in view."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "the scheme must be redis://, rediss:// (TLS) or unix:// (a socket)"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "it cannot be parsed"
    userinfo = split_credentials(url)[1]
    if userinfo is not None and parts.netloc.rpartition("@")[0] != userinfo:
        return (
            "the part before '@' holds a character that must be percent-encoded (/ ? # and "
            "the like): percent-encode the password with urllib.parse.quote(password, safe='')"
        )
    if parts.scheme != "unix" and not _DB_PATH.fullmatch(parts.path):
        return "the database after the host must be a number >= 0, as in redis://host:6379/0"
    return None


def _px(ttl: float) -> int | None:
    ms = ttl * 1000
    return max(1, int(ms)) if ms < _MAX_PX else None


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
