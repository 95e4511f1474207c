"""The ``eventbroker.contrib.django`` app in this process: the first request starts the broker,
the health view (Django's test client), the jobs role, the settings, and the caches' backplane
carrying another instance's write."""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

import cache.contrib.django as backend_module
import eventbroker.contrib.django as app
from cache import HealthStatus
from cache.eventbroker_backplane import EventBrokerBackplane
from eventbroker import EventBroker, EventBrokerOptions, EventRegistry, InMemoryTransport
from eventbroker.contrib.django import _runtime
from jobs import JobScheduler

from ..cache.conftest import wait_until


@pytest.fixture(autouse=True)
def fresh_runtime() -> Iterator[None]:
    """Each test starts with no runtime and leaves none behind."""
    app.stop()
    _runtime._failure = None
    yield
    app.stop()
    _runtime._failure = None
    backend_module.close_caches()


def build_scheduler(registry: EventRegistry) -> JobScheduler:
    return JobScheduler(store=Path(tempfile.mkdtemp()) / "jobs.sqlite3", registry=registry)


def _health(client: Client) -> tuple[int, dict[str, Any]]:
    response = client.get("/health/")
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    return response.status_code, response.json()


def test_nothing_starts_when_django_loads() -> None:
    assert app.get_runtime() is None  # django.setup() ran the app's ready()


@override_settings(EVENTBROKER={"TRANSPORT": "memory"})
def test_the_first_request_starts_the_broker_and_health_says_ok() -> None:
    status, body = _health(Client())
    runtime = app.get_runtime()
    assert runtime is not None and runtime.broker.is_started
    assert runtime.scheduler is None  # web instances run no jobs by default
    assert status == 200
    assert body["status"] == "ok", body
    components = [part["component"] for part in body["components"]]
    assert components == ["eventbroker 'default'", "cache 'default'"]
    assert caches["default"]._shared.has_backplane
    Client().get("/health/")
    assert app.get_runtime() is runtime  # started once
    app.stop()
    assert not runtime.broker.is_started
    assert not caches["default"]._shared.has_backplane  # detached before the broker stopped


def test_an_unconfigured_transport_runs_on_the_hub_and_health_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CONNECTION_STRING", "FULLY_QUALIFIED_NAMESPACE"):
        monkeypatch.delenv(f"EVENTBROKER_SERVICEBUS_{name}", raising=False)
    monkeypatch.delenv("EVENTBROKER_TRANSPORT", raising=False)
    with override_settings(EVENTBROKER={}):
        status, body = _health(Client())
    assert status == 200
    assert body["status"] == "degraded"
    assert "in-process hub" in body["reasons"][0]


@override_settings(EVENTBROKER={"TRANSPORT": "memory", "AUTOSTART": False})
def test_without_autostart_requests_start_nothing() -> None:
    status, body = _health(Client())
    assert app.get_runtime() is None
    assert status == 200
    assert [part["component"] for part in body["components"]] == ["cache 'default'"]


@override_settings(
    EVENTBROKER={
        "TRANSPORT": "servicebus",
        "SERVICEBUS": {"connection_string": "Endpoint=sb://x;SharedAccessKey=hunter2"},
    }
)
def test_a_broker_that_cannot_start_makes_health_down_503_and_requests_still_served() -> None:
    status, body = _health(Client())
    assert status == 503
    assert body["status"] == "down"
    assert "failed to start" in body["reasons"][0]
    assert "hunter2" not in str(body)
    assert app.get_runtime() is None


def test_a_cache_whose_redis_is_down_makes_health_degraded_200() -> None:
    config = {
        "default": {
            "BACKEND": "cache.contrib.django.HybridCacheBackend",
            "LOCATION": "redis://127.0.0.1:1/0",
            "KEY_PREFIX": "unreachable",
        }
    }
    with override_settings(CACHES=config, EVENTBROKER={"TRANSPORT": "memory"}):
        client = Client()
        client.get("/health/")
        assert caches["default"].get("k", "served") == "served"
        status, body = _health(client)
    assert status == 200
    assert body["status"] == "degraded"
    assert (
        "cache 'default': distributed cache (Redis 127.0.0.1:1) unreachable" in body["reasons"][0]
    )


@override_settings(
    EVENTBROKER={
        "TRANSPORT": "memory",
        "RUN_JOBS": True,
        "SCHEDULER": "tests.contrib_django.test_app.build_scheduler",
    }
)
def test_the_jobs_role_runs_the_scheduler_and_stops_it() -> None:
    runtime = app.start()
    assert isinstance(runtime.scheduler, JobScheduler)
    assert runtime.scheduler.health().status is HealthStatus.OK
    status, body = _health(Client())
    assert status == 200, body
    assert any(p["component"].startswith("job scheduler") for p in body["components"])
    app.stop()
    assert runtime.scheduler.health().status is HealthStatus.DOWN
    assert not runtime.broker.is_started


def test_another_instance_s_write_reaches_this_instance_through_the_backplane() -> None:
    with override_settings(EVENTBROKER={"TRANSPORT": "memory"}):
        runtime = app.start()
        backend = caches["default"]
        backend.set("k", "old", timeout=None)
        assert backend.get("k") == "old"  # held in this instance's memory
        # another instance: its own broker on the hub, its own HybridCache on the same Redis
        other_broker = EventBroker(
            InMemoryTransport(app.hub()), EventBrokerOptions(secret=runtime.broker.options.secret)
        )
        other_broker.start()
        other = backend_module._Shared(
            backend._config, EventBrokerBackplane(EventRegistry(other_broker), other_broker)
        )
        try:
            other.hybrid.set(backend.make_key("k"), pickle.dumps("new"))
            app.hub().drain()
            wait_until(lambda: backend.get("k") == "new")
        finally:
            other.close()
            other_broker.stop()
            backend.clear()


def test_cache_writes_without_a_broker_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    backend_module._warned_no_backplane = False
    backend = caches["default"]
    backend.set("a", 1)
    backend.set("b", 2)
    backend.delete_many(["a", "b"])
    warnings = [r for r in caplog.records if "without a running event broker" in r.getMessage()]
    assert len(warnings) == 1


# ------------------------------------------------------------------ settings


def test_settings_come_from_the_dict_over_the_environment() -> None:
    env = {
        "EVENTBROKER_APPLICATION_NAME": "from-env",
        "JOBS_RUN_SCHEDULER": "yes",
        "EVENTBROKER_SCHEDULER": "tests.contrib_django.test_app.build_scheduler",
        "EVENTBROKER_SERVICEBUS_CONNECTION_STRING": "Endpoint=sb://x",
    }
    with override_settings(EVENTBROKER={"OPTIONS": {"application_name": "from-settings"}}):
        loaded = app.EventBrokerSettings.load(env)
    assert loaded.options.application_name == "from-settings"
    assert loaded.run_jobs is True
    assert loaded.transport == "servicebus"  # a connection string is configured
    with override_settings(EVENTBROKER={"RUN_JOBS": False}):
        assert app.EventBrokerSettings.load(env).run_jobs is False
    assert app.EventBrokerSettings.load({}).transport == "memory"


def test_each_key_of_the_dict_wins_over_its_variable() -> None:
    env = {
        "EVENTBROKER_TRANSPORT": "ServiceBus",
        "EVENTBROKER_AUTOSTART": "off",
        "EVENTBROKER_SCHEDULER": "from.the.environment",
    }
    own = app.DjangoSettings.from_settings({}, env)
    assert (own.transport, own.autostart, own.scheduler) == (
        "servicebus",
        False,
        "from.the.environment",
    )
    own = app.DjangoSettings.from_settings({"TRANSPORT": "memory", "AUTOSTART": True}, env)
    assert (own.transport, own.autostart) == ("memory", True)
    own = app.DjangoSettings.from_settings({"SCHEDULER": None}, env)  # None: unset
    assert own.scheduler == "from.the.environment"
    assert app.DjangoSettings.from_settings({}, {}) == app.DjangoSettings()


def test_the_default_secret_is_derived_from_secret_key() -> None:
    first, second = app.EventBrokerSettings.load({}), app.EventBrokerSettings.load({})
    assert first.options.secret == second.options.secret
    with override_settings(SECRET_KEY="another-secret-key-of-the-tests"):
        assert app.EventBrokerSettings.load({}).options.secret != first.options.secret
    assert app.EventBrokerSettings.load({"EVENTBROKER_SECRET": "s" * 32}).options.secret == "s" * 32


@pytest.mark.parametrize(
    ("setting", "env", "message"),
    [
        ({"RUN_JOB": True}, {}, "unknown keys 'RUN_JOB'"),
        ({}, {"JOBS_RUN_SCHEDULER": "maybe"}, "JOBS_RUN_SCHEDULER='maybe' is not a boolean"),
        ({}, {"EVENTBROKER_AUTOSTART": "2"}, "EVENTBROKER_AUTOSTART='2' is not a boolean"),
        ({}, {"EVENTBROKER_TRANSPORT": "kafka"}, "EVENTBROKER_TRANSPORT='kafka' is not valid"),
        ({"RUN_JOBS": "yes"}, {}, r"^EVENTBROKER\['RUN_JOBS'\] must be True or False"),
        ({"AUTOSTART": 1}, {}, r"^EVENTBROKER\['AUTOSTART'\] must be True or False, got 1"),
        ({"SCHEDULER": ["a.b"]}, {}, r"^EVENTBROKER\['SCHEDULER'\] must be a dotted path"),
        ({"RUN_JOBS": True}, {}, "no scheduler"),
        ({"TRANSPORT": "kafka"}, {}, "'servicebus' or 'memory'"),
        ({"OPTIONS": {"stop_timeout": -1}}, {}, "stop_timeout"),
        ({"SERVICEBUS": "topic"}, {}, "must be a dict"),
    ],
)
def test_bad_settings_name_the_problem(
    setting: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with override_settings(EVENTBROKER=setting), pytest.raises(ImproperlyConfigured, match=message):
        app.EventBrokerSettings.load(env)
