"""`RedisDistributedCache`: the L2 on Redis, through redis-py's sync and asyncio clients.

Configure with a URL (``redis://host:6379/0``, ``rediss://`` for TLS), from the argument or the
``CACHE_REDIS_URL`` environment variable. Calls fail fast (no client-side retries, short socket
timeouts): the hybrid cache logs the error and opens its circuit breaker instead of waiting.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff

DEFAULT_URL = "redis://127.0.0.1:6379/0"


class RedisDistributedCache:
    """A `DistributedCache` on Redis. Keys are stored as ``key_prefix + key`` with a
    millisecond TTL. One sync client (thread-safe pool) and one asyncio client per event loop."""

    def __init__(
        self,
        url: str | None = None,
        *,
        key_prefix: str = "",
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        **client_options: Any,
    ) -> None:
        self.url = url or os.environ.get("CACHE_REDIS_URL") or DEFAULT_URL
        self.key_prefix = key_prefix
        self._client_options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            **client_options,
        }
        try:
            self._sync = redis.Redis.from_url(
                self.url,
                retry=redis.retry.Retry(NoBackoff(), 0),
                **self._client_options,
            )
        except ValueError as exc:
            raise ValueError(
                f"bad Redis URL {self.url!r} ({exc}); expected redis://host:port/db or rediss://..."
            ) from None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def _aclient(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = redis.asyncio.Redis.from_url(
                self.url,
                retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                **self._client_options,
            )
            self._async[loop] = client
        return client

    def get(self, key: str) -> bytes | None:
        return _as_bytes(self._sync.get(self.key_prefix + key))

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._sync.set(self.key_prefix + key, value, px=max(1, int(ttl * 1000)))

    def remove(self, key: str) -> None:
        self._sync.delete(self.key_prefix + key)

    async def get_async(self, key: str) -> bytes | None:
        return _as_bytes(await self._aclient().get(self.key_prefix + key))

    async def set_async(self, key: str, value: bytes, ttl: float) -> None:
        await self._aclient().set(self.key_prefix + key, value, px=max(1, int(ttl * 1000)))

    async def remove_async(self, key: str) -> None:
        await self._aclient().delete(self.key_prefix + key)

    def close(self) -> None:
        """Close the sync client's connections (asyncio clients: `aclose()`)."""
        self._sync.close()

    async def aclose(self) -> None:
        """Close the asyncio client of the running loop."""
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
