"""Run one azure-servicebus SDK sample, unchanged, against the loopback Service Bus broker.

Usage: ``python -m tests.servicebus_sample_runner SAMPLE.py`` with the variables the samples
read (``SERVICEBUS_FULLY_QUALIFIED_NAMESPACE=127.0.0.1:PORT``, ``SERVICEBUS_QUEUE_NAME``, ...)
and ``LOOPBACK_ADMIN_ENDPOINT`` (the broker's ``admin_endpoint``) in the environment.

The sample's code runs as ``__main__`` (``runpy``) exactly as shipped. Around it, and only for
what a machine without Azure needs, this runner changes three SDK defaults, as the issue
allows:

- the credential: ``azure.identity.DefaultAzureCredential`` (sync and ``aio``) becomes a
  credential handing out a static token (the broker accepts any non-SAS token, as it cannot
  check Entra ID tokens); SAS keys and connection strings are the broker's real ones;
- TLS: ``ServiceBusClient(namespace, credential)`` defaults to ``use_tls=False`` (the loopback
  broker speaks plain AMQP; connection strings say ``UseDevelopmentEmulator=true`` already);
- the administration client: ``ServiceBusAdministrationClient`` (sync and ``aio``) defaults to
  a transport sending its ``https://`` requests to the broker's plain-HTTP admin endpoint, as
  ``eventbroker.testing.administration_client()`` does.

A keyword the sample passes itself always wins over these defaults.
"""

from __future__ import annotations

import functools
import os
import runpy
import sys
import time
from typing import Any

STATIC_TOKEN = "loopback-static-token"


def _static_token() -> Any:
    from azure.core.credentials import AccessToken

    return AccessToken(STATIC_TOKEN, int(time.time()) + 3600)


class StaticTokenCredential:
    """Stands in for ``DefaultAzureCredential``: the same token every time."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def get_token(self, *_scopes: str, **_kwargs: Any) -> Any:
        return _static_token()

    def close(self) -> None:
        pass

    def __enter__(self) -> StaticTokenCredential:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass


class AsyncStaticTokenCredential:
    """Stands in for ``azure.identity.aio.DefaultAzureCredential``."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    async def get_token(self, *_scopes: str, **_kwargs: Any) -> Any:
        return _static_token()

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> AsyncStaticTokenCredential:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        pass


def _with_defaults(cls: type, make_defaults: Any) -> None:
    """Wrap ``cls.__init__`` so that keywords the caller leaves out get ``make_defaults()``."""
    original = cls.__init__  # type: ignore[misc]

    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        for key, value in make_defaults().items():
            kwargs.setdefault(key, value)
        original(self, *args, **kwargs)

    cls.__init__ = init  # type: ignore[misc]


def install(admin_endpoint: str) -> None:
    """Apply the three defaults described in the module docstring."""
    import azure.identity
    import azure.identity.aio
    from azure.servicebus import ServiceBusClient
    from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
    from azure.servicebus.management import ServiceBusAdministrationClient

    from eventbroker.servicebus._admin import EndpointTransport

    azure.identity.DefaultAzureCredential = StaticTokenCredential  # type: ignore[misc,assignment]
    azure.identity.aio.DefaultAzureCredential = AsyncStaticTokenCredential  # type: ignore[misc,assignment]
    for client in (ServiceBusClient, AsyncServiceBusClient):
        _with_defaults(client, lambda: {"use_tls": False})
    _with_defaults(
        ServiceBusAdministrationClient, lambda: {"transport": EndpointTransport(admin_endpoint)}
    )
    try:  # the SDK's aio administration module imports aiohttp
        from azure.servicebus.aio.management import (
            ServiceBusAdministrationClient as AsyncAdministrationClient,
        )
    except ImportError:
        return
    from eventbroker.testing._servicebus_admin_client import _AsyncRedirectingTransport

    _with_defaults(
        AsyncAdministrationClient,
        lambda: {"transport": _AsyncRedirectingTransport(admin_endpoint)},
    )


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m tests.servicebus_sample_runner SAMPLE.py")
    path = os.path.abspath(argv[0])
    install(os.environ["LOOPBACK_ADMIN_ENDPOINT"])
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(path))
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
