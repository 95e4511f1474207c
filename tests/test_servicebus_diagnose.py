"""How the Service Bus transport tells configuration errors from outages, words them without
secrets, and limits repeated log lines."""

from __future__ import annotations

import logging

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)
from azure.servicebus.exceptions import (
    ServiceBusAuthenticationError,
    ServiceBusConnectionError,
)
from hypothesis import given
from hypothesis import strategies as st

from eventbroker._diagnostics import LogLimiter
from eventbroker.servicebus import ServiceBusOptions, ServiceBusStartError
from eventbroker.servicebus._diagnose import describe, is_configuration_error, redact

KEY = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5Cg=="
AZURE = ServiceBusOptions(
    connection_string=f"Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey={KEY}"
)
LOOPBACK = ServiceBusOptions(
    connection_string="Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=loopback;"
    "SharedAccessKey=loopback;UseDevelopmentEmulator=true"
)


def _status(code: int) -> HttpResponseError:
    error = HttpResponseError(f"Operation returned an invalid status {code}")
    error.status_code = code
    return error


def _tls_eof() -> ServiceRequestError:
    return ServiceRequestError(
        "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol",
        error=requests.exceptions.SSLError("UNEXPECTED_EOF_WHILE_READING"),
    )


@pytest.mark.parametrize(
    ("error", "options", "configuration"),
    [
        (ClientAuthenticationError("401 Unauthorized"), AZURE, True),
        (_status(403), AZURE, True),
        (_status(400), AZURE, True),
        (_status(503), AZURE, False),
        (ServiceBusAuthenticationError(message="amqp:client-error"), AZURE, True),
        (ServiceBusStartError("topic 'x' does not exist"), AZURE, True),
        (ServiceRequestError("Connection refused"), AZURE, False),
        (ServiceBusConnectionError(message="socket error"), AZURE, False),
        (TimeoutError(), AZURE, False),
        (_tls_eof(), LOOPBACK, True),  # a loopback broker without administration_endpoint
        (_tls_eof(), AZURE, False),  # a TLS hiccup on the way to Azure: retry
    ],
)
def test_configuration_errors_are_told_from_outages(
    error: Exception, options: ServiceBusOptions, configuration: bool
) -> None:
    assert is_configuration_error(error, options) is configuration


def test_descriptions_name_the_fix() -> None:
    assert "ADMINISTRATION_ENDPOINT" in describe(_tls_eof(), LOOPBACK)
    refused = describe(ClientAuthenticationError("InvalidSignature"), AZURE)
    assert "SharedAccessKey" in refused and "EVENTBROKER_SERVICEBUS_CONNECTION_STRING" in refused
    assert "Manage" in describe(_status(403), AZURE)
    assert describe(TimeoutError(), AZURE) == "TimeoutError: no answer in time"


def test_descriptions_never_carry_the_key_or_a_signature() -> None:
    token = "SharedAccessSignature sr=sb%3A%2F%2Fshop&sig=c2lnbmF0dXJl%3D&se=1700000000&skn=app"
    text = describe(ServiceBusConnectionError(message=f"{token} failed; key {KEY}"), AZURE)
    assert KEY not in text and "c2lnbmF0dXJl" not in text
    assert "ServiceBusConnectionError" in text


@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    key=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=16),
)
def test_redact_removes_any_key_wherever_it_appears(before: str, after: str, key: str) -> None:
    options = ServiceBusOptions(
        connection_string=f"Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey={key}"
    )
    assert key not in redact(before + key + after, options)
    assert key not in redact(f"{before};SharedAccessKey={key};{after}", options)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_log_limiter_logs_a_cause_once_a_minute_with_the_count_and_one_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    limiter = LogLimiter(logging.getLogger("limited"), clock)
    caplog.set_level(logging.INFO, "limited")
    error = RuntimeError("bug")
    for _ in range(3):
        limiter.log(logging.ERROR, "bug", "handler failed: %s", "x", exc_info=error)
    limiter.log(logging.WARNING, "other", "another cause")
    clock.now = 61.0
    limiter.log(logging.ERROR, "bug", "handler failed: %s", "x", exc_info=error)
    records = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert records == [
        (logging.ERROR, "handler failed: x", True),
        (logging.WARNING, "another cause", False),
        (logging.ERROR, "handler failed: x (2 more of this cause in the last minute)", False),
    ]
