"""Options: `EntryOptions` (per call) and `CacheOptions` (per cache). Durations are seconds
(or `timedelta`), validated when built: never NaN, never infinite except
`fail_safe_max_duration`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import attrs

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


def _duration(
    *, positive: bool = False, infinite_ok: bool = False, none_means: str | None = None
) -> Callable[[object, attrs.Attribute[Any], float | None], None]:
    """A validator of seconds: >= 0 (or > 0), finite unless `infinite_ok`; never NaN."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
        if value is None:
            return
        in_range = value > 0 if positive else value >= 0  # False for NaN
        if not in_range or not (infinite_ok or math.isfinite(value)):
            kind = "a number of seconds" if infinite_ok else "a finite number of seconds"
            bound = "> 0" if positive else ">= 0"
            also = f" (or None for {none_means})" if none_means else ""
            also += " (math.inf: keep until evicted)" if infinite_ok else ""
            raise ValueError(f"{attribute.name} must be {kind} {bound}{also}, got {value!r}")

    return check


_non_negative = _duration()
_timeout = _duration(positive=True, none_means="no timeout")


def _threshold(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a float, got {value!r}")
    if not 0.0 < value < 1.0:  # False for NaN
        raise ValueError(
            f"{attribute.name} must be a fraction of the duration strictly between 0 and 1 "
            f"(for example 0.9), or None to disable eager refresh; got {value!r}"
        )


@attrs.frozen
class EntryOptions:
    """How one entry is cached; defaults mirror FusionCache's. Use `duplicate(**changes)` to vary."""

    duration: float = attrs.field(default=30.0, converter=_seconds, validator=_non_negative)
    """How long a value is fresh (logical expiration)."""
    jitter_max_duration: float = attrs.field(
        default=0.0, converter=_seconds, validator=_non_negative
    )
    """A random extra duration up to this much, so entries set together do not expire together."""
    is_fail_safe_enabled: bool = False
    """Keep expired values and serve them when the factory fails or times out."""
    fail_safe_max_duration: float = attrs.field(
        default=86400.0, converter=_seconds, validator=_duration(infinite_ok=True)
    )
    """How long an expired value is kept for fail-safe (physical expiration). `math.inf`: until
    evicted from L1 or removed; in Redis the entry is then stored without a TTL."""
    fail_safe_throttle_duration: float = attrs.field(
        default=30.0, converter=_seconds, validator=_non_negative
    )
    """After a failure, serve the stale value this long before calling the factory again."""
    factory_soft_timeout: float | None = attrs.field(
        default=None, converter=_optional_seconds, validator=_timeout
    )
    """With fail-safe and a stale value: return the stale value after this long."""
    factory_hard_timeout: float | None = attrs.field(
        default=None, converter=_optional_seconds, validator=_timeout
    )
    """Always: stop waiting after this long (stale value if any, else `FactoryTimeoutError`)."""
    allow_timed_out_factories_background_completion: bool = True
    """A timed-out factory keeps running and updates the cache when it finishes."""
    eager_refresh_threshold: float | None = attrs.field(default=None, validator=_threshold)
    """Fraction of `duration` after which a hit refreshes the value in the background."""
    distributed_cache_duration: float | None = attrs.field(
        default=None, converter=_optional_seconds, validator=_non_negative
    )
    """Freshness in the distributed cache; `None` means `duration`."""
    skip_distributed_cache: bool = False
    skip_backplane_notifications: bool = False
    skip_memory_cache: bool = False

    def __attrs_post_init__(self) -> None:
        soft, hard = self.factory_soft_timeout, self.factory_hard_timeout
        if soft is not None and hard is not None and soft > hard:
            raise ValueError(
                f"factory_soft_timeout ({soft}s) must not exceed factory_hard_timeout ({hard}s)"
            )

    def duplicate(self, **changes: Any) -> EntryOptions:
        """A copy with `changes` applied (validated again)."""
        return attrs.evolve(self, **changes)


@attrs.frozen
class CacheOptions:
    """Options of one `HybridCache`."""

    name: str = "default"
    """Names the cache in logs; caches of different names must not share a backplane channel."""
    default_entry_options: EntryOptions = attrs.field(
        factory=EntryOptions, validator=attrs.validators.instance_of(EntryOptions)
    )
    max_entries: int = attrs.field(default=10_000)
    """L1 bound: the least recently used entry is evicted past this many."""
    distributed_cache_circuit_breaker_duration: float = attrs.field(
        default=5.0, converter=_seconds, validator=_non_negative
    )
    """After an L2 error, skip L2 this long, then probe it again (0 disables the breaker)."""
    auto_recovery_max_items: int = attrs.field(default=1000)
    """Bound of the queue of backplane messages that could not be published."""
    auto_recovery_delay: float = attrs.field(
        default=5.0, converter=_seconds, validator=_duration(positive=True)
    )
    """While the queue holds messages, retry them this often (besides on reconnect)."""
    instance_id: str | None = None
    """The cache's id in backplane messages (messages from it are ignored). `None`: a new
    UUID per `HybridCache`, so caches built from one options object stay distinct."""
    background_workers: int = attrs.field(default=4)
    """Threads for timed-out factories, eager refresh and auto-recovery replay (sync side)."""

    @max_entries.validator
    @auto_recovery_max_items.validator
    @background_workers.validator
    def _check_positive_int(self, attribute: attrs.Attribute[Any], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CacheOptions:
        """Options from `CACHE_NAME`, `CACHE_MAX_ENTRIES`, `CACHE_DEFAULT_DURATION`,
        `CACHE_FAIL_SAFE` (1/0), `CACHE_CIRCUIT_BREAKER_DURATION`, `CACHE_AUTO_RECOVERY_DELAY`;
        `overrides` win."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        entry: dict[str, Any] = {}
        try:
            if "CACHE_NAME" in env:
                kwargs["name"] = env["CACHE_NAME"]
            if "CACHE_MAX_ENTRIES" in env:
                kwargs["max_entries"] = int(env["CACHE_MAX_ENTRIES"])
            if "CACHE_AUTO_RECOVERY_DELAY" in env:
                kwargs["auto_recovery_delay"] = float(env["CACHE_AUTO_RECOVERY_DELAY"])
            if "CACHE_CIRCUIT_BREAKER_DURATION" in env:
                kwargs["distributed_cache_circuit_breaker_duration"] = float(
                    env["CACHE_CIRCUIT_BREAKER_DURATION"]
                )
            if "CACHE_DEFAULT_DURATION" in env:
                entry["duration"] = float(env["CACHE_DEFAULT_DURATION"])
        except ValueError as exc:
            raise ValueError(f"bad cache setting in the environment: {exc}") from None
        if "CACHE_FAIL_SAFE" in env:
            entry["is_fail_safe_enabled"] = env["CACHE_FAIL_SAFE"].strip().lower() in (
                "1",
                "true",
                "yes",
            )
        if entry:
            kwargs["default_entry_options"] = EntryOptions(**entry)
        kwargs.update(overrides)
        return cls(**kwargs)
