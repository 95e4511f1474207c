"""The demo over Azure Service Bus, as separate OS processes."""

from __future__ import annotations

import importlib
import sys

from ._settings import InventorySettings


def run_servicebus_demo(settings: InventorySettings, connection_string: str | None) -> int:
    try:
        importlib.import_module("eventbroker.servicebus")
    except ImportError:
        print(
            "error: --transport servicebus needs the Service Bus transport "
            "(eventbroker.servicebus), which this checkout does not have yet. "
            "Run the embedded demo instead: python -m samples.inventory",
            file=sys.stderr,
        )
        return 2
    raise NotImplementedError
