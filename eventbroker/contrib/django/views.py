"""The health view: ``path("health/", eventbroker.contrib.django.views.health)``."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.utils.cache import add_never_cache_headers

from cache import Health

from . import _runtime


def health(request: HttpRequest) -> Any:
    """JSON: ``{"status": "ok"|"degraded"|"down", "reasons": [...], "components": [...]}``;
    200 when OK or DEGRADED (the instance serves), 503 when DOWN. Reads state only: cheap
    enough for a load balancer's probe."""
    parts = _runtime.health_parts()
    combined = Health.combine(*parts)
    body = {
        "status": combined.status.value,
        "reasons": list(combined.reasons),
        "components": [part.to_dict() for part in parts],
    }
    response = JsonResponse(body, status=_runtime.status_code(combined))
    add_never_cache_headers(response)
    return response
