"""Benchmark: ServiceBusTransport over the loopback Service Bus broker (prints figures and ratios).

    python -m bench.servicebus [--latency-samples 200] [--events 2000]

1. Publish-to-remote-handler latency (p50 / p99) and throughput (events/s) through two
   EventBrokers with ServiceBusTransport.
2. Batched (default) versus one message per send (``max_batch_messages=1``): target >= 5x.
3. Our transport versus a hand-written loop with the bare aio SDK doing the same sends and
   receives (one sender, one PEEK_LOCK receiver, batches, complete each message) in the same
   run: target throughput >= 0.8x the bare SDK's, p50 latency <= 1.25x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient
from eventbroker.testing.servicebus_broker import LoopbackServiceBus

from eventbroker import EventBroker, EventBrokerOptions, EventRaiseOption, EventRegistry
from eventbroker.servicebus import ServiceBusOptions, ServiceBusTransport
from eventbroker.servicebus._admin import Provisioner, admin_client

EVENT = uuid.UUID("b0b0b0b0-0000-4000-8000-000000000001")
RAISER = uuid.UUID("b0b0b0b0-0000-4000-8000-000000000002")
TOPIC = "bench"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _options(bus: Any, **overrides: Any) -> ServiceBusOptions:
    return ServiceBusOptions(
        connection_string=bus.connection_string,
        administration_endpoint=bus.admin_endpoint,
        topic=TOPIC,
        **overrides,
    )


class Pair:
    """Two EventBrokers; the second's handler signals each arrival."""

    def __init__(self, bus: Any, **sender_options: Any) -> None:
        self.a = EventBroker(
            ServiceBusTransport(_options(bus, **sender_options)),
            EventBrokerOptions(secret="bench", application_name="bench"),
        )
        self.b = EventBroker(
            ServiceBusTransport(_options(bus)),
            EventBrokerOptions(secret="bench", application_name="bench"),
        )
        self.event_a = EventRegistry(self.a).get(EVENT)
        self.event_b = EventRegistry(self.b).get(EVENT)
        self.count = 0
        self.target = 0
        self.done = threading.Event()
        self.event_b.raised.subscribe(self._on_event)

    def _on_event(self, notification: Any) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def expect(self, n: int) -> None:
        self.count, self.target = 0, n
        self.done.clear()

    def __enter__(self) -> Pair:
        threads = [threading.Thread(target=b.start) for b in (self.a, self.b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self

    def __exit__(self, *args: object) -> None:
        self.a.stop()
        self.b.stop()

    def latency(self, samples: int) -> list[float]:
        results = []
        for i in range(samples):
            self.expect(1)
            start = time.perf_counter()
            self.event_a.raise_(RAISER, i, EventRaiseOption.RAISE_BROADCAST)
            assert self.done.wait(10), "lost an event"
            results.append(time.perf_counter() - start)
        return results

    def throughput(self, events: int) -> float:
        self.expect(events)
        start = time.perf_counter()
        for i in range(events):
            self.event_a.raise_(RAISER, i, EventRaiseOption.RAISE_BROADCAST)
        assert self.done.wait(120), f"only {self.count} of {events} events arrived"
        return events / (time.perf_counter() - start)


async def _bare_sdk(bus: Any, samples: int, events: int) -> tuple[list[float], float]:
    """The same sends and receives written by hand against the aio SDK."""
    options = _options(bus)
    name = f"bare-{uuid.uuid4().hex[:8]}"
    provisioner = Provisioner(admin_client(options), options, name)
    await provisioner.ensure_topic()
    await provisioner.ensure_subscription("bare")
    client = ServiceBusClient.from_connection_string(bus.connection_string)
    sender = client.get_topic_sender(TOPIC)
    receiver = client.get_subscription_receiver(
        TOPIC, name, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=100
    )
    received = 0
    arrived = asyncio.Event()
    target = 0

    async def receive_forever() -> None:
        nonlocal received
        while True:
            batch = await receiver.receive_messages(max_message_count=100, max_wait_time=5)
            for message in batch:
                b"".join(message.body)
            await asyncio.gather(*(receiver.complete_message(m) for m in batch))
            received += len(batch)
            if received >= target:
                arrived.set()

    async with sender, receiver:
        task = asyncio.create_task(receive_forever())
        body = b"x" * 400  # about an envelope's size
        latencies = []
        for _ in range(samples):
            received, target = 0, 1
            arrived.clear()
            start = time.perf_counter()
            await sender.send_messages(ServiceBusMessage(body, message_id=uuid.uuid4().hex))
            await asyncio.wait_for(arrived.wait(), 10)
            latencies.append(time.perf_counter() - start)
        received, target = 0, events
        arrived.clear()
        start = time.perf_counter()
        pending = [ServiceBusMessage(body, message_id=uuid.uuid4().hex) for _ in range(events)]
        while pending:
            batch = await sender.create_message_batch()
            while pending:
                try:
                    batch.add_message(pending[0])
                except ValueError:
                    break
                pending.pop(0)
            await sender.send_messages(batch)
        await asyncio.wait_for(arrived.wait(), 120)
        rate = events / (time.perf_counter() - start)
        task.cancel()
    await client.close()
    await provisioner.delete_subscription()
    provisioner.close()
    return latencies, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with LoopbackServiceBus() as bus:
        with Pair(bus) as pair:
            pair.latency(20)  # warm-up
            ours_lat = pair.latency(args.latency_samples)
            ours_rate = pair.throughput(args.events)
        with Pair(bus, max_batch_messages=1) as single:
            single_rate = single.throughput(args.events)
        bare_lat, bare_rate = asyncio.run(_bare_sdk(bus, args.latency_samples, args.events))

    def ms(values: list[float], q: float) -> float:
        return _percentile(values, q) * 1000

    print(
        f"ServiceBusTransport latency     p50 {ms(ours_lat, 0.5):7.2f} ms  p99 {ms(ours_lat, 0.99):7.2f} ms"
    )
    print(
        f"bare aio SDK latency            p50 {ms(bare_lat, 0.5):7.2f} ms  p99 {ms(bare_lat, 0.99):7.2f} ms"
    )
    print(f"ServiceBusTransport batched     {ours_rate:9.0f} events/s")
    print(f"ServiceBusTransport 1 per send  {single_rate:9.0f} events/s")
    print(f"bare aio SDK batched            {bare_rate:9.0f} events/s")
    print(f"batched / one-per-send          {ours_rate / single_rate:6.2f}x  (target >= 5x)")
    print(f"throughput ours / bare SDK      {ours_rate / bare_rate:6.2f}x  (target >= 0.8x)")
    p50_ratio = statistics.median(ours_lat) / statistics.median(bare_lat)
    print(f"p50 latency ours / bare SDK     {p50_ratio:6.2f}x  (target <= 1.25x)")


if __name__ == "__main__":
    main()
