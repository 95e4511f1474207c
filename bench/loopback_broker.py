"""Throughput of the loopback Service Bus broker with the bare azure-servicebus SDK.

The broker runs in its own process (the command line), as in local multi-process use, so the
SDK and the broker do not share one GIL. Prints messages per second for batched sends, single
sends, RECEIVE_AND_DELETE receives and PEEK_LOCK receive + complete, and the batched / single
send ratio. Run from the repository root: `PYTHONPATH=. python bench/loopback_broker.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode

from eventbroker.testing import administration_client, broker_process

N = 3000
BATCH = 100
SINGLE = 300
BODY = b"x" * 200


def _rate(count: int, run: Callable[[], int]) -> float:
    start = time.perf_counter()
    done = run()
    elapsed = time.perf_counter() - start
    if done != count:
        raise SystemExit(f"expected {count} messages, got {done}")
    return count / elapsed


def main() -> None:
    with broker_process("t") as (connection_string, admin_endpoint):
        with administration_client(connection_string, admin_endpoint) as admin:
            admin.create_subscription("t", "lock")
            admin.create_subscription("t", "delete")
        run(connection_string)


def run(connection_string: str) -> None:
    with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_topic_sender("t") as sender,
        client.get_subscription_receiver("t", "lock", prefetch_count=500) as locking,
        client.get_subscription_receiver(
            "t", "delete", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, prefetch_count=500
        ) as deleting,
    ):

        def send_batched() -> int:
            for _ in range(N // BATCH):
                batch = sender.create_message_batch()
                for _ in range(BATCH):
                    batch.add_message(ServiceBusMessage(BODY))
                sender.send_messages(batch)
            return N

        def receive(receiver: object, settle: bool) -> Callable[[], int]:
            def drain() -> int:
                got = 0
                while got < N:
                    messages = receiver.receive_messages(max_message_count=500, max_wait_time=2)  # type: ignore[attr-defined]
                    if not messages:
                        break
                    if settle:
                        for message in messages:
                            receiver.complete_message(message)  # type: ignore[attr-defined]
                    got += len(messages)
                return got

            return drain

        def send_single() -> int:
            for _ in range(SINGLE):
                sender.send_messages(ServiceBusMessage(BODY))
            return SINGLE

        batched = _rate(N, send_batched)
        deleted = _rate(N, receive(deleting, settle=False))
        locked = _rate(N, receive(locking, settle=True))
        single = _rate(SINGLE, send_single)
    print(f"send, batches of {BATCH}:          {batched:8.0f} msg/s")
    print(f"send, one message per call:     {single:8.0f} msg/s")
    print(f"receive, RECEIVE_AND_DELETE:    {deleted:8.0f} msg/s")
    print(f"receive + complete, PEEK_LOCK:  {locked:8.0f} msg/s")
    print(f"batched / single send ratio:    {batched / single:8.1f}x")


if __name__ == "__main__":
    main()
