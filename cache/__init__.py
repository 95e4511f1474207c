"""Hybrid cache (L1 memory, L2 distributed, fail-safe) with a backplane, FusionCache-style.

`cache.redis.RedisDistributedCache` is the Redis L2; `cache.eventbroker_backplane.EventBrokerBackplane`
carries backplane messages over an `eventbroker.EventBroker`.
"""

from ._auto_recovery import AutoRecoveryQueue
from ._backplane import (
    Backplane,
    BackplaneConnectionInfo,
    BackplaneMessage,
    BackplaneMessageAction,
    BackplaneSubscriptionOptions,
    MemoryBackplane,
    MemoryBackplaneHub,
    PackingBackplane,
)
from ._context import FactoryContext
from ._distributed import CircuitBreaker, DistributedCache, MemoryDistributedCache
from ._errors import (
    BackplaneError,
    CacheError,
    DistributedCacheError,
    FactoryFailedError,
    FactoryTimeoutError,
)
from ._health import Health, HealthStatus
from ._hybrid import HybridCache, MaybeValue
from ._options import CacheOptions, Duration, EntryOptions
from ._serialization import DistributedEntry, JsonSerializer, Serializer
from ._stats import CacheEventArgs, CacheEvents, CacheLevel, CacheStats

__all__ = [
    "AutoRecoveryQueue",
    "Backplane",
    "BackplaneConnectionInfo",
    "BackplaneError",
    "BackplaneMessage",
    "BackplaneMessageAction",
    "BackplaneSubscriptionOptions",
    "CacheError",
    "CacheEventArgs",
    "CacheEvents",
    "CacheLevel",
    "CacheOptions",
    "CacheStats",
    "CircuitBreaker",
    "DistributedCache",
    "DistributedCacheError",
    "DistributedEntry",
    "Duration",
    "EntryOptions",
    "FactoryContext",
    "FactoryFailedError",
    "FactoryTimeoutError",
    "Health",
    "HealthStatus",
    "HybridCache",
    "JsonSerializer",
    "MaybeValue",
    "MemoryBackplane",
    "MemoryBackplaneHub",
    "MemoryDistributedCache",
    "PackingBackplane",
    "Serializer",
]
