"""Benchmark: ServiceBusTransport over the loopback Service Bus broker (prints figures and ratios).

    python -m bench.servicebus [--latency-samples 300] [--events 1500] [--rounds 3]

The loopback broker runs in its own process (as in local multi-process development), so its
CPU does not compete for this process's GIL. The setups below run in the same process, each on
its own topic, interleaved round after round (the machine's load changes hit them alike):

1. ours: two EventBrokers with ServiceBusTransport (default batching); a handler on the second
   (a plain one, run on the broker's dispatcher thread; and an ``async def`` one, run on its
   I/O loop).
2. ours, one message per send (``max_batch_messages=1``).
3. bare: a hand-written loop with the aio SDK doing the same sends and receives: one sender
   (one message per send for latency, ``ServiceBusMessageBatch``es for throughput) and, as
   for two instances, two subscriptions each drained by a PEEK_LOCK receiver with prefetch
   (``async for`` + ``complete_message``).

Figures: publish-to-remote-handler latency p50 / p99; send throughput (events/s until the
broker has acknowledged every send) and delivered throughput (events/s until the remote
handler has seen them all). Targets: batched send >= 5x one-per-send; delivered throughput
>= 0.8x the bare SDK's; p50 latency <= 1.25x the bare SDK's.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import threading
import time
import uuid
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient

from eventbroker import EventBroker, EventBrokerOptions, EventRaiseOption, EventRegistry
from eventbroker.servicebus import ServiceBusOptions, ServiceBusTransport
from eventbroker.servicebus._admin import Provisioner, admin_client
from eventbroker.testing import broker_process

EVENT = uuid.UUID("b0b0b0b0-0000-4000-8000-000000000001")
RAISER = uuid.UUID("b0b0b0b0-0000-4000-8000-000000000002")
BODY = b"x" * 400  # about the size of a signed envelope


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Pair:
    """Two EventBrokers over ServiceBusTransport; the second's handler counts arrivals."""

    def __init__(
        self,
        conn: str,
        admin: str,
        topic: str,
        *,
        async_handler: bool = False,
        **sender_options: Any,
    ) -> None:
        def options(**extra: Any) -> ServiceBusOptions:
            return ServiceBusOptions(
                connection_string=conn, administration_endpoint=admin, topic=topic, **extra
            )

        self.sender = ServiceBusTransport(options(**sender_options))
        broker_options = EventBrokerOptions(
            secret="bench-0123456789abcdef", application_name="bench"
        )
        self.a = EventBroker(self.sender, broker_options)
        self.b = EventBroker(ServiceBusTransport(options()), broker_options)
        self.event_a = EventRegistry(self.a).get(EVENT)
        event_b = EventRegistry(self.b).get(EVENT)
        if async_handler:  # runs on B's I/O loop

            async def on_event_async(notification: Any) -> None:
                self._on_event(notification)

            event_b.raised.subscribe(on_event_async)
        else:  # runs on B's dispatcher thread
            event_b.raised.subscribe(self._on_event)
        self.count = 0
        self.target = 0
        self.arrived_at = 0.0
        self.done = threading.Event()

    def _on_event(self, notification: Any) -> None:
        self.count += 1
        if self.count >= self.target:
            self.arrived_at = time.perf_counter()
            self.done.set()

    def _expect(self, n: int) -> None:
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
            self._expect(1)
            start = time.perf_counter()
            self.event_a.raise_(RAISER, i, EventRaiseOption.RAISE_BROADCAST)
            assert self.done.wait(10), "lost an event"
            results.append(self.arrived_at - start)
        return results

    def throughput(self, events: int) -> tuple[float, float]:
        """(sent events/s, delivered events/s)."""
        self._expect(events)
        start = time.perf_counter()
        for i in range(events):
            self.event_a.raise_(RAISER, i, EventRaiseOption.RAISE_BROADCAST)
        while self.sender.queued:
            time.sleep(0.0005)
        sent = time.perf_counter() - start
        assert self.done.wait(120), f"only {self.count} of {events} events arrived"
        return events / sent, events / (self.arrived_at - start)


class BarePair:
    """The same sends and receives written by hand against the aio SDK, in the same shape.

    Two instances, each on its own loop thread like an EventBroker's I/O thread: A has the
    sender and its own subscription's receiver, B the other receiver; both receivers drain
    their subscription (``async for`` + ``complete_message``, PEEK_LOCK, prefetch 100), which
    carries the own-message rule our transport installs by default (A's sends are labelled with
    A's name, as our transport labels them with the instance id). The main thread starts sends
    and waits, as with ``raise_``.
    """

    def __init__(self, conn: str, admin: str, topic: str) -> None:
        self.conn = conn
        self.topic = topic
        self.options = ServiceBusOptions(
            connection_string=conn, administration_endpoint=admin, topic=topic
        )
        self.names = [f"bare-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        self.loops = [asyncio.new_event_loop() for _ in range(2)]
        self.threads = [
            threading.Thread(target=loop.run_forever, daemon=True) for loop in self.loops
        ]
        self.count = 0
        self.target = 0
        self.arrived_at = 0.0
        self.done = threading.Event()

    def _on(self, index: int, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loops[index]).result(60)

    def __enter__(self) -> BarePair:
        for thread in self.threads:
            thread.start()
        self._on(0, self._provision(create=True))
        self.clients = [ServiceBusClient.from_connection_string(self.conn) for _ in range(3)]
        self.sender = self.clients[0].get_topic_sender(self.topic)
        self._on(0, self.sender.__aenter__())
        self.tasks = [
            asyncio.run_coroutine_threadsafe(self._drain(index), self.loops[index])
            for index in range(2)
        ]
        return self

    def __exit__(self, *args: object) -> None:
        for task in self.tasks:
            task.cancel()
        concurrent.futures.wait(self.tasks, timeout=5)
        self._on(0, self.sender.close())
        for index in range(2):
            self._on(index, self.clients[index + 1].close())
        self._on(0, self.clients[0].close())
        self._on(0, self._provision(create=False))
        for loop in self.loops:
            loop.call_soon_threadsafe(loop.stop)

    async def _provision(self, create: bool) -> None:
        for name in self.names:
            provisioner = Provisioner(admin_client(self.options), self.options, name)
            if create:
                await provisioner.ensure_topic()
                # the same own-message rule our transport installs by default
                await provisioner.ensure_subscription(name)
            else:
                await provisioner.delete_subscription()
            provisioner.close()

    async def _drain(self, index: int) -> None:
        receiver = self.clients[index + 1].get_subscription_receiver(
            self.topic,
            self.names[index],
            receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            prefetch_count=100,
        )
        async with receiver:
            async for message in receiver:
                b"".join(message.body)
                if index == 1:
                    self.count += 1
                    if self.count >= self.target:
                        self.arrived_at = time.perf_counter()
                        self.done.set()
                await receiver.complete_message(message)

    def _expect(self, n: int) -> None:
        self.count, self.target = 0, n
        self.done.clear()

    def latency(self, samples: int) -> list[float]:
        results = []
        for _ in range(samples):
            self._expect(1)
            start = time.perf_counter()
            message = ServiceBusMessage(BODY, message_id=uuid.uuid4().hex, subject=self.names[0])
            asyncio.run_coroutine_threadsafe(self.sender.send_messages(message), self.loops[0])
            assert self.done.wait(10), "lost a message"
            results.append(self.arrived_at - start)
        return results

    async def _send_batches(self, events: int) -> None:
        pending = [
            ServiceBusMessage(BODY, message_id=uuid.uuid4().hex, subject=self.names[0])
            for _ in range(events)
        ]
        index = 0
        while index < len(pending):
            batch = await self.sender.create_message_batch()
            while index < len(pending):
                try:
                    batch.add_message(pending[index])
                except ValueError:
                    break
                index += 1
            await self.sender.send_messages(batch)

    def throughput(self, events: int) -> tuple[float, float]:
        """(sent events/s, delivered events/s)."""
        self._expect(events)
        start = time.perf_counter()
        self._on(0, self._send_batches(events))
        sent = time.perf_counter() - start
        assert self.done.wait(120), f"only {self.count} of {events} messages arrived"
        return events / sent, events / (self.arrived_at - start)


def _median(values: list[float]) -> float:
    return _percentile(values, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--events", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = ("ours", "async", "single", "bare")
    latency: dict[str, list[float]] = {name: [] for name in names}
    sent: dict[str, list[float]] = {name: [] for name in names}
    delivered: dict[str, list[float]] = {name: [] for name in names}
    with broker_process() as (conn, admin), contextlib.ExitStack() as stack:
        # every setup has its own topic; they run interleaved, round after round, so a change
        # in the machine's load (shared CPUs) hits them alike
        setups: dict[str, Pair | BarePair] = {
            "ours": stack.enter_context(Pair(conn, admin, "bench-ours")),
            "async": stack.enter_context(Pair(conn, admin, "bench-async", async_handler=True)),
            "single": stack.enter_context(Pair(conn, admin, "bench-single", max_batch_messages=1)),
            "bare": stack.enter_context(BarePair(conn, admin, "bench-bare")),
        }
        for setup in setups.values():
            setup.latency(20)  # warm-up
        for _ in range(args.rounds):
            for name, setup in setups.items():
                if name != "single":
                    latency[name] += setup.latency(args.latency_samples // args.rounds)
                rate_sent, rate_delivered = setup.throughput(args.events)
                sent[name].append(rate_sent)
                delivered[name].append(rate_delivered)

    def ms(values: list[float]) -> str:
        return f"p50 {_percentile(values, 0.5) * 1000:6.2f} ms  p99 {_percentile(values, 0.99) * 1000:6.2f} ms"

    rate = {name: (_median(sent[name]), _median(delivered[name])) for name in names}
    p50 = {name: _percentile(latency[name], 0.5) for name in ("ours", "async", "bare")}
    print(f"publish-to-remote-handler latency ({args.latency_samples} samples each)")
    print(f"  ours, plain handler          {ms(latency['ours'])}")
    print(f"  ours, async handler          {ms(latency['async'])}")
    print(f"  bare aio SDK                 {ms(latency['bare'])}")
    print(f"events/s, median of {args.rounds} runs of {args.events}: sent / delivered")
    for name, label in (
        ("ours", "ours, batched"),
        ("async", "ours, batched, async handler"),
        ("single", "ours, one message per send"),
        ("bare", "bare aio SDK, batched"),
    ):
        print(f"  {label:29}{rate[name][0]:7.0f} / {rate[name][1]:5.0f}")
    print("ratios")
    print(
        f"  batched / one-per-send, sent       {rate['ours'][0] / rate['single'][0]:5.2f}x  (target >= 5x)"
    )
    print(f"  batched / one-per-send, delivered  {rate['ours'][1] / rate['single'][1]:5.2f}x")
    print(
        f"  ours / bare SDK, delivered         {rate['ours'][1] / rate['bare'][1]:5.2f}x  (target >= 0.8x)"
    )
    print(f"  ours async / bare SDK, delivered   {rate['async'][1] / rate['bare'][1]:5.2f}x")
    print(
        f"  ours / bare SDK, p50 latency       {p50['ours'] / p50['bare']:5.2f}x  (target <= 1.25x)"
    )
    print(f"  ours async / bare SDK, p50 latency {p50['async'] / p50['bare']:5.2f}x")


if __name__ == "__main__":
    main()
