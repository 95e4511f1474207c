"""The Django app configuration of ``eventbroker.contrib.django``."""

from __future__ import annotations

from django.apps import AppConfig

from . import _runtime


class EventBrokerConfig(AppConfig):  # type: ignore[misc]
    """Starts nothing when Django loads (``check``, ``migrate``, ``shell`` and the runserver
    reloader's parent never serve a request): the broker starts at the first request of a
    serving process, or when `eventbroker.contrib.django.start()` is called."""

    name = "eventbroker.contrib.django"
    label = "eventbroker"
    verbose_name = "Event broker"
    default = True

    def ready(self) -> None:
        _runtime.install()
