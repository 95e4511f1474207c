"""Shared pieces of the Service Bus wire tests: the loopback broker and test options."""

from __future__ import annotations

import socket
from typing import Any

from eventbroker.servicebus import ServiceBusOptions
from eventbroker.testing import LoopbackServiceBus

TOPIC = "events"


def sb_options(bus: LoopbackServiceBus, **overrides: Any) -> ServiceBusOptions:
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


def free_port() -> int:
    """A loopback TCP port nobody listens on (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def down_options(port: int, admin_port: int, **overrides: Any) -> ServiceBusOptions:
    """`sb_options` for a loopback broker that will listen on these ports (not running yet)."""
    bus = LoopbackServiceBus(port=port, admin_port=admin_port)  # never started: addresses only
    return sb_options(bus, **overrides)
