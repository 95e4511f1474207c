"""What went wrong talking to Service Bus: a configuration error (fail at start) or an outage
(keep retrying), said in one line a person can act on, with every secret removed."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.servicebus.exceptions import (
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
)

from ._errors import ServiceBusConfigurationError, ServiceBusStartError
from ._options import ENV_PREFIX, ServiceBusOptions

_SECRET_PATTERNS = (
    (re.compile(r"(SharedAccessKey\s*=\s*)[^;\s'\"]+", re.IGNORECASE), r"\1<hidden>"),
    (re.compile(r"(SharedAccessSignature\s*=\s*)[^;\s'\"]+", re.IGNORECASE), r"\1<hidden>"),
    (re.compile(r"(SharedAccessSignature\s+)\S+", re.IGNORECASE), r"\1<hidden>"),
    (re.compile(r"((?:^|[?&\s])sig=)[^&;\s'\"]+"), r"\1<hidden>"),
)
_SECRET_NAMES = ("sharedaccesskey", "sharedaccesssignature")
_MIN_SECRET = 16
_DETAIL = re.compile(r"<Detail>(.*?)</Detail>", re.DOTALL)
_MAX_TEXT = 300


def redact(text: str, options: ServiceBusOptions) -> str:
    """`text` without the connection string's key or signature, nor any SAS token."""
    for secret in _secrets(options):
        text = text.replace(secret, "<hidden>")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _secrets(options: ServiceBusOptions) -> list[str]:
    """The connection string's key or signature, when long enough to be told from words
    (real keys are 44 characters; ``SharedAccessKey=`` contexts are redacted anyway)."""
    if options.connection_string is None:
        return []
    found = []
    for part in options.connection_string.split(";"):
        name, _, value = part.partition("=")
        value = value.strip()
        if name.strip().lower() in _SECRET_NAMES and len(value) >= _MIN_SECRET:
            found.append(value)
    return found


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, the exceptions it wraps (azure-core's ``inner_exception``) and its causes."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 10:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        inner = getattr(item, "inner_exception", None)
        todo += [item.__cause__, item.__context__]
        if isinstance(inner, BaseException):
            todo.append(inner)
    return seen


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        return status if isinstance(status, int) else None
    return None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _admin_host(options: ServiceBusOptions) -> str:
    info = options.connection_info
    host = info.host if info is not None else (options.fully_qualified_namespace or "")
    return urlsplit(f"//{host}").hostname or host


def _tls_to_loopback(exc: BaseException, options: ServiceBusOptions) -> bool:
    """The SDK spoke TLS to a loopback admin host: a loopback broker without its endpoint."""
    if options.administration_endpoint is not None or not _is_loopback(_admin_host(options)):
        return False
    return any("SSL" in type(e).__name__ or "[SSL" in str(e) for e in _chain(exc))


def is_configuration_error(exc: BaseException, options: ServiceBusOptions) -> bool:
    """True for what retrying cannot fix: bad settings, refused credentials, a missing topic."""
    if isinstance(exc, ServiceBusConfigurationError | ServiceBusStartError):
        return True
    if isinstance(
        exc,
        ClientAuthenticationError | ServiceBusAuthenticationError | ServiceBusAuthorizationError,
    ):
        return True
    if _status(exc) in (400, 401, 403):
        return True
    return _tls_to_loopback(exc, options)


def describe(exc: BaseException, options: ServiceBusOptions) -> str:
    """One line: the error's type and message, a hint at the fix when known, no secret."""
    if isinstance(exc, ServiceBusConfigurationError | ServiceBusStartError):
        return redact(str(exc), options)
    if isinstance(exc, TimeoutError) and not str(exc):
        text = "TimeoutError: no answer in time"
    else:
        message = str(exc)
        detail = _DETAIL.search(message)
        if detail:  # an ATOM error body: its Detail says it best
            message = f"{message.splitlines()[0]}: {detail.group(1)}"
        message = " ".join(message.split())
        if len(message) > _MAX_TEXT:
            message = message[:_MAX_TEXT] + "..."
        text = f"{type(exc).__name__}: {message}"
    return redact(text + _hint(exc, options), options)


def _hint(exc: BaseException, options: ServiceBusOptions) -> str:
    status = _status(exc)
    if _tls_to_loopback(exc, options):
        return (
            f" (the administration endpoint https://{_admin_host(options)} does not answer TLS: "
            "a loopback broker serves it over plain HTTP on another port; set "
            f"ServiceBusOptions.administration_endpoint ({ENV_PREFIX}ADMINISTRATION_ENDPOINT) "
            "to the URL it prints, such as http://127.0.0.1:PORT)"
        )
    if status == 403 or isinstance(exc, ServiceBusAuthorizationError):
        return (
            " (the key or identity lacks a right: the transport needs Manage to create its "
            "subscription, or the 'Azure Service Bus Data Owner' role)"
        )
    if status == 401 or isinstance(exc, ClientAuthenticationError | ServiceBusAuthenticationError):
        how = (
            f"check SharedAccessKeyName and SharedAccessKey in {ENV_PREFIX}CONNECTION_STRING"
            if options.connection_string is not None
            else "check the credential and its role assignment on the namespace"
        )
        return f" (Service Bus refused the credentials: {how})"
    return ""
