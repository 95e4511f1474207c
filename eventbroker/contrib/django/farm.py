"""The farm view for a Django site, served in front of Django's ASGI handler (``asgi.py``):

```python
from django.core.asgi import get_asgi_application

django_app = get_asgi_application()                  # first: sets Django up

from starlette.applications import Starlette
from starlette.routing import Mount
from eventbroker.contrib.django.farm import farm_app

application = Starlette(routes=[Mount("/_eventbroker", farm_app()), Mount("/", django_app)])
```

Needs the ``django`` and ``starlette`` extras. The page shows this process's broker, the
caches of ``CACHES`` that are `HybridCacheBackend` and, on the jobs role, the scheduler; its
first request starts the broker like Django's first request does (unless ``AUTOSTART`` is off).
Settings: ``EVENTBROKER_FARM_*`` (`FarmSettings`), or ``farm_app(settings=FarmSettings(...))``.
"""

from __future__ import annotations

from typing import Any

from .._services import AppServices
from ..farm import FarmSettings
from ..farm import farm_app as _farm_app
from . import _runtime

__all__ = ["FarmSettings", "farm_app"]


def _services() -> AppServices | None:
    if _runtime.get_runtime() is None:
        _runtime._on_request_started(None)  # starts it as a request would (errors logged once)
    return _runtime.get_runtime()


def farm_app(**kwargs: Any) -> Any:
    """`eventbroker.contrib.farm.farm_app` over this process's services (same keywords)."""
    return _farm_app(_services, **kwargs)
