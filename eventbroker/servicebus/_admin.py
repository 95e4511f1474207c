"""Provisioning through `ServiceBusAdministrationClient`: topic, subscription, own-message rule.

The SDK's ``aio.management`` client imports aiohttp unconditionally, so the transport uses the
synchronous administration client (requests, a hard dependency of azure-core) on a worker
thread: provisioning happens at start, stop and reconnect only. An async credential is
bridged to it through the transport's loop. ``administration_endpoint`` redirects the client's
``https://<namespace>`` requests to another base URL, such as the loopback broker's plain HTTP.

Each call runs on its own daemon thread rather than the loop's default executor: a call that
hangs (an unreachable namespace) never delays process exit, and calls still work while the
interpreter shuts down (the default executor refuses new work once ``atexit`` begins).
Connection errors are not retried by the SDK (``retry_connect=0``): the transport's own
backoff retries, so an unreachable namespace is reported at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import SplitResult, urlsplit, urlunsplit

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import HttpRequest, HttpResponse, RequestsTransport
from azure.servicebus.management import ServiceBusAdministrationClient, SqlRuleFilter

from ._errors import ServiceBusStartError
from ._options import ServiceBusOptions

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential
    from azure.core.credentials_async import AsyncTokenCredential

_log = logging.getLogger(__name__)
OWN_MESSAGES_RULE = "exclude-own-messages"
DEFAULT_RULE = "$Default"
_TOKEN_TIMEOUT = 60.0
_CONNECT_TIMEOUT = 10.0
_READ_TIMEOUT = 30.0
_T = TypeVar("_T")


class EndpointTransport(RequestsTransport):  # type: ignore[misc]
    """An azure-core transport sending every request to ``base_url`` instead of its host."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._base = urlsplit(base_url.rstrip("/"))

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        request.url = redirect_url(request.url, self._base)
        response: HttpResponse = super().send(request, **kwargs)
        return response


def redirect_url(url: str, base: SplitResult) -> str:
    """``url`` (the SDK always builds ``https://<namespace>/...``) sent to ``base`` instead."""
    parts = urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, base.path + parts.path, parts.query, ""))


class LoopBridgedCredential:
    """A sync `TokenCredential` over an async one, for use from worker threads only."""

    def __init__(self, credential: AsyncTokenCredential, loop: asyncio.AbstractEventLoop) -> None:
        self._credential = credential
        self._loop = loop

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        future = asyncio.run_coroutine_threadsafe(
            self._credential.get_token(*scopes, **kwargs), self._loop
        )
        return future.result(_TOKEN_TIMEOUT)


def admin_client(
    options: ServiceBusOptions,
    credential: AsyncTokenCredential | TokenCredential | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> ServiceBusAdministrationClient:
    """An administration client for `options`; for the namespace path, an async ``credential``
    with the ``loop`` it runs on (the transport), or a sync one without a loop (the CLI)."""
    timeouts = {"connection_timeout": _CONNECT_TIMEOUT, "read_timeout": _READ_TIMEOUT}
    transport = (
        EndpointTransport(options.administration_endpoint, **timeouts)
        if options.administration_endpoint
        else RequestsTransport(**timeouts)
    )
    kwargs: dict[str, Any] = {
        "transport": transport,
        "retry_total": options.sdk_retry_total,
        "retry_connect": 0,
    }
    if options.connection_string is not None:
        return ServiceBusAdministrationClient.from_connection_string(
            options.connection_string, **kwargs
        )
    assert options.fully_qualified_namespace is not None
    assert credential is not None
    if loop is None:  # a sync credential
        sync = cast("TokenCredential", credential)
        return ServiceBusAdministrationClient(options.fully_qualified_namespace, sync, **kwargs)
    bridged = LoopBridgedCredential(cast("AsyncTokenCredential", credential), loop)
    return ServiceBusAdministrationClient(options.fully_qualified_namespace, bridged, **kwargs)


async def _run(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``call(*args, **kwargs)`` on a new daemon thread; cancelling abandons it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def work() -> None:
        try:
            result = call(*args, **kwargs)
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=work, name="servicebus-admin", daemon=True).start()
    return await future


class Provisioner:
    """Creates and deletes this instance's subscription (and the topic, if allowed)."""

    def __init__(
        self, client: ServiceBusAdministrationClient, options: ServiceBusOptions, subscription: str
    ) -> None:
        self._client = client
        self._options = options
        self.subscription = subscription

    async def ensure_topic(self) -> None:
        """Check the topic exists; create it when allowed, else raise `ServiceBusStartError`."""
        topic = self._options.topic
        try:
            await _run(self._client.get_topic, topic)
            return
        except ResourceNotFoundError:
            if not self._options.create_missing_topic:
                raise ServiceBusStartError(
                    f"Service Bus topic {topic!r} does not exist: create it, or set "
                    "ServiceBusOptions.create_missing_topic=True"
                ) from None
        try:
            await _run(self._client.create_topic, topic)
            _log.info("created Service Bus topic %r", topic)
        except ResourceExistsError:
            pass  # another instance won the race

    async def ensure_subscription(self, instance_id: str) -> bool:
        """Create the subscription unless it exists; True when it was created now."""
        topic, name = self._options.topic, self.subscription
        try:
            await _run(
                self._client.create_subscription,
                topic,
                name,
                auto_delete_on_idle=datetime.timedelta(seconds=self._options.auto_delete_on_idle),
            )
        except ResourceExistsError:
            _log.debug("reusing Service Bus subscription %r on topic %r", name, topic)
            return False
        _log.debug("created Service Bus subscription %r on topic %r", name, topic)
        if self._options.filter_own_messages:
            await self._filter_own_messages(instance_id)
        return True

    async def _filter_own_messages(self, instance_id: str) -> None:
        topic, name = self._options.topic, self.subscription
        rule = SqlRuleFilter(
            "sys.Label IS NULL OR sys.Label <> @own", parameters={"@own": instance_id}
        )
        with contextlib.suppress(ResourceExistsError):
            await _run(self._client.create_rule, topic, name, OWN_MESSAGES_RULE, filter=rule)
        with contextlib.suppress(ResourceNotFoundError):
            await _run(self._client.delete_rule, topic, name, DEFAULT_RULE)

    def close(self) -> None:
        """Close the administration client's HTTP session."""
        self._client.close()

    async def subscription_exists(self) -> bool:
        """Whether the subscription still exists (it vanishes when auto-deleted)."""
        try:
            await _run(self._client.get_subscription, self._options.topic, self.subscription)
        except ResourceNotFoundError:
            return False
        return True

    async def delete_subscription(self) -> None:
        """Delete the subscription; a missing one is fine."""
        try:
            await _run(self._client.delete_subscription, self._options.topic, self.subscription)
            _log.debug("deleted Service Bus subscription %r", self.subscription)
        except ResourceNotFoundError:
            pass
