"""The one settings mechanism (cache/_settings.py), walked over every options class.

For every field that names an environment variable: a value read from the variable is the
value the constructor gets from the same thing in Python (accepted by both, or refused by both,
the refusal naming the variable); booleans, integers and numbers refuse what they do not
understand, naming the variable and the accepted forms; secrets never show.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cache
import eventbroker
import eventbroker.servicebus
import jobs
import samples.inventory._settings
from cache import CacheOptions, EntryOptions
from cache._settings import HIDDEN, INTEGER, EnvField, EnvSettings, env_fields, read_variable
from eventbroker import EventBrokerOptions
from eventbroker.contrib._services import ServicesSettings
from eventbroker.contrib.django import DjangoSettings
from eventbroker.contrib.farm import FarmSettings
from eventbroker.servicebus import ServiceBusConfigurationError, ServiceBusOptions
from jobs import SchedulerOptions
from samples.inventory._settings import InventorySettings

ROOT = Path(__file__).resolve().parent.parent
CONN = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey=k3yK3Y="
SECRET = "shared-secret-0123456789"
BASE: dict[type[Any], dict[str, str]] = {
    EventBrokerOptions: {"EVENTBROKER_SECRET": SECRET},
    ServiceBusOptions: {"EVENTBROKER_SERVICEBUS_CONNECTION_STRING": CONN},
}
"""The variables a class needs besides the one under test."""
BASE_KWARGS: dict[type[Any], dict[str, Any]] = {
    EventBrokerOptions: {"secret": SECRET},
    ServiceBusOptions: {"connection_string": CONN},
}
WITHOUT_VARIABLE = {
    (ServiceBusOptions, "credential"),  # an object: code only
    (CacheOptions, "instance_id"),  # shared by every cache of the process: code only
    (CacheOptions, "default_entry_options"),  # EntryOptions' own variables
}
_ = (cache, eventbroker, eventbroker.servicebus, jobs, samples.inventory._settings)


def _all_subclasses(cls: type[Any]) -> list[type[Any]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


CLASSES = sorted(
    {cls for cls in _all_subclasses(EnvSettings) if attrs.has(cls)},  # not attrs' pre-slots copy
    key=lambda c: c.__name__,
)
FIELDS = [(cls, field) for cls in CLASSES for field in env_fields(cls)]


def _case_id(case: tuple[type[Any], EnvField]) -> str:
    return f"{case[0].__name__}.{case[1].name}"


def test_every_options_class_uses_the_mechanism() -> None:
    names = {cls.__name__ for cls in CLASSES}
    expected = {
        "EventBrokerOptions",
        "ServiceBusOptions",
        "CacheOptions",
        "EntryOptions",
        "SchedulerOptions",
        "InventorySettings",
        "ServicesSettings",
        "DjangoSettings",
        "FarmSettings",
    }
    assert expected <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_field_names_its_variable_once(cls: type[Any]) -> None:
    named = {field.name for field in env_fields(cls)}
    missing = [
        f.name
        for f in attrs.fields(cls)
        if f.name not in named and (cls, f.name) not in WITHOUT_VARIABLE
    ]
    assert missing == []
    variables = [field.variable for field in env_fields(cls)]
    assert len(variables) == len(set(variables))


def _from_env(cls: type[Any], variable: str, text: str) -> Any:
    base = {} if variable.endswith("FULLY_QUALIFIED_NAMESPACE") else BASE.get(cls, {})
    return cls.from_env({**base, variable: text})


def _construct(cls: type[Any], name: str, value: Any) -> Any:
    base = {} if name == "fully_qualified_namespace" else BASE_KWARGS.get(cls, {})
    return cls(**{**base, name: value})


def _values(field: EnvField) -> st.SearchStrategy[tuple[str, Any]]:
    """(text of the variable, the Python value it stands for)."""
    kind = str(field.attribute.type)
    if kind == "bool":
        pairs = [(word, True) for word in ("true", "1", "yes", "on")]
        pairs += [(word, False) for word in ("false", "0", "no", "off")]
        words = st.sampled_from(pairs)
        return words.flatmap(
            lambda pair: st.sampled_from(
                [(pair[0], pair[1]), (pair[0].upper(), pair[1]), (pair[0].title(), pair[1])]
            )
        )
    if kind == "int":
        return st.integers(min_value=-(10**6), max_value=10**7).map(lambda i: (str(i), i))
    if kind in ("float", "float | None"):
        numbers = st.floats(allow_nan=False) | st.floats(min_value=-10, max_value=10**6)
        floats = numbers.map(lambda x: (repr(x), x))
        if kind == "float | None":
            return floats | st.just(("none", None))
        return floats
    assert kind in ("str", "str | None"), kind
    text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)
    return text.filter(lambda s: s.strip() == s).map(lambda s: (s, s))


@pytest.mark.parametrize(
    "case",
    [c for c in FIELDS if c[1].name != "secret" or c[0] is not EventBrokerOptions],
    ids=_case_id,
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_variable_means_what_the_same_value_means_in_python(
    case: tuple[type[Any], EnvField], data: st.DataObject
) -> None:
    cls, field = case
    text, value = data.draw(_values(field))
    try:
        expected = getattr(_construct(cls, field.name, value), field.name)
    except (ValueError, TypeError):
        with pytest.raises(cls.settings_error) as refused:
            _from_env(cls, field.variable, text)
        assert field.variable in str(refused.value)
        return
    got = getattr(_from_env(cls, field.variable, text), field.name)
    assert got == expected or (isinstance(got, float) and math.isnan(got) and math.isnan(expected))


REQUIRED: dict[tuple[type[Any], str], str] = {
    (EventBrokerOptions, "secret"): SECRET,
    (ServiceBusOptions, "connection_string"): CONN,
    (ServiceBusOptions, "fully_qualified_namespace"): "b.example",
}
"""Fields without which the class refuses to build, with a second valid value."""


@pytest.mark.parametrize("case", FIELDS, ids=_case_id)
def test_a_set_variable_is_read_and_an_argument_wins(case: tuple[type[Any], EnvField]) -> None:
    cls, field = case
    default = getattr(_construct_default(cls), field.name)
    text, value = _other_valid_value(cls, field, default)
    read = _from_env(cls, field.variable, text)
    assert getattr(read, field.name) == getattr(_construct(cls, field.name, value), field.name)
    assert getattr(read, field.name) != default
    base = {} if field.name == "fully_qualified_namespace" else BASE.get(cls, {})
    base = {k: v for k, v in base.items() if k != field.variable}
    other = REQUIRED.get((cls, field.name), default)
    overridden = cls.from_env({**base, field.variable: text}, **{field.name: other})
    assert getattr(overridden, field.name) == getattr(
        _construct(cls, field.name, other), field.name
    )
    if (
        cls,
        field.name,
    ) in REQUIRED:  # empty counts as unset: refused as missing, naming the variable
        with pytest.raises(cls.settings_error, match=field.variable):
            cls.from_env({**base, field.variable: "  "})
    else:
        assert getattr(cls.from_env({**base, field.variable: "  "}), field.name) == default


def _construct_default(cls: type[Any]) -> Any:
    return cls(**BASE_KWARGS.get(cls, {}))


_SAMPLES: dict[str, tuple[str, Any]] = {
    "secret": (SECRET + "-other", SECRET + "-other"),
    "connection_string": (CONN.replace("k3y", "x"), CONN.replace("k3y", "x")),
    "fully_qualified_namespace": ("ns.servicebus.windows.net", "ns.servicebus.windows.net"),
    "topic": ("shop-events", "shop-events"),
    "administration_endpoint": ("http://127.0.0.1:5300", "http://127.0.0.1:5300"),
    "eager_refresh_threshold": ("0.5", 0.5),
    "coalesce_window": ("0.01", 0.01),
    "database_url": ("postgresql://app:pw@db/inventory", "postgresql://app:pw@db/inventory"),
    "jobs_store": ("postgresql://app:pw@db/jobs", "postgresql://app:pw@db/jobs"),
    "transport": ("MEMORY", "memory"),
    "token": ("farm-token-0123456789", "farm-token-0123456789"),
}


def _other_valid_value(cls: type[Any], field: EnvField, default: Any) -> tuple[str, Any]:
    if field.name in _SAMPLES:
        return _SAMPLES[field.name]
    kind = str(field.attribute.type)
    if kind == "bool":
        return ("off", False) if default else ("ON", True)
    if kind == "int":
        return str(default + 1), default + 1
    if kind.startswith("float"):
        number = 7.0 if default is None else default * 2 + 1
        return repr(number), number
    return "web-1", "web-1"


BAD_TEXT = {
    "bool": ["maybe", "2", "enabled", "truee", "n"],
    "int": ["2.5", "1e3", "many", "0x10", "10 000", "nan"],
    "float": ["nan", "NaN", "-nan", "soon", "1,5", "30s"],
    "float | None": ["nan", "null", "soon"],
}
WORDS = {
    "bool": "true/false, 1/0, yes/no or on/off",
    "int": "not an integer",
    "float": "not a number",
    "float | None": "not a number",
}


@pytest.mark.parametrize(
    "case", [c for c in FIELDS if str(c[1].attribute.type) in BAD_TEXT], ids=_case_id
)
def test_garbage_is_refused_naming_the_variable_and_the_accepted_forms(
    case: tuple[type[Any], EnvField],
) -> None:
    cls, field = case
    kind = str(field.attribute.type)
    for text in BAD_TEXT[kind]:
        with pytest.raises(cls.settings_error) as refused:
            _from_env(cls, field.variable, text)
        message = str(refused.value)
        assert message.startswith(f"{field.variable}={text!r} is not "), message
        assert WORDS[kind] in message


def test_the_reported_problem_cache_fail_safe_maybe_is_refused() -> None:
    with pytest.raises(ValueError) as refused:
        CacheOptions.from_env({"CACHE_FAIL_SAFE": "maybe"})
    assert str(refused.value) == (
        "CACHE_FAIL_SAFE='maybe' is not a boolean: expected true/false, 1/0, yes/no or on/off"
    )
    for word, meaning in [("YES", True), ("Off", False), (" on ", True), ("0", False)]:
        options = CacheOptions.from_env({"CACHE_FAIL_SAFE": word})
        assert options.default_entry_options.is_fail_safe_enabled is meaning


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "field", ["duration", "fail_safe_throttle_duration", "factory_hard_timeout"]
)
def test_entry_options_refuse_nan_and_infinity_in_python_and_from_the_environment(
    field: str, value: float
) -> None:
    with pytest.raises(ValueError, match=f"EntryOptions.{field}"):
        EntryOptions(**{field: value})
    variable = f"CACHE_DEFAULT_{field.upper()}"
    with pytest.raises(ValueError, match=variable):
        CacheOptions.from_env({variable: repr(value)})


def test_infinity_is_kept_where_it_means_something() -> None:
    options = CacheOptions.from_env({"CACHE_DEFAULT_FAIL_SAFE_MAX_DURATION": "inf"})
    assert options.default_entry_options.fail_safe_max_duration == math.inf


def test_service_bus_refusals_are_its_configuration_error() -> None:
    with pytest.raises(ServiceBusConfigurationError, match="EVENTBROKER_SERVICEBUS_RECEIVE_WAIT"):
        ServiceBusOptions.from_env(
            {
                "EVENTBROKER_SERVICEBUS_CONNECTION_STRING": CONN,
                "EVENTBROKER_SERVICEBUS_RECEIVE_WAIT": "inf",
            }
        )
    with pytest.raises(ServiceBusConfigurationError, match="receive_wait"):
        ServiceBusOptions(connection_string=CONN, receive_wait=math.inf)


def test_a_rule_across_fields_names_the_variables_that_broke_it() -> None:
    with pytest.raises(ValueError) as refused:
        CacheOptions.from_env(
            {"CACHE_DEFAULT_FACTORY_SOFT_TIMEOUT": "5", "CACHE_DEFAULT_FACTORY_HARD_TIMEOUT": "2"}
        )
    assert "CACHE_DEFAULT_FACTORY_SOFT_TIMEOUT" in str(refused.value)
    assert "CACHE_DEFAULT_FACTORY_HARD_TIMEOUT" in str(refused.value)


def test_a_missing_required_setting_names_its_variable() -> None:
    with pytest.raises(ValueError, match="set EVENTBROKER_SECRET or pass secret="):
        EventBrokerOptions.from_env({})


def test_the_broker_secret_variable_rotates_keys() -> None:
    options = EventBrokerOptions.from_env({"EVENTBROKER_SECRET": f" {SECRET}-new , {SECRET} "})
    assert options.secret == (f"{SECRET}-new", SECRET)
    assert EventBrokerOptions.from_env({"EVENTBROKER_SECRET": SECRET}).secret == SECRET


SECRET_FIELDS = [
    (EventBrokerOptions, "secret", "EVENTBROKER_SECRET"),
    (ServiceBusOptions, "connection_string", "EVENTBROKER_SERVICEBUS_CONNECTION_STRING"),
    (InventorySettings, "secret", "EVENTBROKER_SECRET"),
    (FarmSettings, "token", "EVENTBROKER_FARM_TOKEN"),
]


def test_every_secret_field_is_listed_here() -> None:
    secret = {(cls, f.name) for cls, f in FIELDS if f.secrecy == "secret"}
    assert secret == {(cls, name) for cls, name, _ in SECRET_FIELDS}


@pytest.mark.parametrize(("cls", "name", "variable"), SECRET_FIELDS)
@settings(max_examples=30, deadline=None)
@given(marker=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=6, max_size=30))
def test_secrets_never_show_in_reprs_or_errors(
    cls: type[Any], name: str, variable: str, marker: str
) -> None:
    secret = f"Qz{marker}Zq"  # never a word of our messages
    if name == "connection_string":
        shapes = [
            CONN.replace("k3yK3Y=", secret),
            f"Endpoint=sb://ns/;SharedAccessKey={secret}",  # no key name: refused
            f"SharedAccessKey={secret};Endpoint",
        ]
    else:
        shapes = [secret + "x" * 20, secret, f"{secret},{secret}x"]
    for value in shapes:
        env = {**BASE.get(cls, {}), variable: value}
        try:
            options = cls.from_env(env)
        except ValueError as exc:
            assert secret not in str(exc)
            assert variable in str(exc)
            continue
        assert secret not in repr(options)
        assert f"{name}={HIDDEN}" in repr(options)


def test_urls_show_without_their_password() -> None:
    options = InventorySettings.from_env(
        {
            "DATABASE_URL": "postgresql://app:Pa55word@db/x",
            "JOBS_STORE": "postgresql://j:Pa55word@db/j",
        }
    )
    assert "Pa55word" not in repr(options)
    assert "postgresql://app:***@db/x" in repr(options)
    with pytest.raises(ValueError) as refused:
        read_variable("CACHE_REDIS_URL_PORT", environ={"CACHE_REDIS_URL_PORT": "x"}, parser=INTEGER)
    assert "'x'" in str(refused.value)


DOCUMENTED_IN = {
    EventBrokerOptions: ["README.md", "docs/eventbroker.md"],
    ServiceBusOptions: ["README.md", "docs/servicebus.md"],
    CacheOptions: ["README.md", "docs/cache.md"],
    EntryOptions: ["docs/cache.md"],
    SchedulerOptions: ["README.md", "docs/jobs.md"],
    InventorySettings: ["README.md", "docs/inventory-sample.md"],
    ServicesSettings: ["README.md", "docs/starlette.md"],
    DjangoSettings: ["README.md", "docs/django.md"],
    FarmSettings: ["README.md", "docs/farm.md"],
}


@pytest.mark.parametrize("cls", list(DOCUMENTED_IN), ids=lambda c: c.__name__)
def test_every_variable_is_in_the_settings_tables(cls: type[Any]) -> None:
    for page in DOCUMENTED_IN[cls]:
        text = (ROOT / page).read_text()
        rows = [line for line in text.splitlines() if line.startswith("|")]
        missing = [
            f.variable for f in env_fields(cls) if not any(f"`{f.variable}`" in r for r in rows)
        ]
        assert missing == [], f"{page} lacks a table row for {missing}"


ALLOWED_ENVIRON = {
    "cache/_settings.py",  # the one place settings are read
    "samples/inventory/_multiprocess.py",  # copies the environment into child processes
    "samples/inventory/_roles.py",  # copies the environment into child processes
    # Django's reloader marker (RUN_MAIN) and the environment copied into the serving child
    "eventbroker/contrib/django/_reloader.py",
}


def test_settings_are_read_only_through_the_mechanism() -> None:
    readers = []
    for package in ("eventbroker", "cache", "jobs", "samples"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative not in ALLOWED_ENVIRON and re.search(
                r"os\.environ|getenv\(", path.read_text()
            ):
                readers.append(relative)
    assert readers == [], (
        "read settings through cache._settings (EnvSettings fields with env(...) metadata, or "
        "read_variable); list a file in ALLOWED_ENVIRON only if it reads the environment for "
        "something that is not a setting"
    )
