from __future__ import annotations

import math
from datetime import timedelta

import pytest

from cache import CacheOptions, EntryOptions, HybridCache


def test_durations_accept_seconds_and_timedelta() -> None:
    options = EntryOptions(duration=timedelta(minutes=2), fail_safe_max_duration=60)
    assert options.duration == 120.0
    assert options.fail_safe_max_duration == 60.0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"duration": -1}, "duration"),
        ({"fail_safe_throttle_duration": -0.5}, "fail_safe_throttle_duration"),
        ({"jitter_max_duration": timedelta(seconds=-1)}, "jitter_max_duration"),
        ({"factory_hard_timeout": 0}, "factory_hard_timeout"),
        ({"eager_refresh_threshold": 1.0}, "eager_refresh_threshold"),
        ({"eager_refresh_threshold": 0}, "eager_refresh_threshold"),
        ({"factory_soft_timeout": 2, "factory_hard_timeout": 1}, "factory_soft_timeout"),
    ],
)
def test_invalid_options_fail_when_built_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        EntryOptions(**changes)  # type: ignore[arg-type]


def test_duration_type_error_names_the_value() -> None:
    with pytest.raises(TypeError, match="'soon'"):
        EntryOptions(duration="soon")  # type: ignore[arg-type]


def test_duplicate_applies_changes_and_validates() -> None:
    base = EntryOptions(duration=5, is_fail_safe_enabled=True)
    copy = base.duplicate(duration=9)
    assert (copy.duration, copy.is_fail_safe_enabled, base.duration) == (9.0, True, 5.0)
    with pytest.raises(ValueError, match="eager_refresh_threshold"):
        base.duplicate(eager_refresh_threshold=2)


def test_cache_options_from_env() -> None:
    options = CacheOptions.from_env(
        {
            "CACHE_NAME": "shop",
            "CACHE_MAX_ENTRIES": "50",
            "CACHE_DEFAULT_DURATION": "3",
            "CACHE_FAIL_SAFE": "1",
        }
    )
    assert options.name == "shop"
    assert options.max_entries == 50
    assert options.default_entry_options.duration == 3.0
    assert options.default_entry_options.is_fail_safe_enabled
    with pytest.raises(ValueError, match="max_entries"):
        CacheOptions(max_entries=0)
    with pytest.raises(ValueError, match="CACHE_MAX_ENTRIES='many' is not an integer"):
        CacheOptions.from_env({"CACHE_MAX_ENTRIES": "many"})


def test_instance_ids_are_unique_per_cache() -> None:
    options = CacheOptions()
    with HybridCache(options) as first, HybridCache(options) as second:
        assert first.instance_id != second.instance_id
    with HybridCache(CacheOptions(instance_id="web-1")) as named:
        assert named.instance_id == "web-1"


ENTRY_DURATIONS = [
    "duration",
    "jitter_max_duration",
    "fail_safe_throttle_duration",
    "factory_soft_timeout",
    "factory_hard_timeout",
    "distributed_cache_duration",
    "eager_refresh_threshold",
]
CACHE_DURATIONS = ["distributed_cache_circuit_breaker_duration", "auto_recovery_delay"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
@pytest.mark.parametrize("field", ENTRY_DURATIONS)
def test_entry_options_refuse_nan_and_infinity_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        EntryOptions(**{field: value})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", CACHE_DURATIONS)
def test_cache_options_refuse_nan_and_infinity_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        CacheOptions(**{field: value})


def test_fail_safe_max_duration_may_be_infinite_but_not_nan() -> None:
    assert EntryOptions(fail_safe_max_duration=math.inf).fail_safe_max_duration == math.inf
    for bad in (math.nan, -math.inf, -1):
        with pytest.raises(ValueError, match="fail_safe_max_duration"):
            EntryOptions(fail_safe_max_duration=bad)


def test_nan_from_the_environment_is_refused() -> None:
    with pytest.raises(ValueError, match="CACHE_DEFAULT_DURATION='nan'"):
        CacheOptions.from_env({"CACHE_DEFAULT_DURATION": "nan"})
    with pytest.raises(ValueError, match=r"CACHE_AUTO_RECOVERY_DELAY='inf'.*auto_recovery_delay"):
        CacheOptions.from_env({"CACHE_AUTO_RECOVERY_DELAY": "inf"})


def test_eager_refresh_threshold_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="eager_refresh_threshold"):
        EntryOptions(eager_refresh_threshold="0.5")  # type: ignore[arg-type]
