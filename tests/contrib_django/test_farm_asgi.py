"""The farm view in front of Django's ASGI handler, composed as docs/farm.md shows: the farm
view answers under /_eventbroker (token required, this process's broker and Django caches on
the page), Django answers the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from django.core.asgi import get_asgi_application
from django.core.cache import caches
from django.test import override_settings
from starlette.applications import Starlette
from starlette.routing import Mount

import cache.contrib.django as backend_module
import eventbroker.contrib.django as app
from eventbroker.contrib.django import _runtime
from eventbroker.contrib.django.farm import FarmSettings, farm_app

TOKEN = "django-farm-token-0123456789"


@pytest.fixture(autouse=True)
def fresh_runtime() -> Iterator[None]:
    app.stop()
    _runtime._failure = None
    yield
    app.stop()
    _runtime._failure = None
    backend_module.close_caches()


async def _get(application: Starlette, path: str, token: str | None = None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path, headers=headers)


@override_settings(EVENTBROKER={"TRANSPORT": "memory", "AUTOSTART": True})
def test_the_farm_view_is_reachable_through_django_s_asgi_handler() -> None:
    application = Starlette(
        routes=[
            Mount("/_eventbroker", farm_app(settings=FarmSettings(token=TOKEN))),
            Mount("/", get_asgi_application()),
        ]
    )
    caches["default"].set("farm", 1)  # the Django cache exists before the page is asked
    refused = asyncio.run(_get(application, "/_eventbroker/"))
    assert refused.status_code == 401 and refused.content == b""
    shown = asyncio.run(_get(application, "/_eventbroker/", TOKEN))
    assert shown.status_code == 200
    runtime = app.get_runtime()
    assert runtime is not None  # the page's first request started the broker
    assert f'data-instance="{runtime.broker.instance_id}"' in shown.text
    assert "<td>default</td>" in shown.text  # the Django cache, through more_caches
    health = asyncio.run(_get(application, "/health/"))
    assert health.status_code == 200 and health.json()["status"] in ("ok", "degraded")
