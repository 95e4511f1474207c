"""What the app runs in one process: the broker (from settings), the caches' backplane and, on
an instance with the jobs role, the job scheduler; started in serving processes only.

Serving processes are told apart by doing what only they do: serving a request. Django loads
every app (and calls `AppConfig.ready`) in ``manage.py check``, ``migrate``, ``shell`` and in
the runserver reloader's parent too, and a WSGI server that loads the app before forking its
workers would hand them a broker whose threads did not survive the fork. So nothing starts when
Django loads; the first ``request_started`` signal starts everything (or an explicit `start()`,
for a process that serves no request but writes caches or runs jobs).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

import attrs
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_started
from django.utils.module_loading import import_string

from cache import Health, HealthStatus
from cache._redact import redact_text

from ... import EventBroker, EventBrokerOptions, EventRegistry, InMemoryHub, InMemoryTransport

logger = logging.getLogger("eventbroker.contrib.django")

SETTING = "EVENTBROKER"
_KNOWN = ("TRANSPORT", "OPTIONS", "SERVICEBUS", "AUTOSTART", "RUN_JOBS", "SCHEDULER")
_TRANSPORTS = ("memory", "servicebus")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_SECRET_CONTEXT = b"eventbroker.contrib.django broker secret"
_HUB_ONLY = (
    "no transport chosen and no Service Bus configured, so the event broker runs on the "
    "in-process hub: other processes and instances are not told of this one's cache changes; "
    "set EVENTBROKER_SERVICEBUS_CONNECTION_STRING (or _FULLY_QUALIFIED_NAMESPACE), or "
    "EVENTBROKER['TRANSPORT'] = 'memory' if this is the only process"
)


JOBS_RUN_SCHEDULER = "JOBS_RUN_SCHEDULER"
"""The jobs role's environment variable (the same as the Starlette integration's)."""


def _flag(
    raw: Mapping[str, Any], name: str, variable: str, env: Mapping[str, str], default: bool
) -> bool:
    if name in raw:
        value = raw[name]
        if not isinstance(value, bool):
            raise ImproperlyConfigured(f"{SETTING}[{name!r}] must be True or False, got {value!r}")
        return value
    if variable not in env:
        return default
    text = env[variable].strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{variable}={env[variable]!r} is not a boolean: use true/false, 1/0, yes/no or on/off"
    )


def _derived_secret() -> str:
    secret = getattr(settings, "SECRET_KEY", "")
    if not secret:
        raise ImproperlyConfigured(
            f"the event broker needs a secret: set EVENTBROKER_SECRET, {SETTING}['OPTIONS']"
            "['secret'], or SECRET_KEY (the default secret is derived from it)"
        )
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    return hmac.new(key, _SECRET_CONTEXT, hashlib.sha256).hexdigest()


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {}) or {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"{SETTING}[{name!r}] must be a dict of keyword arguments, got {type(value).__name__}"
        )
    return dict(value)


@attrs.frozen
class EventBrokerSettings:
    """The app's settings: the ``EVENTBROKER`` dict of Django's settings over the
    ``EVENTBROKER_*`` environment variables (a key of the dict wins over its variable)."""

    transport: str
    """``"servicebus"`` or ``"memory"`` (an in-process hub: one process only)."""
    options: EventBrokerOptions
    servicebus: dict[str, Any] = attrs.field(repr=False)
    """Keyword arguments of `ServiceBusOptions.from_env`."""
    autostart: bool = True
    """Start at the first request of a serving process."""
    run_jobs: bool = False
    """The jobs role: this instance runs the job scheduler."""
    scheduler: str | None = None
    """Dotted path of ``build(registry) -> JobScheduler``."""
    transport_defaulted: bool = False
    """No transport named and no Service Bus configured: the in-process hub by default."""

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> EventBrokerSettings:
        """Read and check the settings; `ImproperlyConfigured` names what is wrong."""
        env = os.environ if environ is None else environ
        raw = getattr(settings, SETTING, None) or {}
        if not isinstance(raw, Mapping):
            raise ImproperlyConfigured(
                f"settings.{SETTING} must be a dict, got {type(raw).__name__}"
            )
        unknown = sorted(set(raw) - set(_KNOWN))
        if unknown:
            raise ImproperlyConfigured(
                f"settings.{SETTING} has unknown keys {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(_KNOWN)} (see docs/django.md)"
            )
        options_kwargs = _section(raw, "OPTIONS")
        if "secret" not in options_kwargs and "EVENTBROKER_SECRET" not in env:
            options_kwargs["secret"] = _derived_secret()
        try:
            options = EventBrokerOptions.from_env(env, **options_kwargs)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"{SETTING}['OPTIONS'] or an EVENTBROKER_* variable: {exc}"
            ) from None
        servicebus = _section(raw, "SERVICEBUS")
        transport = raw.get("TRANSPORT") or env.get("EVENTBROKER_TRANSPORT", "").strip().lower()
        defaulted = not transport
        if not transport:
            given = {"connection_string", "fully_qualified_namespace"} & set(servicebus) or {
                "EVENTBROKER_SERVICEBUS_CONNECTION_STRING",
                "EVENTBROKER_SERVICEBUS_FULLY_QUALIFIED_NAMESPACE",
            } & set(env)
            transport = "servicebus" if given else "memory"
        if transport not in _TRANSPORTS:
            raise ImproperlyConfigured(
                f"{SETTING}['TRANSPORT'] (or EVENTBROKER_TRANSPORT) must be 'servicebus' or "
                f"'memory', got {transport!r}"
            )
        run_jobs = _flag(raw, "RUN_JOBS", JOBS_RUN_SCHEDULER, env, False)
        scheduler = raw.get("SCHEDULER") or env.get("EVENTBROKER_SCHEDULER") or None
        if run_jobs and not scheduler:
            raise ImproperlyConfigured(
                f"this instance has the jobs role ({SETTING}['RUN_JOBS'] or "
                f"{JOBS_RUN_SCHEDULER}) but no scheduler: set "
                f"{SETTING}['SCHEDULER'] to the dotted path of a function build(registry) "
                "returning a jobs.JobScheduler"
            )
        return cls(
            transport=transport,
            options=options,
            servicebus=servicebus,
            autostart=_flag(raw, "AUTOSTART", "EVENTBROKER_AUTOSTART", env, True),
            run_jobs=run_jobs,
            scheduler=scheduler,
            transport_defaulted=defaulted and transport == "memory",
        )


class Runtime:
    """The broker, its registry and (jobs role) the scheduler this process runs."""

    def __init__(
        self,
        broker: EventBroker,
        registry: EventRegistry,
        scheduler: Any,
        settings: EventBrokerSettings | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.registry = registry
        self.scheduler = scheduler
        """A `jobs.JobScheduler` on an instance with the jobs role, else `None`."""

    def health(self) -> list[Health]:
        parts = [self.broker.health()]
        if self.settings is not None and self.settings.transport_defaulted:
            parts.append(Health.from_reasons("eventbroker settings", degraded=[_HUB_ONLY]))
        if self.scheduler is not None:
            parts.append(self.scheduler.health())
        return parts

    def _stop(self) -> None:
        """Scheduler, then the caches' backplane, then the broker (its subscription deleted)."""
        if self.scheduler is not None:
            try:
                self.scheduler.stop()
            except Exception:
                logger.exception("stopping the job scheduler failed")
        _detach_caches()
        self.broker.stop()


_lock = threading.RLock()
_runtime: Runtime | None = None
_failure: str | None = None
_exiting = False
_exit_hook_registered = False
_hub: InMemoryHub | None = None


def hub() -> InMemoryHub:
    """This process's hub for ``TRANSPORT = "memory"``."""
    global _hub
    with _lock:
        if _hub is None:
            _hub = InMemoryHub()
        return _hub


def _build(config: EventBrokerSettings) -> Runtime:
    if config.transport == "servicebus":
        try:
            from ...servicebus import ServiceBusOptions, ServiceBusTransport
        except ImportError as exc:
            raise ImproperlyConfigured(
                f'the Service Bus transport needs pip install "eventbroker-cache[servicebus]" ({exc})'
            ) from None
        transport: Any = ServiceBusTransport(ServiceBusOptions.from_env(**config.servicebus))
    else:
        transport = InMemoryTransport(hub())
    broker = EventBroker(transport, config.options)
    registry = EventRegistry(broker)
    scheduler = None
    if config.run_jobs:
        assert config.scheduler is not None
        build: Callable[[EventRegistry], Any] = import_string(config.scheduler)
        scheduler = build(registry)
    if config.transport_defaulted:
        logger.warning(_HUB_ONLY)
    return Runtime(broker, registry, scheduler, config)


def _attach_caches(runtime: Runtime) -> None:
    from cache.contrib.django import use_backplane
    from cache.eventbroker_backplane import EventBrokerBackplane

    use_backplane(lambda: EventBrokerBackplane(runtime.registry, runtime.broker))


def _detach_caches() -> None:
    from cache.contrib.django import use_backplane

    use_backplane(None)


def start() -> Runtime:
    """Start the broker (and the scheduler on a jobs instance) now, if not running; idempotent.

    Serving processes need not call it (the first request does); call it in a process that
    serves no request but writes caches or runs jobs (a Celery worker, a management command).
    Configuration errors raise `ImproperlyConfigured` (or the transport's configuration error).
    """
    global _runtime, _failure
    with _lock:
        if _exiting:
            raise RuntimeError("the process is exiting: the event broker is not started again")
        if _runtime is not None:
            return _runtime
        runtime = _build(EventBrokerSettings.load())
        runtime.broker.start()
        try:
            _attach_caches(runtime)
            if runtime.scheduler is not None:
                runtime.scheduler.start()
        except BaseException:
            runtime._stop()
            raise
        _runtime, _failure = runtime, None
        _register_exit_hook()
    logger.info(
        "event broker started (pid %d, %s transport%s)",
        os.getpid(),
        type(runtime.broker.transport).__name__,
        ", with the job scheduler" if runtime.scheduler is not None else "",
    )
    return runtime


def stop() -> None:
    """Stop what `start()` started, in order (scheduler, caches' backplane, broker); idempotent.
    Runs by itself at exit and on SIGTERM."""
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime._stop()
        logger.info("event broker stopped (pid %d)", os.getpid())


def get_runtime() -> Runtime | None:
    """What runs in this process, or `None` before the start (and after the stop)."""
    return _runtime


def health() -> Health:
    """The broker's, the scheduler's and every Django cache's health (those that have one),
    combined: the worst status, every reason prefixed by its component."""
    return Health.combine(*health_parts())


def health_parts() -> list[Health]:
    """The health of each component: broker, scheduler (jobs role), each Django cache."""
    parts: list[Health] = []
    runtime = _runtime
    if runtime is not None:
        parts += runtime.health()
    elif _failure is not None:
        parts.append(
            Health.from_reasons(
                "eventbroker",
                down=[f"the event broker failed to start ({_failure}): fix the settings, restart"],
            )
        )
    elif not _exiting and _autostart():
        parts.append(
            Health.from_reasons(
                "eventbroker",
                down=[
                    "the event broker is not started (it starts at the first request, or "
                    "with eventbroker.contrib.django.start())"
                ],
            )
        )
    return parts + _cache_health()


def _cache_health() -> list[Health]:
    from django.core.cache import caches

    parts = []
    for alias in getattr(settings, "CACHES", {}):
        check = getattr(caches[alias], "health", None)
        if callable(check):
            part = check()
            if isinstance(part, Health):
                parts.append(Health(part.status, part.reasons, f"cache {alias!r}"))
    return parts


def _autostart() -> bool:
    raw = getattr(settings, SETTING, None) or {}
    try:
        if not isinstance(raw, Mapping):
            return True
        return _flag(raw, "AUTOSTART", "EVENTBROKER_AUTOSTART", os.environ, True)
    except ImproperlyConfigured:
        return True  # start() reports it


def _on_request_started(sender: object, **kwargs: object) -> None:
    """The first request of a serving process starts the runtime (errors logged, once)."""
    global _failure
    if _runtime is not None or _failure is not None or _exiting or not _autostart():
        return
    try:
        start()
    except Exception as exc:
        with _lock:
            if _failure is None:
                _failure = redact_text(f"{type(exc).__name__}: {exc}")
                logger.error(
                    "the event broker could not start; this instance serves without it (other "
                    "instances are not told of its cache changes): %s",
                    _failure,
                )


def _at_exit() -> None:
    global _exiting
    _exiting = True
    stop()


def _register_exit_hook() -> None:
    """Stop before the broker's own exit hook and before executors refuse work (threading's
    exit hooks run last registered first, before concurrent.futures shuts down)."""
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    _exit_hook_registered = True
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_at_exit)
    else:  # pragma: no cover - every supported CPython has it
        import atexit

        atexit.register(_at_exit)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Stop cleanly (deleting the subscription), then die of SIGTERM as before."""
    try:
        _at_exit()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def install() -> None:
    """Called by `AppConfig.ready`: start at the first request; stop cleanly on SIGTERM when
    nothing else handles it (gunicorn and uvicorn exit cleanly by themselves); let the runserver
    reloader's serving child stop cleanly."""
    request_started.connect(_on_request_started, dispatch_uid="eventbroker.contrib.django.start")
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _on_sigterm)
    _let_the_reloader_child_stop()


CHILD_STOP_WAIT = 30.0
"""How long the runserver reloader's parent waits for its child to stop before killing it."""


def _let_the_reloader_child_stop() -> None:
    """Django's runserver reloader parent SIGKILLs its serving child when Ctrl+C or SIGTERM
    reaches the parent (`subprocess.run` kills on any exception), so the child never deletes
    its subscription: the stale subscriptions of issue 9. In the parent (never in the child, in
    which RUN_MAIN is "true"), run the child so that it may stop: on Ctrl+C (which the child
    got too) wait for it; on SIGTERM pass it on and wait; a second Ctrl+C kills it."""
    from django.utils import autoreload

    variable = getattr(autoreload, "DJANGO_AUTORELOAD_ENV", None)
    child_arguments = getattr(autoreload, "get_child_arguments", None)
    if variable is None or child_arguments is None or os.environ.get(variable) == "true":
        return
    if getattr(autoreload.restart_with_reloader, "_eventbroker", False):
        return

    def restart_with_reloader() -> int:
        environ = {**os.environ, variable: "true"}
        arguments = child_arguments()
        while True:
            child = subprocess.Popen(arguments, env=environ, close_fds=False)
            try:
                code = child.wait()
            except BaseException as exc:
                _stop_child(child, forward=not isinstance(exc, KeyboardInterrupt))
                raise
            if code != 3:  # 3: reload after a code change
                return code

    restart_with_reloader._eventbroker = True  # type: ignore[attr-defined]
    autoreload.restart_with_reloader = restart_with_reloader


def _stop_child(child: subprocess.Popen[bytes], *, forward: bool) -> None:
    try:
        if forward and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # Django's child exits cleanly on SIGTERM
        child.wait(CHILD_STOP_WAIT)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        child.kill()
        child.wait()


def status_code(health: Health) -> int:
    """200 for OK and DEGRADED (serving), 503 for DOWN."""
    return 503 if health.status is HealthStatus.DOWN else 200
