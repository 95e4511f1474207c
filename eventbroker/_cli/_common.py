"""What every command shares: exit codes, output (people or JSON lines), redaction, settings,
the temporary broker a command runs, the administration client."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from cache._redact import redact_text

from .._broker import EventBroker
from .._envelope import MIN_SECRET_LENGTH
from .._memory_transport import InMemoryTransport
from .._options import EventBrokerOptions
from .._transport import ConnectionState
from ..contrib._services import transport_from_env

if TYPE_CHECKING:
    from azure.servicebus.management import ServiceBusAdministrationClient

    from ..servicebus import ServiceBusOptions, ServiceBusTransport

OK = 0
"""Done; every check passed."""
FAILED = 1
"""A check failed, or nothing was found (no instance heard, no event within --timeout)."""
USAGE = 2
"""Bad arguments or settings (including credentials Service Bus refuses)."""
UNREACHABLE = 3
"""Service Bus could not be reached (or did not take the message) in time."""
INTERRUPTED = 130
"""Stopped by Ctrl-C before finishing (`listen` exits 0 on Ctrl-C: it is its normal end)."""

SB = "EVENTBROKER_SERVICEBUS_"
_HIDDEN = "<hidden>"
_PLACEHOLDER_SECRET = "x" * MIN_SECRET_LENGTH


class CliError(Exception):
    """Ends the command with `message` on stderr and `code`."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- output ------------------------------------------------------------------------------------


def printable(text: str) -> str:
    """`text` safe for a terminal: control and format characters escaped (wire data is hostile)."""
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable()
        else (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        for ch in text
    )


def show_json(value: object) -> str:
    """`value` as compact JSON for people (non-ASCII kept, control characters escaped)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except ValueError:  # circular: never from the wire
        text = repr(value)
    return printable(text)


class Redactor:
    """Removes the configured secrets (broker secrets, the connection string and its key) and
    URL credentials from any text shown."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        found: set[str] = set()
        secret = environ.get("EVENTBROKER_SECRET", "")
        found.update(part.strip() for part in secret.split(","))
        found.add(secret.strip())
        connection = environ.get(f"{SB}CONNECTION_STRING", "")
        found.add(connection.strip())
        for part in connection.split(";"):
            name, _, value = part.partition("=")
            if name.strip().lower() in ("sharedaccesskey", "sharedaccesssignature"):
                found.add(value.strip())
        # longest first, so that a secret containing another is hidden whole
        self._secrets = sorted((s for s in found if len(s) >= 4), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _HIDDEN)
        return redact_text(text)

    def values(self, value: Any) -> Any:
        """`value` (JSON-ready) with every string in it redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {self(str(k)): self.values(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.values(v) for v in value]
        return value


class Output:
    """Writes results: a line for people, or one JSON object per line (``--json``)."""

    def __init__(self, json_lines: bool, redactor: Redactor, stream: IO[str] | None = None) -> None:
        self.json = json_lines
        self.redact = redactor
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self.closed = threading.Event()
        """Set when stdout went away (``| head``): streaming commands stop."""

    def emit(self, record: Mapping[str, Any], text: str) -> None:
        """Write `record` as JSON, or `text` for people (both redacted); never raises."""
        if self.json:
            line = json.dumps(self.redact.values(record), separators=(",", ":"), default=str)
        else:
            line = self.redact("\n".join(printable(part) for part in text.split("\n")))
        self._write(line + "\n")

    def text(self, text: str) -> None:
        """A line for people only (tables, totals); nothing in JSON mode."""
        if not self.json:
            self._write(self.redact(printable(text)) + "\n")

    def progress(self, text: str) -> None:
        """What the command is doing, for people, on stderr; nothing in JSON mode."""
        if not self.json:
            note(self.redact, text)

    def _write(self, line: str) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, ValueError):  # the reader went away, or stdout closed
                self.closed.set()
                with contextlib.suppress(OSError):  # no "Exception ignored" at exit
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def note(redactor: Redactor, message: str) -> None:
    """A message for people on stderr (errors, progress), redacted."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(redactor(printable(message)) + "\n")
        sys.stderr.flush()


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def configure_logging(verbosity: int, redactor: Redactor) -> None:
    """Library and SDK logs on stderr: none by default (the command reports what matters),
    warnings with ``-v``, info with ``-vv``, debug with ``-vvv``; always redacted."""
    level = {0: logging.CRITICAL + 1, 1: logging.WARNING, 2: logging.INFO}.get(
        verbosity, logging.DEBUG
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("azure", "uamqp", "pyamqp"):  # the SDK logs every link at INFO
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING if verbosity < 3 else level))


# -- time --------------------------------------------------------------------------------------


def utc(moment: float | None) -> str:
    """``2024-05-01 12:00:03Z``, or ``-``."""
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(moment))


def clock_time(moment: float) -> str:
    """``12:00:03.123`` (UTC), for stream lines."""
    return time.strftime("%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}"


def duration(seconds: float | None) -> str:
    """``850 ms``, ``12 s``, ``4 min``, ``3 h 5 min``, ``2 d 3 h``, or ``-``."""
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{sign}{seconds:.0f} s" if seconds >= 10 else f"{sign}{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{sign}{minutes:.0f} min"
    hours, minutes = divmod(int(minutes), 60)
    if hours < 48:
        return f"{sign}{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{sign}{days} d {hours} h"


def table(headers: list[str], rows: Iterable[list[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    rows = [headers, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


# -- settings ----------------------------------------------------------------------------------


def broker_options(environ: Mapping[str, str], **overrides: Any) -> EventBrokerOptions:
    """`EventBrokerOptions.from_env`, a `CliError` (exit 2) naming what is wrong."""
    try:
        return EventBrokerOptions.from_env(environ, **overrides)
    except (ValueError, TypeError) as exc:
        raise CliError(f"configuration: {exc}") from None


def application_name(environ: Mapping[str, str]) -> str:
    """The configured application name, without needing the secret."""
    return broker_options(environ, secret=_PLACEHOLDER_SECRET).application_name


def temporary_subscription_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings with this process's own subscription: a fresh name (never the app's fixed
    ``SUBSCRIPTION_NAME``), deleted at exit, auto-deleted after 5 idle minutes if it crashes;
    stopping takes at most 5 s unless ``STOP_TIMEOUT`` says otherwise."""
    env = dict(environ)
    env.pop(f"{SB}SUBSCRIPTION_NAME", None)
    env[f"{SB}DELETE_SUBSCRIPTION_ON_STOP"] = "true"
    env[f"{SB}AUTO_DELETE_ON_IDLE"] = "300"
    env.setdefault(f"{SB}STOP_TIMEOUT", "5")
    return env


def servicebus_transport(environ: Mapping[str, str]) -> ServiceBusTransport:
    """The library's transport choice (`transport_from_env`), which must be Service Bus here."""
    try:
        transport = transport_from_env(temporary_subscription_env(environ))
    except ModuleNotFoundError as exc:
        raise CliError(f"configuration: {exc}") from None
    except ValueError as exc:  # ServiceBusConfigurationError, ConnectionStringError
        raise CliError(f"configuration: {exc}") from None
    if isinstance(transport, InMemoryTransport):
        raise CliError(
            f"configuration: no Service Bus is configured: set {SB}CONNECTION_STRING (or "
            f"{SB}FULLY_QUALIFIED_NAMESPACE for a managed identity) and {SB}TOPIC, as for the app"
        )
    from ..servicebus import ServiceBusTransport

    assert isinstance(transport, ServiceBusTransport)
    return transport


def servicebus_options(environ: Mapping[str, str]) -> ServiceBusOptions:
    """The Service Bus settings, read as the app reads them."""
    return servicebus_transport(environ).options


def admin(options: ServiceBusOptions) -> ServiceBusAdministrationClient:
    """The transport's administration client; a managed identity uses azure-identity's
    `DefaultAzureCredential` (sync), as the app does."""
    from ..servicebus._admin import admin_client

    if options.connection_string is not None:
        return admin_client(options)
    from azure.identity import DefaultAzureCredential

    return admin_client(options, DefaultAzureCredential())


def error_code(exc: BaseException, options: ServiceBusOptions) -> int:
    """USAGE for what settings must fix (refused credentials, a missing right), else UNREACHABLE."""
    from ..servicebus._diagnose import is_configuration_error

    return USAGE if is_configuration_error(exc, options) else UNREACHABLE


def describe(exc: BaseException, options: ServiceBusOptions) -> str:
    """The transport's one-line account of a Service Bus error (no secret, a hint at the fix)."""
    from ..servicebus._diagnose import describe as describe_error

    return describe_error(exc, options)


# -- the command's own broker ------------------------------------------------------------------

PASSIVE = {"heartbeat_interval": 0.0, "heartbeat_idle_delay": 0.0}
"""A listening command sends no heartbeats: it never shows up among the app's instances."""


def new_broker(environ: Mapping[str, str], **overrides: Any) -> EventBroker:
    """A broker on a temporary Service Bus subscription (not started)."""
    options = broker_options(environ, **overrides)
    return EventBroker(servicebus_transport(environ), options)


def start(broker: EventBroker, connect_timeout: float) -> None:
    """Start `broker` and wait until it is connected; `CliError` saying why not."""
    from ..servicebus import ServiceBusConfigurationError, ServiceBusStartError

    try:
        broker.start()
    except ServiceBusConfigurationError as exc:
        raise CliError(f"configuration: {exc}") from None
    except ServiceBusStartError as exc:
        raise CliError(f"Service Bus refused to start: {exc}") from None
    deadline = time.monotonic() + connect_timeout
    while broker.connection_state is not ConnectionState.CONNECTED:
        if time.monotonic() >= deadline:
            error = getattr(broker.transport, "last_error", "") or "no answer"
            raise CliError(
                f"not connected to Service Bus after {connect_timeout:g} s ({error}); run "
                "`eventbroker doctor` to find out why",
                UNREACHABLE,
            )
        time.sleep(0.02)


@contextlib.contextmanager
def running(broker: EventBroker, connect_timeout: float) -> Iterator[EventBroker]:
    """`broker` started and connected; stopped at the end whatever happens (its subscription
    is deleted), Ctrl-C included."""
    try:
        start(broker, connect_timeout)
        yield broker
    finally:
        broker.stop()


def subscription_of(broker: EventBroker) -> str | None:
    name = getattr(broker.transport, "subscription_name", None)
    return name if isinstance(name, str) else None


def topic_of(broker: EventBroker) -> str:
    options = getattr(broker.transport, "options", None)
    return str(getattr(options, "topic", "?"))
