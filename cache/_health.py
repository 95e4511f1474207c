"""`Health`: what `EventBroker.health()`, `HybridCache.health()` and `JobScheduler.health()` say.

One type for all three packages (the event broker and the jobs package re-export it), so a
health route can combine them: `Health.combine(broker.health(), cache.health())`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attrs


class HealthStatus(enum.StrEnum):
    """How a component is doing, from best to worst."""

    OK = "ok"
    """Working as configured."""
    DEGRADED = "degraded"
    """Serving, but something is off (a service down, a backlog): the reasons say what."""
    DOWN = "down"
    """Not doing its job (stopped, or never connected): the reasons say what."""


def _reasons(reasons: Iterable[str]) -> tuple[str, ...]:
    return tuple(reasons)


_RANK = {HealthStatus.OK: 0, HealthStatus.DEGRADED: 1, HealthStatus.DOWN: 2}


@attrs.frozen
class Health:
    """A component's status and, unless it is OK, the reasons in words a person can act on."""

    status: HealthStatus
    reasons: tuple[str, ...] = attrs.field(default=(), converter=_reasons)
    component: str = ""
    """Which component this is about, such as ``eventbroker 'shop'`` or ``cache 'products'``."""

    @property
    def is_ok(self) -> bool:
        return self.status is HealthStatus.OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: ``{"status": "degraded", "component": ..., "reasons": [...]}``."""
        return {
            "status": self.status.value,
            "component": self.component,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_reasons(
        cls, component: str, *, down: Iterable[str] = (), degraded: Iterable[str] = ()
    ) -> Health:
        """DOWN if any `down` reason, else DEGRADED if any `degraded` reason, else OK."""
        down, degraded = list(down), list(degraded)
        status = (
            HealthStatus.DOWN if down else HealthStatus.DEGRADED if degraded else HealthStatus.OK
        )
        return cls(status, (*down, *degraded), component)

    @classmethod
    def combine(cls, *parts: Health, component: str = "") -> Health:
        """The worst status of `parts`, with every reason prefixed by its component."""
        status = max(
            (part.status for part in parts), key=_RANK.__getitem__, default=HealthStatus.OK
        )
        reasons = tuple(
            f"{part.component}: {reason}" if part.component else reason
            for part in parts
            for reason in part.reasons
        )
        return cls(status, reasons, component)

    def __str__(self) -> str:
        head = f"{self.component}: {self.status.value}" if self.component else self.status.value
        return head if not self.reasons else f"{head} ({'; '.join(self.reasons)})"
