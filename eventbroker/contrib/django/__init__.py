"""The Django app: runs the event broker, the caches' backplane and (jobs role) the job
scheduler in serving processes, stops them at exit, and offers a health view.

```python
INSTALLED_APPS = [..., "eventbroker.contrib.django"]
EVENTBROKER = {"OPTIONS": {"application_name": "shop"}, "SERVICEBUS": {"topic": "shop-events"}}
urlpatterns = [path("health/", include("eventbroker.contrib.django.urls"))]
```

Nothing starts when Django loads (``check``, ``migrate``, ``shell``, the runserver reloader's
parent): the first request of a serving process starts the broker; `start()` starts it in a
process that serves no request. Needs the ``django`` extra. See docs/django.md.
"""

from ._runtime import Runtime, get_runtime, health, health_parts, hub, start, stop
from ._settings import DjangoSettings, EventBrokerSettings

__all__ = [
    "DjangoSettings",
    "EventBrokerSettings",
    "Runtime",
    "get_runtime",
    "health",
    "health_parts",
    "hub",
    "start",
    "stop",
]
