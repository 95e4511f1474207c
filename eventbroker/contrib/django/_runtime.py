"""What the app runs in one process: the broker (from settings), the caches' backplane and, on
an instance with the jobs role, the job scheduler; started in serving processes only.

Serving processes are told apart by doing what only they do: serving a request. Django loads
every app (and calls `AppConfig.ready`) in ``manage.py check``, ``migrate``, ``shell`` and in
the runserver reloader's parent too, and a WSGI server that loads the app before forking its
workers would hand them a broker whose threads did not survive the fork. So nothing starts when
Django loads; the first ``request_started`` signal starts everything (or an explicit `start()`,
for a process that serves no request but writes caches or runs jobs).

What runs is an `AppServices` (the Starlette integration's too): built from the settings
(`EventBrokerSettings`), started in order and stopped in reverse, one health report. This
module adds what is Django's: when to start, stopping at exit and on SIGTERM, and the health of
the caches Django's cache framework builds.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_started
from django.utils.module_loading import import_string

from cache import Health
from cache._redact import redact_text

from ... import InMemoryHub, InMemoryTransport
from .._services import AppServices, AppServicesArgs, servicebus_transport
from . import _reloader
from ._settings import DjangoSettings, EventBrokerSettings

logger = logging.getLogger("eventbroker.contrib.django")

_HUB_ONLY = (
    "no transport chosen and no Service Bus configured, so the event broker runs on the "
    "in-process hub: other processes and instances are not told of this one's cache changes; "
    "set EVENTBROKER_SERVICEBUS_CONNECTION_STRING (or _FULLY_QUALIFIED_NAMESPACE), or "
    "EVENTBROKER['TRANSPORT'] = 'memory' if this is the only process"
)

Runtime = AppServices
"""What `start()` and `get_runtime()` return: the `AppServices` of this process."""

_lock = threading.RLock()
_running: tuple[AppServices, EventBrokerSettings] | None = None
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


def _build(config: EventBrokerSettings) -> AppServices:
    """The services of `config`; Django's cache framework builds its caches itself, lazily, so
    they get their backplane through `use_backplane` once the broker runs."""
    from cache.contrib.django import shared_caches, use_backplane

    if config.transport == "servicebus":
        transport = servicebus_transport(**config.servicebus)
    else:
        transport = InMemoryTransport(hub())
    args: AppServicesArgs = {
        "transport": transport,
        "broker_options": config.options,
        "caches": (),
        "run_jobs": config.run_jobs,
        "attach_backplane": use_backplane,
    }
    if config.run_jobs:
        assert config.scheduler is not None
        args["scheduler"] = import_string(config.scheduler)  # build(registry) -> JobScheduler
    if config.transport_defaulted:
        logger.warning(_HUB_ONLY)
    services = AppServices.build(**args)
    services.more_caches = shared_caches  # for the heartbeat summary and the farm page
    return services


def start() -> AppServices:
    """Start the broker (and the scheduler on a jobs instance) now, if not running; idempotent.

    Serving processes need not call it (the first request does); call it in a process that
    serves no request but writes caches or runs jobs (a Celery worker, a management command).
    Configuration errors raise `ImproperlyConfigured` (or the transport's configuration error).
    """
    global _running, _failure
    with _lock:
        if _exiting:
            raise RuntimeError("the process is exiting: the event broker is not started again")
        if _running is not None:
            return _running[0]
        config = EventBrokerSettings.load()
        services = _build(config)
        services.start()  # broker, caches' backplane, scheduler; stops what started on failure
        _running, _failure = (services, config), None
        _register_exit_hook()
    return services


def stop() -> None:
    """Stop what `start()` started, in order (scheduler, caches' backplane, broker); idempotent.
    Runs by itself at exit and on SIGTERM."""
    global _running
    with _lock:
        running, _running = _running, None
    if running is not None:
        running[0].stop()


def get_runtime() -> AppServices | None:
    """What runs in this process (`.broker`, `.registry`, `.scheduler`), or `None` before the
    start (and after the stop)."""
    running = _running
    return None if running is None else running[0]


def health() -> Health:
    """The broker's, the scheduler's and every Django cache's health (those that have one),
    combined: the worst status, every reason prefixed by its component."""
    return Health.combine(*health_parts())


def health_parts() -> list[Health]:
    """The health of each component: broker, scheduler (jobs role), each Django cache."""
    parts: list[Health] = []
    running = _running
    if running is not None:
        services, config = running
        parts += services.health_parts()
        if config.transport_defaulted:
            parts.append(Health.from_reasons("eventbroker settings", degraded=[_HUB_ONLY]))
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
    try:
        return DjangoSettings.from_settings().autostart
    except ImproperlyConfigured:
        return True  # start() reports it


def _on_request_started(sender: object, **kwargs: object) -> None:
    """The first request of a serving process starts the services (errors logged, once)."""
    global _failure
    if _running is not None or _failure is not None or _exiting or not _autostart():
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
    _reloader.install()
