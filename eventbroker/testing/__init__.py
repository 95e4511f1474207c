"""Test helpers shipped with the package: the loopback Service Bus broker (needs the
``loopback`` extra), its administration client helper and pytest fixture.

Names load lazily, so ``python -m eventbroker.testing.servicebus_broker`` runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._servicebus_admin_client import administration_client
    from .servicebus_broker import (
        DeadLetter,
        LoopbackServiceBus,
        ServiceBusEntityError,
        broker_process,
    )

__all__ = [
    "DeadLetter",
    "LoopbackServiceBus",
    "ServiceBusEntityError",
    "administration_client",
    "broker_process",
]

_HOMES = {
    "administration_client": "._servicebus_admin_client",
    "DeadLetter": ".servicebus_broker",
    "LoopbackServiceBus": ".servicebus_broker",
    "ServiceBusEntityError": ".servicebus_broker",
    "broker_process": ".servicebus_broker",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)
