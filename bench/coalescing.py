"""Coalesced backplane messages: receive CPU per key, envelopes per notification, latency.

1. Receive CPU per key notification at 1, 10 and 100 notifications per envelope: envelopes
   made by a real sender (`EventBrokerBackplane.publish_envelope`) are recorded, then replayed
   through an `InMemoryHub` to a second broker whose `HybridCache` applies them (each key is in
   its L1, so every notification invalidates an entry). Measured: process CPU from the first
   publish to the last apply (hub, decode, verify, de-duplicate, sequence check, dispatch,
   decode of the pack, apply), divided by the number of keys. 1 per envelope is the unpacked
   path (a single message, as before packs).
2. Envelopes per notification under a burst of `set`s on one cache with 2 receivers, with
   the default window (2 ms, 100 per pack) and with packs off.
3. Latency of a lone notification (one `publish` every 10 ms): publish to the receiver's
   handler, default window vs packs off (a lone message leaves at once: nothing added).

Run: python bench/coalescing.py [keys] [rounds]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable

from cache import BackplaneMessage, BackplaneMessageAction, CacheOptions, EntryOptions, HybridCache
from cache.eventbroker_backplane import EventBrokerBackplane
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventReceivedEventArgs,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
)
from eventbroker._transport import TransportMessage

OPTIONS = EventBrokerOptions(secret="bench-secret-0123456789abcdef", application_name="bench")
FAIL_SAFE = EntryOptions(duration=600, is_fail_safe_enabled=True, skip_backplane_notifications=True)
QUIET = EntryOptions(skip_backplane_notifications=True)


def record(messages: list[BackplaneMessage], per_envelope: int) -> tuple[str, list[bytes]]:
    """The signed bodies a sender publishes for `messages`, `per_envelope` keys each."""
    hub = InMemoryHub()
    sender = EventBroker(InMemoryTransport(hub), OPTIONS)
    backplane = EventBrokerBackplane(EventRegistry(sender), sender)
    bodies: list[bytes] = []
    with sender:
        sender.transport.publish = lambda m: bodies.append(m.body)  # type: ignore[method-assign]
        for start in range(0, len(messages), per_envelope):
            backplane.publish_envelope(messages[start : start + per_envelope])
    return sender.instance_id, bodies


def receive_cpu(keys: int, per_envelope: int) -> float:
    """Receive-side CPU seconds per key notification."""
    names = [f"product:{i}" for i in range(keys)]
    hub = InMemoryHub()
    receiver = EventBroker(InMemoryTransport(hub), OPTIONS)
    feeder = EventBroker(InMemoryTransport(hub), OPTIONS)  # only its transport is used
    cache = HybridCache(
        CacheOptions(name="default", max_entries=keys + 10),
        backplane=EventBrokerBackplane(EventRegistry(receiver), receiver),
    )
    with receiver, feeder:
        for name in names:
            cache.set(name, 1, FAIL_SAFE)
        now = time.time() + 1
        messages = [
            BackplaneMessage(name, BackplaneMessageAction.ENTRY_SET, "sender", now + i * 1e-6)
            for i, name in enumerate(names)
        ]
        source, bodies = record(messages, per_envelope)
        before = cache.stats.backplane_received
        cpu = time.process_time()
        for index, body in enumerate(bodies):
            feeder.transport.publish(TransportMessage(body, f"{source}:{index + 1}", source))
        hub.drain(120)
        cpu = time.process_time() - cpu
        received = cache.stats.backplane_received - before
        cache.close()
    if received != keys:
        raise SystemExit(f"{received} of {keys} notifications applied")
    return cpu / keys


def burst(sets: int, window: float) -> int:
    """Envelopes one receiver got for `sets` sets on one cache (2 receivers)."""
    hub = InMemoryHub()
    brokers = [EventBroker(InMemoryTransport(hub), OPTIONS) for _ in range(3)]
    caches = [
        HybridCache(
            CacheOptions(name="default"),
            backplane=EventBrokerBackplane(EventRegistry(b), b, coalesce_window=window),
        )
        for b in brokers
    ]
    counted = [0, 0]
    notified = [0, 0]

    def counter(i: int) -> Callable[[EventReceivedEventArgs], None]:
        def count(args: EventReceivedEventArgs) -> None:
            counted[i] += 1
            items = args.param.items
            notified[i] += len(items) // 3 if items else 1

        return count

    for i, b in enumerate(brokers[1:]):
        b.event_received.subscribe(counter(i))
    for b in brokers:
        b.start()
    try:
        for i in range(sets):
            caches[0].set(f"product:{i}", i)
        deadline = time.monotonic() + 60
        while min(notified) < sets and time.monotonic() < deadline:
            hub.drain()
            time.sleep(0.005)
        if min(notified) != sets:
            raise SystemExit(f"{notified} of {sets} notifications arrived")
        if counted[0] != counted[1]:
            raise SystemExit(f"the receivers got {counted} envelopes")
        return counted[0]
    finally:
        for c in caches:
            c.close()
        for b in brokers:
            b.stop()


def lone_latency(window: float, samples: int) -> list[float]:
    """Seconds from `publish` to the receiver's handler, one message every 10 ms."""
    hub = InMemoryHub()
    a = EventBroker(InMemoryTransport(hub), OPTIONS)
    b = EventBroker(InMemoryTransport(hub), OPTIONS)
    backplane = EventBrokerBackplane(EventRegistry(a), a, coalesce_window=window)
    arrived = threading.Event()
    at = [0.0]

    def on(_: EventReceivedEventArgs) -> None:
        at[0] = time.perf_counter()
        arrived.set()

    EventRegistry(b)
    b.event_received.subscribe(on)
    out = []
    with a, b:
        for i in range(samples):
            time.sleep(0.01)
            arrived.clear()
            start = time.perf_counter()
            backplane.publish(
                BackplaneMessage(f"k{i}", BackplaneMessageAction.ENTRY_SET, "x"), EntryOptions()
            )
            if not arrived.wait(5):
                raise SystemExit("a lone notification did not arrive")
            out.append(at[0] - start)
    return out


def main() -> None:
    keys = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sizes = (1, 10, 100)
    best = dict.fromkeys(sizes, float("inf"))
    for _ in range(rounds):  # interleaved, best of the rounds
        for size in sizes:
            best[size] = min(best[size], receive_cpu(keys, size))
    base = best[1]
    parts = [
        f"{size}/envelope {best[size] * 1e6:.1f} us"
        + ("" if size == 1 else f" ({base / best[size]:.1f}x less than unpacked)")
        for size in sizes
    ]
    print(f"receive CPU per key notification ({keys} keys, best of {rounds}): " + ", ".join(parts))

    sets = 5000
    packed = min(burst(sets, 0.002) for _ in range(3))
    single = burst(sets, 0.0)
    print(
        f"burst of {sets} sets on one cache, 2 receivers: {packed} envelopes with packs "
        f"({sets / packed:.1f}x fewer than notifications), {single} with packs off"
    )

    samples = 100
    with_packs, without = [], []
    for _ in range(2):
        with_packs += lone_latency(0.002, samples)
        without += lone_latency(0.0, samples)
    p50 = statistics.median(with_packs) * 1e3
    p50_off = statistics.median(without) * 1e3
    p99 = statistics.quantiles(with_packs, n=100)[98] * 1e3
    p99_off = statistics.quantiles(without, n=100)[98] * 1e3
    print(
        f"lone notification latency (publish to handler, {2 * samples} each): p50 {p50:.3f} ms "
        f"with the 2 ms window vs {p50_off:.3f} ms with packs off (added {p50 - p50_off:+.3f} ms); "
        f"p99 {p99:.3f} vs {p99_off:.3f} ms"
    )


if __name__ == "__main__":
    main()
