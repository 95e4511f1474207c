"""Shared pieces of the Service Bus wire tests: the loopback broker and test options."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from eventbroker.servicebus import ServiceBusOptions

TOPIC = "events"


@contextlib.contextmanager
def loopback_bus() -> Iterator[Any]:
    """A running loopback Service Bus broker; the test fails (never skips) if it cannot run."""
    try:
        from eventbroker.testing.servicebus_broker import LoopbackServiceBus
    except ImportError as exc:  # pragma: no cover - the broker is part of the project
        pytest.fail(f"the loopback Service Bus broker is not available: {exc}")
    with LoopbackServiceBus() as bus:
        yield bus


def sb_options(bus: Any, **overrides: Any) -> ServiceBusOptions:
    """Options pointing at `bus`, with short backoffs and waits so tests take seconds."""
    values: dict[str, Any] = {
        "connection_string": bus.connection_string,
        "administration_endpoint": bus.admin_endpoint,
        "topic": TOPIC,
        "reconnect_initial_backoff": 0.05,
        "reconnect_max_backoff": 0.5,
        "sdk_retry_total": 0,
        "receive_wait": 5.0,
        "stop_timeout": 5.0,
    }
    values.update(overrides)
    return ServiceBusOptions(**values)
