"""ServiceBusOptions, naming rules, connection-string checks and backoff: pure unit tests."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbroker.servicebus import (
    ConnectionStringError,
    ServiceBusConfigurationError,
    ServiceBusOptions,
    SubscriptionNameError,
)
from eventbroker.servicebus._backoff import Backoff
from eventbroker.servicebus._naming import (
    _clean,
    check_subscription_name,
    default_subscription_name,
    is_default_subscription_name,
)

CONN = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey=s3cr3tKEY="


def test_connection_string_defaults() -> None:
    options = ServiceBusOptions(connection_string=CONN)
    assert options.topic == "eventbroker"
    assert options.auto_delete_on_idle == 1800.0
    assert options.create_missing_topic
    info = options.connection_info
    assert info is not None and info.host == "ns.servicebus.windows.net"
    assert not info.development_emulator
    assert "s3cr3t" not in repr(options)


def test_emulator_connection_string_keeps_port() -> None:
    conn = "Endpoint=sb://127.0.0.1:5673;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"
    info = ServiceBusOptions(connection_string=conn).connection_info
    assert info is not None and info.host == "127.0.0.1:5673" and info.development_emulator


@pytest.mark.parametrize(
    ("conn", "fragment"),
    [
        ("", "empty"),
        ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey", "not 'Name=value'"),
        ("SharedAccessKeyName=a;SharedAccessKey=SECRETVALUE", "no Endpoint"),
        ("Endpoint=https://ns/;SharedAccessKeyName=a;SharedAccessKey=SECRETVALUE", "sb://"),
        ("Endpoint=sb://ns/;SharedAccessKeyName=a", "SharedAccessKey"),
        ("Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey=SECRETVALUE;Foo=1", "'Foo'"),
        (
            "Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey=SECRETVALUE;UseDevelopmentEmulator=maybe",
            "UseDevelopmentEmulator",
        ),
    ],
)
def test_bad_connection_string_fails_at_construction(conn: str, fragment: str) -> None:
    with pytest.raises(ConnectionStringError) as info:
        ServiceBusOptions(connection_string=conn)
    assert fragment in str(info.value)
    assert "SECRETVALUE" not in str(info.value)


@given(st.text(alphabet=string.ascii_letters + string.digits + "+/=;", min_size=8, max_size=40))
def test_connection_string_errors_never_echo_the_key(text: str) -> None:
    key = f"Z9{text}+"  # a marker our messages never contain, so a hit means an echo
    for conn in (
        f"Endpoint=ftp://ns/;SharedAccessKeyName=a;SharedAccessKey={key}",
        f"SharedAccessKey={key};Endpoint",
        f"Endpoint=sb://ns/;SharedAccessKey={key}",
    ):
        try:
            ServiceBusOptions(connection_string=conn)
        except ConnectionStringError as exc:
            assert key not in str(exc)


def test_exactly_one_of_connection_string_or_namespace() -> None:
    with pytest.raises(ServiceBusConfigurationError, match="exactly one"):
        ServiceBusOptions()
    with pytest.raises(ServiceBusConfigurationError, match="exactly one"):
        ServiceBusOptions(
            connection_string=CONN, fully_qualified_namespace="ns.servicebus.windows.net"
        )
    ServiceBusOptions(fully_qualified_namespace="ns.servicebus.windows.net")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"auto_delete_on_idle": 299}, "at least 300"),
        ({"message_time_to_live": 0}, "> 0"),
        ({"topic": "bad topic!"}, "topic name"),
        ({"administration_endpoint": "127.0.0.1:80"}, "http://"),
        ({"reconnect_initial_backoff": 5, "reconnect_max_backoff": 1}, "reconnect_max_backoff"),
    ],
)
def test_invalid_settings_name_the_rule(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ServiceBusConfigurationError, match=fragment):
        ServiceBusOptions(connection_string=CONN, **kwargs)  # type: ignore[arg-type]


def test_from_env_reads_every_kind_and_overrides_win() -> None:
    env = {
        "EVENTBROKER_SERVICEBUS_CONNECTION_STRING": CONN,
        "EVENTBROKER_SERVICEBUS_TOPIC": "shop-events",
        "EVENTBROKER_SERVICEBUS_AUTO_DELETE_ON_IDLE": "600",
        "EVENTBROKER_SERVICEBUS_MESSAGE_TIME_TO_LIVE": "3600.5",
        "EVENTBROKER_SERVICEBUS_CREATE_MISSING_TOPIC": "no",
        "EVENTBROKER_SERVICEBUS_PREFETCH_COUNT": "7",
        "EVENTBROKER_SERVICEBUS_SUBSCRIPTION_NAME": "web-1",
    }
    options = ServiceBusOptions.from_env(env, prefetch_count=9)
    assert options.topic == "shop-events"
    assert options.auto_delete_on_idle == 600.0
    assert options.message_time_to_live == 3600.5
    assert options.create_missing_topic is False
    assert options.prefetch_count == 9
    assert options.subscription_name == "web-1"


def test_from_env_bad_value_names_the_variable() -> None:
    env = {
        "EVENTBROKER_SERVICEBUS_CONNECTION_STRING": CONN,
        "EVENTBROKER_SERVICEBUS_FILTER_OWN_MESSAGES": "perhaps",
    }
    with pytest.raises(
        ServiceBusConfigurationError, match="EVENTBROKER_SERVICEBUS_FILTER_OWN_MESSAGES"
    ):
        ServiceBusOptions.from_env(env)


def test_every_setting_but_the_credential_has_an_environment_variable() -> None:
    import attrs

    missing = [f.name for f in attrs.fields(ServiceBusOptions) if "env" not in f.metadata]
    assert missing == ["credential"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("x" * 51, "51 characters"),
        ("-leading", "start"),
        ("trailing.", "start"),
        ("has space", "letters"),
        ("slash/no", "letters"),
    ],
)
def test_invalid_subscription_name_names_the_rule(name: str, fragment: str) -> None:
    with pytest.raises(SubscriptionNameError, match=fragment):
        check_subscription_name(name)


@given(host=st.text(max_size=80), app=st.text(max_size=80))
def test_default_subscription_name_is_always_valid(host: str, app: str) -> None:
    name = default_subscription_name(app, host_name=host)
    check_subscription_name(name)
    assert len(name) <= 50


def test_default_subscription_name_shape() -> None:
    assert default_subscription_name("shop", host_name="web-01.internal", suffix="ab12cd34") == (
        "web-01.internal-shop-ab12cd34"
    )
    assert default_subscription_name("shop") != default_subscription_name("shop")


@given(host=st.text(max_size=80), app=st.text(min_size=1, max_size=80))
def test_every_default_name_is_recognised_as_its_applications(host: str, app: str) -> None:
    name = default_subscription_name(app, host_name=host)
    has_application_part = bool(_clean(app, 20))  # "!!!" leaves none: nothing to match
    assert is_default_subscription_name(name, app) == has_application_part


def test_names_set_by_hand_and_other_applications_are_not_recognised() -> None:
    assert is_default_subscription_name("web-1-shop-0badc0de", "shop")
    assert is_default_subscription_name("shop-0badc0de", "shop")
    for name in (
        "shop",
        "shop-orders",
        "web-1-shop-0BADC0DE",
        "web-1-shop-0badc0de1",
        "web-1-myshop-0badc0de",
    ):
        assert not is_default_subscription_name(name, "shop")
    assert not is_default_subscription_name("web-1-billing-0badc0de", "shop")
    assert not is_default_subscription_name("web-1-0badc0de", "!!!")  # no application part


def test_backoff_doubles_caps_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


@given(st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=1, max_size=40))
def test_backoff_jitter_stays_within_half_to_full_ceiling(draws: list[float]) -> None:
    values = iter(draws)
    backoff = Backoff(0.1, 10.0, random=lambda: next(values))
    for n in range(len(draws)):
        ceiling = min(10.0, 0.1 * 2**n)
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
