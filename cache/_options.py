"""Options: `EntryOptions` (per call) and `CacheOptions` (per cache). Durations are seconds
(or `timedelta`), validated when built: never NaN, never infinite except
`fail_safe_max_duration`."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import attrs

from ._settings import EnvSettings, env, env_group, integer, number

Duration = float | int | timedelta
"""A duration: seconds (int or float) or a `timedelta`."""


def _seconds(value: Duration) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a duration must be seconds (int/float) or a timedelta, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float: refused as infinite by the validator
        return math.inf if value > 0 else -math.inf


def _optional_seconds(value: Duration | None) -> float | None:
    return None if value is None else _seconds(value)


_SECONDS = "a finite number of seconds"
_non_negative = number(minimum=0, what=_SECONDS)
_timeout = number(above=0, what=_SECONDS, note="or None for no timeout")
_threshold = number(
    above=0,
    below=1,
    what="a fraction of the duration",
    note="for example 0.9, or None to disable eager refresh",
)


def _entry(name: str) -> dict[str, Any]:
    return env(f"CACHE_DEFAULT_{name.upper()}")


@attrs.frozen
class EntryOptions(EnvSettings):
    """How one entry is cached; defaults mirror FusionCache's. Use `duplicate(**changes)` to vary.

    `from_env()` reads the ``CACHE_DEFAULT_*`` variables (and ``CACHE_FAIL_SAFE``): the
    defaults of a `CacheOptions.from_env()`."""

    duration: float = attrs.field(
        default=30.0, converter=_seconds, validator=_non_negative, metadata=_entry("duration")
    )
    """How long a value is fresh (logical expiration)."""
    jitter_max_duration: float = attrs.field(
        default=0.0,
        converter=_seconds,
        validator=_non_negative,
        metadata=_entry("jitter_max_duration"),
    )
    """A random extra duration up to this much, so entries set together do not expire together."""
    is_fail_safe_enabled: bool = attrs.field(default=False, metadata=env("CACHE_FAIL_SAFE"))
    """Keep expired values and serve them when the factory fails or times out."""
    fail_safe_max_duration: float = attrs.field(
        default=86400.0,
        converter=_seconds,
        validator=number(
            minimum=0, infinite_ok=True, what="a number of seconds", note="inf: until evicted"
        ),
        metadata=_entry("fail_safe_max_duration"),
    )
    """How long an expired value is kept for fail-safe (physical expiration). `math.inf`: until
    evicted from L1 or removed; in Redis the entry is then stored without a TTL."""
    fail_safe_throttle_duration: float = attrs.field(
        default=30.0,
        converter=_seconds,
        validator=_non_negative,
        metadata=_entry("fail_safe_throttle_duration"),
    )
    """After a failure, serve the stale value this long before calling the factory again."""
    factory_soft_timeout: float | None = attrs.field(
        default=None,
        converter=_optional_seconds,
        validator=_timeout,
        metadata=_entry("factory_soft_timeout"),
    )
    """With fail-safe and a stale value: return the stale value after this long."""
    factory_hard_timeout: float | None = attrs.field(
        default=None,
        converter=_optional_seconds,
        validator=_timeout,
        metadata=_entry("factory_hard_timeout"),
    )
    """Always: stop waiting after this long (stale value if any, else `FactoryTimeoutError`)."""
    allow_timed_out_factories_background_completion: bool = attrs.field(
        default=True, metadata=_entry("allow_timed_out_factories_background_completion")
    )
    """A timed-out factory keeps running and updates the cache when it finishes."""
    eager_refresh_threshold: float | None = attrs.field(
        default=None, validator=_threshold, metadata=_entry("eager_refresh_threshold")
    )
    """Fraction of `duration` after which a hit refreshes the value in the background."""
    distributed_cache_duration: float | None = attrs.field(
        default=None,
        converter=_optional_seconds,
        validator=_non_negative,
        metadata=_entry("distributed_cache_duration"),
    )
    """Freshness in the distributed cache; `None` means `duration`."""
    distributed_cache_soft_timeout: float | None = attrs.field(
        default=None,
        converter=_optional_seconds,
        validator=_timeout,
        metadata=_entry("distributed_cache_soft_timeout"),
    )
    """With a stale value to fall back to: stop waiting for an L2 read after this long (the
    read goes on in the background)."""
    distributed_cache_hard_timeout: float | None = attrs.field(
        default=None,
        converter=_optional_seconds,
        validator=_timeout,
        metadata=_entry("distributed_cache_hard_timeout"),
    )
    """Always: stop waiting for any L2 operation after this long (it goes on in the
    background; a read counts as a miss)."""
    allow_background_distributed_cache_operations: bool = attrs.field(
        default=False, metadata=_entry("allow_background_distributed_cache_operations")
    )
    """L2 writes and removes (and the backplane message after them) run in the background:
    the caller does not wait for them."""
    skip_distributed_cache: bool = attrs.field(
        default=False, metadata=_entry("skip_distributed_cache")
    )
    """Neither read nor write L2 (both flags below at once)."""
    skip_distributed_cache_read: bool = attrs.field(
        default=False, metadata=_entry("skip_distributed_cache_read")
    )
    """Do not read L2 (writes still go to it)."""
    skip_distributed_cache_write: bool = attrs.field(
        default=False, metadata=_entry("skip_distributed_cache_write")
    )
    """Do not write or remove in L2 (reads still come from it)."""
    skip_distributed_cache_read_when_stale: bool = attrs.field(
        default=False, metadata=_entry("skip_distributed_cache_read_when_stale")
    )
    """When L1 holds a stale copy, do not look in L2 for a newer one (call the factory): with a
    backplane, a newer L2 value would have been announced."""
    skip_backplane_notifications: bool = attrs.field(
        default=False, metadata=_entry("skip_backplane_notifications")
    )
    skip_memory_cache: bool = attrs.field(default=False, metadata=_entry("skip_memory_cache"))

    def __attrs_post_init__(self) -> None:
        for what in ("factory", "distributed_cache"):
            soft = getattr(self, f"{what}_soft_timeout")
            hard = getattr(self, f"{what}_hard_timeout")
            if soft is not None and hard is not None and soft > hard:
                raise ValueError(
                    f"{what}_soft_timeout ({soft}s) must not exceed {what}_hard_timeout ({hard}s)"
                )

    @property
    def reads_distributed_cache(self) -> bool:
        """Neither `skip_distributed_cache` nor `skip_distributed_cache_read`."""
        return not (self.skip_distributed_cache or self.skip_distributed_cache_read)

    @property
    def writes_distributed_cache(self) -> bool:
        """Neither `skip_distributed_cache` nor `skip_distributed_cache_write`."""
        return not (self.skip_distributed_cache or self.skip_distributed_cache_write)

    def duplicate(self, **changes: Any) -> EntryOptions:
        """A copy with `changes` applied (validated again)."""
        return attrs.evolve(self, **changes)


_at_least_one = integer(minimum=1)


@attrs.frozen
class CacheOptions(EnvSettings):
    """Options of one `HybridCache`; `from_env()` reads the ``CACHE_*`` variables (the
    defaults of `default_entry_options` too: see `EntryOptions`)."""

    name: str = attrs.field(default="default", metadata=env("CACHE_NAME"))
    """Names the cache in logs; caches of different names must not share a backplane channel."""
    default_entry_options: EntryOptions = attrs.field(
        factory=EntryOptions,
        validator=attrs.validators.instance_of(EntryOptions),
        metadata=env_group(EntryOptions),
    )
    max_entries: int = attrs.field(
        default=10_000, validator=_at_least_one, metadata=env("CACHE_MAX_ENTRIES")
    )
    """L1 bound: the least recently used entry is evicted past this many."""
    distributed_cache_circuit_breaker_duration: float = attrs.field(
        default=5.0,
        converter=_seconds,
        validator=number(minimum=0, what=_SECONDS, note="0 disables the breaker"),
        metadata=env("CACHE_CIRCUIT_BREAKER_DURATION"),
    )
    """After an L2 error, skip L2 this long, then probe it again (0 disables the breaker)."""
    auto_recovery_max_items: int = attrs.field(
        default=1000, validator=_at_least_one, metadata=env("CACHE_AUTO_RECOVERY_MAX_ITEMS")
    )
    """Bound of the queue of backplane messages that could not be published."""
    auto_recovery_delay: float = attrs.field(
        default=5.0,
        converter=_seconds,
        validator=number(above=0, what=_SECONDS),
        metadata=env("CACHE_AUTO_RECOVERY_DELAY"),
    )
    """While the queue holds messages, retry them this often (besides on reconnect)."""
    instance_id: str | None = None
    """The cache's id in backplane messages (messages from it are ignored). `None`: a new
    UUID per `HybridCache`, so caches built from one options object stay distinct (hence no
    environment variable: every cache of the process would share it)."""
    marker_refresh_interval: float = attrs.field(
        default=30.0,
        converter=_seconds,
        validator=_non_negative,
        metadata=env("CACHE_MARKER_REFRESH_INTERVAL"),
    )
    """How long a tag or clear mark read from L2 is trusted before it is read again (the
    backplane brings newer ones meanwhile; 0 reads it on every L2 hit)."""
    marker_duration: float = attrs.field(
        default=30 * 86400.0,
        converter=_seconds,
        validator=number(
            minimum=0, infinite_ok=True, what="a number of seconds", note="inf: no expiry"
        ),
        metadata=env("CACHE_MARKER_DURATION"),
    )
    """How long L2 keeps a tag or clear mark (30 days): keep it at least as long as the entries
    it covers live in L2 (`fail_safe_max_duration`, 1 day by default); `inf`: no expiry (the
    marks are one small key per tag)."""
    ignore_incoming_backplane_notifications: bool = attrs.field(
        default=False, metadata=env("CACHE_IGNORE_INCOMING_BACKPLANE_NOTIFICATIONS")
    )
    """Publish on the backplane but apply nothing received from it (nor lost-message alarms):
    for an instance that must keep what it has, such as a read-mostly worker."""
    background_workers: int = attrs.field(
        default=4, validator=_at_least_one, metadata=env("CACHE_BACKGROUND_WORKERS")
    )
    """Threads for timed-out factories, eager refresh and auto-recovery replay (sync side)."""
