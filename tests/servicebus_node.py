"""One app instance in its own OS process, for the multi-process Service Bus test.

Usage: python -m tests.servicebus_node CONNECTION_STRING ADMIN_ENDPOINT INDEX NODES COUNT
Prints ``READY <subscription>``, waits for ``GO`` on stdin, raises COUNT broadcasts, waits for
every other node's broadcasts, prints ``RECEIVED <json list of params>``, stops, prints ``STOPPED``.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid

from eventbroker import EventBroker, EventBrokerOptions, EventRaiseOption, EventRegistry
from eventbroker.servicebus import ServiceBusOptions, ServiceBusTransport

EVENT = uuid.UUID("6a1f7c3e-0000-4000-8000-00000000e4e5")
RAISER = uuid.UUID("6a1f7c3e-0000-4000-8000-0000000000a2")


def main(conn: str, admin: str, index: int, nodes: int, count: int) -> None:
    options = ServiceBusOptions(
        connection_string=conn,
        administration_endpoint=admin,
        topic="events",
        reconnect_initial_backoff=0.05,
        reconnect_max_backoff=0.5,
    )
    broker = EventBroker(
        ServiceBusTransport(options),
        EventBrokerOptions(secret="procs-0123456789abcdef", application_name="shop"),
    )
    event = EventRegistry(broker).get(EVENT)
    received: list[str] = []
    done = threading.Event()
    expected = (nodes - 1) * count

    def on_received(notification: object) -> None:
        if getattr(notification, "is_local", True):
            return
        received.append(str(getattr(notification, "param", None)))
        if len(received) >= expected:
            done.set()

    event.raised.subscribe(on_received)
    with broker:
        print("READY", broker.transport.subscription_name, flush=True)  # type: ignore[attr-defined]
        if sys.stdin.readline().strip() != "GO":
            return
        for i in range(count):
            event.raise_(RAISER, f"{index}-{i}", EventRaiseOption.RAISE_BROADCAST)
        done.wait(60)
        print("RECEIVED", json.dumps(received), flush=True)
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
