"""An administration client that talks plain HTTP to the loopback broker's admin endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import urlsplit

from azure.core.pipeline.transport import AsyncioRequestsTransport

from ..servicebus._admin import EndpointTransport, redirect_url

if TYPE_CHECKING:
    from azure.servicebus.aio.management import (
        ServiceBusAdministrationClient as AsyncServiceBusAdministrationClient,
    )
    from azure.servicebus.management import ServiceBusAdministrationClient

__all__ = ["administration_client"]


class _AsyncRedirectingTransport(AsyncioRequestsTransport):  # type: ignore[misc]
    """`EndpointTransport` for the ``aio`` administration client."""

    def __init__(self, endpoint: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._base = urlsplit(endpoint.rstrip("/"))

    async def send(self, request: Any, **kwargs: Any) -> Any:
        request.url = redirect_url(request.url, self._base)
        return await super().send(request, **kwargs)


@overload
def administration_client(
    connection_string: str, admin_endpoint: str, *, async_: Literal[False] = False, **kwargs: Any
) -> ServiceBusAdministrationClient: ...


@overload
def administration_client(
    connection_string: str, admin_endpoint: str, *, async_: Literal[True], **kwargs: Any
) -> AsyncServiceBusAdministrationClient: ...


def administration_client(
    connection_string: str, admin_endpoint: str, *, async_: bool = False, **kwargs: Any
) -> ServiceBusAdministrationClient | AsyncServiceBusAdministrationClient:
    """A ``ServiceBusAdministrationClient`` (the ``aio`` one with ``async_=True``, which the SDK
    only supports with ``aiohttp`` installed) whose
    requests go to ``admin_endpoint`` (for example ``LoopbackServiceBus.admin_endpoint``,
    ``http://127.0.0.1:PORT``) instead of the ``https://`` URL the SDK always builds.

    Only the transport differs from production: the SDK's own pipeline, serialization and
    error mapping run unchanged. Extra ``kwargs`` go to ``from_connection_string``.
    """
    if not urlsplit(admin_endpoint).scheme or not urlsplit(admin_endpoint).netloc:
        raise ValueError(
            f"admin_endpoint must be an absolute URL such as http://127.0.0.1:8080, got {admin_endpoint!r}"
        )
    if async_:
        try:
            from azure.servicebus.aio.management import (
                ServiceBusAdministrationClient as AsyncClient,
            )
        except ImportError as exc:  # the SDK's aio admin module imports aiohttp eagerly
            raise ImportError(
                "azure.servicebus.aio.management needs the aiohttp package; install it, or use "
                "the sync client (async_=False) through asyncio.to_thread"
            ) from exc

        return AsyncClient.from_connection_string(
            connection_string, transport=_AsyncRedirectingTransport(admin_endpoint), **kwargs
        )
    from azure.servicebus.management import ServiceBusAdministrationClient as Client

    return Client.from_connection_string(
        connection_string, transport=EndpointTransport(admin_endpoint), **kwargs
    )
