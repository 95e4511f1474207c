"""The hook an instrumentation plugs into an `EventBroker` (``eventbroker.contrib.otel`` does).

The broker calls it per event only while one is set (`EventBroker._telemetry`); unset, the
pipeline pays one attribute check per event. Counters need no hook: an instrumentation reads
`EventBroker.stats` when it collects. Nothing here imports OpenTelemetry.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from ._envelope import Envelope


@attrs.frozen
class DeliveryScope:
    """Where the handlers of one received event run, and what to call once they are done."""

    context: contextvars.Context
    """Plain handlers run in it (on the dispatcher thread), async ones in a copy (on the loop)."""
    end: Callable[[], None]
    """Called once, after the last handler finished (or at once when there are none)."""


class BrokerTelemetry(Protocol):
    """Per-event hooks; each must never raise (a failure here would refuse a good message)."""

    def send(self, fields: dict[str, Any], publish: Callable[[dict[str, Any]], None]) -> None:
        """Publish an event by calling ``publish(fields)`` once, letting its error through.

        May add the envelope's ``"trace"`` field (`TraceContext.fields`) before publishing."""
        ...

    def receive(self, envelope: Envelope, now: float) -> DeliveryScope | None:
        """A verified event is about to be dispatched (`now`: the broker's clock); the scope
        for its handlers, or None to run them as they are."""
        ...
