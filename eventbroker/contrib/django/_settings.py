"""The app's settings: the ``EVENTBROKER`` dict of Django's settings over the environment.

Every value has one precedence: a key of the ``EVENTBROKER`` dict, else its environment
variable, else the default. The app's own keys are `DjangoSettings` fields (read by the
library's one settings mechanism, `cache._settings`); ``OPTIONS`` and ``SERVICEBUS`` are
keywords of `EventBrokerOptions.from_env` and `ServiceBusOptions.from_env`, which read the
other variables.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import attrs
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from cache._settings import SECRET, EnvSettings, env, read_variable, refuse

from ..._options import EventBrokerOptions
from .._services import JOBS_RUN_SCHEDULER, servicebus_configured

SETTING = "EVENTBROKER"
_KEYS = {
    "TRANSPORT": "transport",
    "AUTOSTART": "autostart",
    "RUN_JOBS": "run_jobs",
    "SCHEDULER": "scheduler",
}
"""The ``EVENTBROKER`` keys of `DjangoSettings` fields."""
_SECTIONS = ("OPTIONS", "SERVICEBUS")
_TRANSPORTS = ("servicebus", "memory")
_SECRET_VARIABLE = "EVENTBROKER_SECRET"
_SECRET_CONTEXT = b"eventbroker.contrib.django broker secret"


def _transport_name(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _check_transport(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and value not in _TRANSPORTS:
        refuse(ValueError, instance, attribute, value, "'servicebus' or 'memory'")


def _check_boolean(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        refuse(TypeError, instance, attribute, value, "True or False")


def _check_path(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        refuse(TypeError, instance, attribute, value, "a dotted path")


@attrs.frozen
class DjangoSettings(EnvSettings):
    """The app's own settings; `from_settings` puts the ``EVENTBROKER`` dict's keys over the
    environment variables."""

    transport: str | None = attrs.field(
        default=None,
        converter=_transport_name,
        validator=_check_transport,
        metadata=env("EVENTBROKER_TRANSPORT"),
    )
    """``"servicebus"``, ``"memory"`` (an in-process hub: one process only), or None: Service Bus
    when a connection string or namespace is configured, else memory."""
    autostart: bool = attrs.field(
        default=True, validator=_check_boolean, metadata=env("EVENTBROKER_AUTOSTART")
    )
    """Start at the first request of a serving process."""
    run_jobs: bool = attrs.field(
        default=False, validator=_check_boolean, metadata=env(JOBS_RUN_SCHEDULER)
    )
    """The jobs role: this instance runs the job scheduler (the Starlette integration's
    variable)."""
    scheduler: str | None = attrs.field(
        default=None, validator=_check_path, metadata=env("EVENTBROKER_SCHEDULER")
    )
    """Dotted path of ``build(registry) -> jobs.JobScheduler``."""

    @classmethod
    def from_settings(
        cls, raw: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> DjangoSettings:
        """The ``EVENTBROKER`` dict's keys (`raw`, default: Django's settings; a key set to None
        counts as unset) over the environment variables (`environ`, default: the process's);
        `ImproperlyConfigured` names the key or the variable that is wrong."""
        raw = django_setting() if raw is None else raw
        given = {name: raw[key] for key, name in _KEYS.items() if raw.get(key) is not None}
        try:
            return cls.from_env(environ, **given)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            for key, name in _KEYS.items():  # a refused key is named as the user wrote it
                message = message.replace(f"{cls.__name__}.{name} ", f"{SETTING}[{key!r}] ")
            raise ImproperlyConfigured(message) from None


def django_setting() -> Mapping[str, Any]:
    """``settings.EVENTBROKER`` (empty when unset), its keys checked."""
    raw = getattr(settings, SETTING, None) or {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"settings.{SETTING} must be a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {*_KEYS, *_SECTIONS})
    if unknown:
        raise ImproperlyConfigured(
            f"settings.{SETTING} has unknown keys {', '.join(map(repr, unknown))}; known: "
            f"{', '.join([*_KEYS, *_SECTIONS])} (see docs/django.md)"
        )
    return raw


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {}) or {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"{SETTING}[{name!r}] must be a dict of keyword arguments, got {type(value).__name__}"
        )
    return dict(value)


def _derived_secret() -> str:
    secret = getattr(settings, "SECRET_KEY", "")
    if not secret:
        raise ImproperlyConfigured(
            f"the event broker needs a secret: set {_SECRET_VARIABLE}, {SETTING}['OPTIONS']"
            "['secret'], or SECRET_KEY (the default secret is derived from it)"
        )
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    return hmac.new(key, _SECRET_CONTEXT, hashlib.sha256).hexdigest()


@attrs.frozen
class EventBrokerSettings:
    """What the app runs from, read and checked by `load`: `DjangoSettings`, with the transport
    chosen, and the broker's options."""

    transport: str
    """``"servicebus"`` or ``"memory"``."""
    options: EventBrokerOptions
    servicebus: dict[str, Any] = attrs.field(repr=False)
    """Keyword arguments of `ServiceBusOptions.from_env`."""
    autostart: bool = True
    run_jobs: bool = False
    scheduler: str | None = None
    transport_defaulted: bool = False
    """No transport named and no Service Bus configured: the in-process hub by default."""

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> EventBrokerSettings:
        """Read and check the settings (`environ`: default, the process's environment);
        `ImproperlyConfigured` names what is wrong."""
        raw = django_setting()
        own = DjangoSettings.from_settings(raw, environ)
        options_kwargs = _section(raw, "OPTIONS")
        if "secret" not in options_kwargs and not read_variable(
            _SECRET_VARIABLE, environ=environ, secrecy=SECRET
        ):
            options_kwargs["secret"] = _derived_secret()
        try:
            options = EventBrokerOptions.from_env(environ, **options_kwargs)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"{SETTING}['OPTIONS'] or an EVENTBROKER_* variable: {exc}"
            ) from None
        servicebus = _section(raw, "SERVICEBUS")
        transport = own.transport
        if transport is None:
            named = {"connection_string", "fully_qualified_namespace"} & set(servicebus)
            transport = "servicebus" if named or servicebus_configured(environ) else "memory"
        if own.run_jobs and not own.scheduler:
            raise ImproperlyConfigured(
                f"this instance has the jobs role ({SETTING}['RUN_JOBS'] or "
                f"{JOBS_RUN_SCHEDULER}) but no scheduler: set {SETTING}['SCHEDULER'] (or "
                "EVENTBROKER_SCHEDULER) to the dotted path of a function build(registry) "
                "returning a jobs.JobScheduler"
            )
        return cls(
            transport=transport,
            options=options,
            servicebus=servicebus,
            autostart=own.autostart,
            run_jobs=own.run_jobs,
            scheduler=own.scheduler,
            transport_defaulted=own.transport is None and transport == "memory",
        )
