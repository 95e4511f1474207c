"""Views the server tests call: read and write the default cache."""

from __future__ import annotations

import json
import os

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse


def read(request: HttpRequest, key: str) -> HttpResponse:
    missing = object()
    value = cache.get(key, missing)
    body = {"pid": os.getpid(), "found": value is not missing}
    if value is not missing:
        body["value"] = value
    return JsonResponse(body)


def write(request: HttpRequest, key: str) -> HttpResponse:
    cache.set(key, json.loads(request.body), timeout=None)
    return JsonResponse({"pid": os.getpid()})
