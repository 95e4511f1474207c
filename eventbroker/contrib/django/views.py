"""The health view: ``path("health/", eventbroker.contrib.django.views.health)``."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.utils.cache import add_never_cache_headers

from .._services import http_status, report_of
from . import _runtime


def health(request: HttpRequest) -> Any:
    """JSON: ``{"status": "ok"|"degraded"|"down", "reasons": [...], "components": [...]}``;
    200 when OK or DEGRADED (the instance serves), 503 when DOWN; URLs and secrets redacted.
    Reads state only: cheap enough for a load balancer's probe."""
    report = report_of(_runtime.health_parts())
    response = JsonResponse(report, status=http_status(report))
    add_never_cache_headers(response)
    return response
