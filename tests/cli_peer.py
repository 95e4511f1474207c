"""An app instance in its own OS process, configured from the environment like an app.

Usage: python -m tests.cli_peer [EVENT_ID]
Starts an `EventBroker` on `transport_from_env()` with `EventBrokerOptions.from_env()`, prints
``READY <instance id> <subscription>``, prints ``RECEIVED <json>`` for every event received,
and stops (deleting its subscription) when stdin closes or says ``STOP``; then ``STOPPED``.
"""

from __future__ import annotations

import json
import sys

from eventbroker import EventBroker, EventBrokerOptions, EventReceivedEventArgs
from eventbroker.contrib._services import transport_from_env


def main() -> None:
    broker = EventBroker(transport_from_env(), EventBrokerOptions.from_env())

    def received(args: EventReceivedEventArgs) -> None:
        record = {"event_id": str(args.event_id), "raiser_id": str(args.raiser_id)}
        print("RECEIVED", json.dumps({**record, "param": args.param}), flush=True)

    broker.event_received.subscribe(received)
    with broker:
        subscription = getattr(broker.transport, "subscription_name", None)
        print("READY", broker.instance_id, subscription, flush=True)
        for line in sys.stdin:
            if line.strip() == "STOP":
                break
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
