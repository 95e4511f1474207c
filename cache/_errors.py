"""Errors raised by the hybrid cache."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error the cache raises on purpose."""


class FactoryTimeoutError(CacheError, TimeoutError):
    """The factory did not finish within `factory_hard_timeout` and no stale value could be served."""


class BackplaneError(CacheError):
    """A backplane could not publish a message (disconnected, broker down)."""


class DistributedCacheError(CacheError):
    """The distributed cache could not be reached or answered with an error (raised by
    `RedisDistributedCache`). A `HybridCache` never lets it out: it logs it, opens its circuit
    breaker and carries on without L2."""


class FactoryFailedError(CacheError):
    """A factory returned `ctx.fail(message)` and there was no stale value to serve."""
