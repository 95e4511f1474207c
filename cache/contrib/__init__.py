"""Optional framework integrations of the cache. Each module imports its framework only when
imported itself, and names the extra to install when the framework is missing:

- `cache.contrib.django`: `HybridCacheBackend`, a Django cache backend (extra ``django``).
"""
