"""How the receive cost grows with the farm: every instance takes in every other one's messages.

    python -m bench.scale [--sizes 2,4,8,16] [--transports hub,servicebus] [--keys 200]
                          [--sets 20] [--duration 2] [--coalesce-window 0.002]
                          [--batch-keys 500] [--batch 100]

A farm of N instances: one job instance (a `CacheInvalidator` over an `EventBrokerBackplane`)
invalidates `--keys` keys in packs of `--pack`, spread over `--duration` seconds; N-1 web
instances (a `HybridCache` on an `EventBrokerBackplane`, every job key in L1) each do `--sets`
`set`s over the same time (each one a backplane notification to every other instance, as in
FusionCache). Each web instance therefore receives keys + (N-2) * sets notifications. Then,
at the largest size, job bursts only: `--batch-keys` keys in `invalidate()` calls of `--batch`
(no sets), which gives the final line: the per-key receive CPU at the largest batch.

Two transports: `hub` (every instance in this one process, on an `InMemoryHub`) and
`servicebus` (every instance its own OS process, over the loopback Service Bus broker, which
runs in this process and counts its operations). Each farm runs unpacked (one envelope per
notification: `coalesce_window=0`, today's behaviour) and packed (`--coalesce-window`), when
`EventBrokerBackplane` has coalescing; otherwise the packed rows say "n/a".

Per web instance: CPU (`time.process_time()`) per 1,000 received notifications, from the
start until it has received them all, including its own `set`s (few beside what it receives);
in the hub farm it is the whole process's CPU over every web instance's receipts. Lag: the
job stamps each pack when it sends it; each web instance notes when the cache applied the
invalidation (the cache's backplane-message event, just before the L1 expiry in the same
call); per key the LAST web instance's time; p50/p99 over keys. Memory: the receiving
broker's dedup window, sequence tracker and presence table (a `sys.getsizeof` walk), mean per
web instance. Service Bus operations per notification: what the loopback broker did (each
send call, each message delivered to a subscription, each settlement) over the notifications
sent; heartbeats included.

The machine this ran on had 2 cores shared with other benchmarks: a farm whose processes
together want more CPU than there is is marked CPU-bound; its lag then measures the queue,
while CPU per notification and envelopes per notification stay meaningful.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import json
import os
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cache import BackplaneMessage, BackplaneMessageAction, CacheOptions, EntryOptions, HybridCache
from cache.eventbroker_backplane import EventBrokerBackplane
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventRegistry,
    InMemoryHub,
    InMemoryTransport,
    Transport,
)
from jobs import CacheInvalidator

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "bench-scale"
SECRET = "bench-scale-0123456789abcdef"
QUIET = EntryOptions(duration=3600, skip_backplane_notifications=True)


def coalescing_available() -> bool:
    """Whether this release's `EventBrokerBackplane` packs notifications (`coalesce_window`)."""
    return "coalesce_window" in inspect.signature(EventBrokerBackplane).parameters


def make_backplane(
    registry: EventRegistry, broker: EventBroker, window: float | None
) -> EventBrokerBackplane:
    """`window` None: the backplane as this release builds it by default."""
    if window is None:
        return EventBrokerBackplane(registry, broker)
    make: Any = EventBrokerBackplane  # the keyword exists only where coalescing does
    return make(registry, broker, coalesce_window=window)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    instances: int
    keys: int
    pack: int
    sets: int
    duration: float
    window: float | None  # None: no coalesce_window given (release without coalescing)
    timeout: float = 120.0

    @property
    def webs(self) -> int:
        return self.instances - 1

    def expected(self) -> int:
        """Notifications each web instance receives."""
        return self.keys + (self.webs - 1) * self.sets

    def notifications(self) -> int:
        """Notifications sent by the whole farm."""
        return self.keys + self.webs * self.sets


def job_key(i: int) -> str:
    return f"product:{i}"


# ------------------------------------------------------------------- memory of the receiver


_NOT_STATE = (type, types.ModuleType, types.FunctionType, types.MethodType)


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes held by `obj` and what it references (containers, slots, attributes)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, _NOT_STATE):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in list(obj.items()))
    elif isinstance(obj, list | tuple | set | frozenset | collections.deque):
        size += sum(deep_size(item, seen) for item in list(obj))
    elif not isinstance(obj, str | bytes | int | float | bool | type(None)):
        for name in getattr(type(obj), "__slots__", ()):
            size += deep_size(getattr(obj, name, None), seen)
        if hasattr(obj, "__dict__"):
            size += deep_size(vars(obj), seen)
    return size


def receiver_state_bytes(broker: EventBroker) -> dict[str, int]:
    """The broker's per-source receive state: dedup window, sequence tracker, presence."""
    return {
        "dedup": deep_size(broker._dedup),
        "sequence": deep_size(broker._tracker),
        "presence": deep_size(broker._presence),
        "dedup_ids": len(broker._dedup),
    }


# ---------------------------------------------------------------------------- the instances


@dataclass
class Report:
    role: str
    cpu: float = 0.0  # seconds of CPU from the start to the end of the work
    received: int = 0  # notifications applied by the cache (web instances)
    lags: dict[str, float] = field(default_factory=dict)  # job key -> seconds
    published: int = 0  # envelopes handed to the transport
    heartbeats: int = 0
    memory: dict[str, int] = field(default_factory=dict)
    finished: bool = True
    idle: float = 0.0  # CPU seconds the instance would have spent idle meanwhile


class Instance:
    def __init__(self, role: str, index: int, transport: Transport, plan: Plan) -> None:
        self.role = role
        self.index = index
        self.plan = plan
        options = EventBrokerOptions(
            secret=SECRET, application_name="bench-scale", connect_timeout=60
        )
        self.broker = EventBroker(transport, options)
        self.registry = EventRegistry(self.broker)
        self.backplane = make_backplane(self.registry, self.broker, plan.window)
        self.cache: HybridCache | None = None
        self.invalidator: CacheInvalidator | None = None
        self.lags: dict[str, float] = {}
        self.received = 0

    def start(self) -> None:
        self.broker.start()
        if self.role == "job":
            self.invalidator = CacheInvalidator(self.backplane)
            return
        cache = HybridCache(
            CacheOptions(name="scale", max_entries=self.plan.keys + self.plan.sets + 1000),
            backplane=self.backplane,
        )
        for i in range(self.plan.keys):
            cache.set(job_key(i), i, QUIET)
        cache.events.backplane_message_received.subscribe(self._on_message)
        self.cache = cache

    def _on_message(self, message: BackplaneMessage) -> None:
        self.received += 1
        if message.action is BackplaneMessageAction.ENTRY_EXPIRE:
            self.lags.setdefault(message.cache_key, time.time() - message.timestamp)

    def schedule(self, t0: float) -> list[tuple[float, Callable[[], None]]]:
        """(wall time, action) for this instance's share of the work."""
        plan = self.plan
        if self.role == "job":
            packs = [
                [job_key(i) for i in range(start, min(start + plan.pack, plan.keys))]
                for start in range(0, plan.keys, plan.pack)
            ]
            step = plan.duration / max(len(packs), 1)
            return [(t0 + n * step, self._invalidate(keys)) for n, keys in enumerate(packs)]
        step = plan.duration / max(plan.sets, 1)
        offset = step * self.index / max(plan.webs, 1)  # the web instances take turns
        return [(t0 + offset + n * step, self._set(n)) for n in range(plan.sets)]

    def _invalidate(self, keys: list[str]) -> Callable[[], None]:
        def run() -> None:
            assert self.invalidator is not None
            self.invalidator.invalidate(keys)

        return run

    def _set(self, n: int) -> Callable[[], None]:
        def run() -> None:
            assert self.cache is not None
            self.cache.set(f"web{self.index}:{n}", n)

        return run

    def flush(self) -> None:
        flush = getattr(self.backplane, "flush", None)
        if callable(flush):
            flush()

    def done(self) -> bool:
        return self.cache is None or self.received >= self.plan.expected()

    def report(self, cpu: float, finished: bool) -> Report:
        stats = self.broker.stats
        return Report(
            role=self.role,
            cpu=cpu,
            received=self.cache.stats.backplane_received if self.cache is not None else 0,
            lags=dict(self.lags),
            published=stats.published,
            heartbeats=stats.heartbeats_sent,
            memory=receiver_state_bytes(self.broker),
            finished=finished,
        )

    def stop(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.broker.stop()


def apply_cost_us(n: int = 20_000) -> float:
    """CPU per invalidation the cache applies (L1 expire of a present key), without transport:
    the part of the receive cost a packed envelope cannot share out."""
    cache = HybridCache(CacheOptions(name="scale", max_entries=n + 1))
    for i in range(n):
        cache.set(job_key(i), i, QUIET)
    now = time.time()
    messages = [
        BackplaneMessage(
            cache_key=job_key(i),
            action=BackplaneMessageAction.ENTRY_EXPIRE,
            source_id="job",
            timestamp=now,
        )
        for i in range(n)
    ]
    start = time.process_time()
    for message in messages:
        cache._on_backplane_message(message)
    cost = (time.process_time() - start) / n * 1e6
    cache.close()
    return cost


def run_schedule(instances: list[Instance], t0: float) -> None:
    """Do every instance's work at its time (late, when the machine cannot keep up)."""
    work = sorted(
        (item for instance in instances for item in instance.schedule(t0)), key=lambda x: x[0]
    )
    for due, action in work:
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        action()
    for instance in instances:
        instance.flush()


def wait_done(instances: list[Instance], deadline: float) -> bool:
    while not all(i.done() for i in instances):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ------------------------------------------------------------------------ the hub farm


def run_hub(plan: Plan) -> Result:
    hub = InMemoryHub()
    instances = [Instance("job", 0, InMemoryTransport(hub), plan)] + [
        Instance("web", i, InMemoryTransport(hub), plan) for i in range(1, plan.instances)
    ]
    for instance in instances:
        instance.start()
    hub.drain()
    before = [i.broker.stats for i in instances]
    cpu0, wall0 = time.process_time(), time.time()
    run_schedule(instances, wall0 + 0.05)
    finished = wait_done(instances, time.monotonic() + plan.timeout)
    cpu, wall = time.process_time() - cpu0, time.time() - wall0
    reports = [
        i.report(cpu, finished) for i in instances
    ]  # the process's CPU: shared by every instance
    for report, old in zip(reports, before, strict=True):
        report.published -= old.published
        report.heartbeats -= old.heartbeats_sent
    for instance in instances:
        instance.stop()
    return Result(plan, "hub", reports, wall, cpu, ops=None)


# ---------------------------------------------------------------- the Service Bus farm


def child_main(role: str, index: int, plan_json: str) -> None:
    """One instance in its own process: ready, then the work at the given time, then report."""
    from eventbroker.servicebus import ServiceBusOptions, ServiceBusTransport

    plan = Plan(**json.loads(plan_json))
    transport = ServiceBusTransport(ServiceBusOptions.from_env())
    instance = Instance(role, index, transport, plan)
    instance.start()
    print(json.dumps({"event": "ready"}), flush=True)
    sys.stdin.readline()  # "idle": every instance is up and has heard the others' hellos
    idle_cpu, idle_wall = time.process_time(), time.monotonic()
    go = sys.stdin.readline().split()
    t0 = float(go[1])
    idle_rate = (time.process_time() - idle_cpu) / max(time.monotonic() - idle_wall, 1e-9)
    before = instance.broker.stats
    cpu0, wall0 = time.process_time(), time.monotonic()
    run_schedule([instance], t0)
    if role == "job":  # the job's work ends when Service Bus has taken every envelope
        finished = _wait(lambda: transport.queued == 0, plan.timeout)
    else:
        finished = wait_done([instance], time.monotonic() + plan.timeout)
    report = instance.report(time.process_time() - cpu0, finished)
    report.idle = idle_rate * (time.monotonic() - wall0)
    report.published -= before.published
    report.heartbeats -= before.heartbeats_sent
    print(json.dumps({"event": "report", **asdict(report)}), flush=True)
    sys.stdin.readline()  # "stop": every instance reported
    instance.stop()


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class OpCounter:
    """Counts what the loopback broker does: send calls, messages sent, deliveries, settles."""

    def __init__(self, state: Any) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        publish, lock, settle = state.publish, state.lock, state.settle

        def counted_publish(target: Any, messages: list[Any], now: float | None = None) -> None:
            self.counts["sends"] += 1
            self.counts["messages"] += len(messages)
            # Standard tier: one credit per filter evaluation (each subscription has one rule)
            self.counts["filter_evaluations"] += len(messages) * len(
                getattr(target, "subscriptions", ())
            )
            publish(target, messages, now)

        def counted_lock(*args: Any) -> Any:
            self.counts["deliveries"] += 1
            return lock(*args)

        def counted_settle(*args: Any, **kwargs: Any) -> Any:
            self.counts["settles"] += 1
            return settle(*args, **kwargs)

        state.publish, state.lock, state.settle = counted_publish, counted_lock, counted_settle

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


@contextlib.contextmanager
def loopback() -> Iterator[tuple[Any, OpCounter]]:
    from eventbroker.testing import LoopbackServiceBus

    bus = LoopbackServiceBus()
    counter = OpCounter(bus._state)
    bus.start()
    try:
        yield bus, counter
    finally:
        bus.stop()


def run_servicebus(plan: Plan, bus: Any, counter: OpCounter) -> Result:
    env = dict(
        os.environ,
        EVENTBROKER_SERVICEBUS_CONNECTION_STRING=bus.connection_string,
        EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT=bus.admin_endpoint,
        EVENTBROKER_SERVICEBUS_TOPIC=f"{TOPIC}-{uuid.uuid4().hex[:6]}",
    )
    plan_json = json.dumps(asdict(plan))
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.scale", "--child", role, str(index), plan_json],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index, role in enumerate(["job"] + ["web"] * plan.webs)
    ]
    try:
        for child in children:
            _read_event(child, "ready", 120)
        time.sleep(0.5)  # the hellos settle
        for child in children:
            _send(child, "idle")
        time.sleep(1.0)  # each instance measures its idle CPU
        ops0 = counter.snapshot()
        cpu0, wall0 = time.process_time(), time.time()
        t0 = wall0 + 0.2
        for child in children:
            _send(child, f"go {t0!r}")
        reports = [Report(**_read_event(child, "report", plan.timeout + 60)) for child in children]
        wall, cpu = time.time() - wall0, time.process_time() - cpu0
        ops1 = counter.snapshot()
        for child in children:
            _send(child, "stop")
        for child in children:
            child.wait(60)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    ops = {name: ops1.get(name, 0) - ops0.get(name, 0) for name in ops1}
    return Result(plan, "servicebus", reports, wall, cpu, ops=ops)


def _send(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdin is not None
    child.stdin.write(line + "\n")
    child.stdin.flush()


def _read_event(child: subprocess.Popen[str], name: str, timeout: float) -> dict[str, Any]:
    assert child.stdout is not None
    found: list[dict[str, Any]] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    event.pop("event")
                    found.append(event)
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        raise RuntimeError(f"an instance sent no {name!r} within {timeout:.0f}s")
    return found[0]


# ---------------------------------------------------------------------------- the results


@dataclass
class Result:
    plan: Plan
    transport: str
    reports: list[Report]
    wall: float  # seconds from the start until every instance finished
    parent_cpu: float  # this process's CPU (the hub farm, or the loopback broker)
    ops: dict[str, int] | None

    @property
    def webs(self) -> list[Report]:
        return [r for r in self.reports if r.role == "web"]

    def cpu_per_1000(self) -> float:
        """ms of CPU per 1,000 received notifications, per web instance (mean)."""
        if self.transport == "hub":  # one process: its CPU over every receipt
            received = sum(r.received for r in self.webs)
            return self.parent_cpu / max(received, 1) * 1e6
        return sum(r.cpu / max(r.received, 1) for r in self.webs) / len(self.webs) * 1e6

    def lag_ms(self, q: float) -> float | None:
        keys = {key for r in self.webs for key in r.lags}
        if not keys:
            return None
        last = sorted(max(r.lags.get(key, float("inf")) for r in self.webs) for key in keys)
        return last[min(len(last) - 1, int(q * len(last)))] * 1000

    def memory_kib(self) -> float:
        per = [
            sum(r.memory.get(k, 0) for k in ("dedup", "sequence", "presence")) for r in self.webs
        ]
        return sum(per) / len(per) / 1024

    def dedup_bytes_per_id(self) -> float:
        ids = sum(r.memory.get("dedup_ids", 0) for r in self.webs)
        return sum(r.memory.get("dedup", 0) for r in self.webs) / max(ids, 1)

    def envelopes_per_notification(self) -> float:
        return sum(r.published for r in self.reports) / max(self.plan.notifications(), 1)

    def _per_notification(self, *counts: str) -> float | None:
        if self.ops is None:
            return None
        return sum(self.ops.get(name, 0) for name in counts) / max(self.plan.notifications(), 1)

    def ops_per_notification(self) -> float | None:
        """Billed operations (pricing FAQ): each message sent, each delivery, each settle."""
        return self._per_notification("messages", "deliveries", "settles")

    def credits_per_notification(self) -> float | None:
        """Standard-tier throttling credits: messages sent, filter evaluations, deliveries."""
        return self._per_notification("messages", "filter_evaluations", "deliveries")

    def net_cpu_per_1000(self) -> float:
        """`cpu_per_1000` less what each instance spends idle (polling, timers)."""
        if self.transport == "hub":
            return self.cpu_per_1000()
        return (
            sum(max(r.cpu - r.idle, 0.0) / max(r.received, 1) for r in self.webs)
            / len(self.webs)
            * 1e6
        )

    def cores_used(self) -> float:
        if self.transport == "hub":
            return self.parent_cpu / self.wall
        return (sum(r.cpu for r in self.reports) + self.parent_cpu) / self.wall

    def fell_behind(self) -> bool:
        """The farm took much longer than the work was spread over, or its invalidations
        queued for more than a quarter of a second: it could not keep up."""
        lag = self.lag_ms(0.5)
        return self.wall > self.plan.duration * 1.5 + 0.5 or (lag is not None and lag > 250)

    def cpu_bound(self) -> bool:
        return self.fell_behind() or self.cores_used() >= 0.8 * (os.cpu_count() or 1)

    def finished(self) -> bool:
        return all(r.finished for r in self.reports)


def row(result: Result) -> str:
    plan = result.plan
    packed = "unpacked" if not plan.window else f"packed {plan.window * 1000:g} ms"
    p50, p99 = result.lag_ms(0.5), result.lag_ms(0.99)
    lag = "n/a" if p50 is None or p99 is None else f"{p50:7.1f} /{p99:7.1f}"
    ops, credits = result.ops_per_notification(), result.credits_per_notification()
    flags = []
    if result.cpu_bound():
        flags.append("CPU-bound")
    if not result.finished():
        flags.append("TIMED OUT")
    return (
        f"{result.transport:10} {plan.instances:3} {packed:15} {plan.expected():8} "
        f"{result.cpu_per_1000():9.1f} {result.net_cpu_per_1000():7.1f} {lag:>16} "
        f"{result.memory_kib():7.1f} {result.envelopes_per_notification():6.3f} "
        f"{'-' if ops is None else f'{ops:6.2f}':>6} "
        f"{'-' if credits is None else f'{credits:6.2f}':>6} "
        f"{result.cores_used():5.2f}  {' '.join(flags)}"
    )


HEADER = (
    f"{'transport':10} {'N':>3} {'backplane':15} {'recv/web':>8} {'CPU ms/1k':>9} {'net':>7} "
    f"{'lag p50/p99 ms':>16} {'mem KiB':>7} {'env/n':>6} {'ops/n':>6} {'cred/n':>6} "
    f"{'cores':>5}"
)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="2,4,8,16", help="instances per farm (job + web)")
    parser.add_argument("--transports", default="hub,servicebus")
    parser.add_argument("--keys", type=int, default=200, help="keys the job invalidates")
    parser.add_argument("--pack", type=int, default=20, help="keys per invalidate() call")
    parser.add_argument("--sets", type=int, default=20, help="sets per web instance")
    parser.add_argument(
        "--duration", type=float, default=2.0, help="seconds the work is spread over"
    )
    parser.add_argument(
        "--batch-keys", type=int, default=500, help="keys of the job-bursts-only run"
    )
    parser.add_argument("--batch", type=int, default=100, help="keys per call in that run")
    parser.add_argument(
        "--coalesce-window",
        type=float,
        default=0.002,
        help="seconds for the packed rows (EventBrokerBackplane(coalesce_window=...))",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    transports = args.transports.split(",")
    packing = coalescing_available()
    windows: list[float | None] = [0.0, args.coalesce_window] if packing else [None]
    print(f"bench.scale: {os.cpu_count()} cores (shared with other benchmarks: figures are noisy)")
    print(
        f"each farm: 1 job instance invalidating {args.keys} keys (packs of {args.pack}) and N-1 "
        f"web instances doing {args.sets} sets each, over {args.duration:g} s"
    )
    print(
        "columns: notifications received per web instance; CPU ms per 1,000 received per web "
        "instance (hub: the one process over all receipts), and net of the instance's idle CPU; "
        "invalidation lag, job send to the LAST web instance; receive state (dedup + sequence + "
        "presence) per web instance; envelopes sent per notification; Service Bus billed "
        "operations per notification (messages sent + deliveries + settles) and Standard-tier "
        "credits per notification (messages sent + filter evaluations + deliveries), heartbeats "
        "included; CPU cores in use; CPU-bound: the farm fell behind the offered rate (took "
        "over 1.5x the planned time, or lag p50 over 250 ms) or used >= 80% of the machine's "
        "cores"
    )
    print(HEADER)
    results: list[Result] = []
    bursts: list[Result] = []
    largest = max(sizes)
    with contextlib.ExitStack() as stack:
        bus: Any = None
        counter: OpCounter | None = None
        if "servicebus" in transports:
            bus, counter = stack.enter_context(loopback())

        def run(plan: Plan, transport: str) -> Result:
            if transport == "hub":
                return run_hub(plan)
            assert counter is not None
            return run_servicebus(plan, bus, counter)

        def not_available(transport: str, size: int) -> None:
            print(
                f"{transport:10} {size:3} {'packed':15} n/a (coalescing not available: "
                "EventBrokerBackplane takes no coalesce_window)"
            )

        for size in sizes:
            for transport in transports:
                for window in windows:
                    plan = Plan(size, args.keys, args.pack, args.sets, args.duration, window)
                    results.append(run(plan, transport))
                    print(row(results[-1]), flush=True)
                if not packing:
                    not_available(transport, size)
        print(
            f"job bursts only, N={largest}: {args.batch_keys} keys in invalidate() calls of "
            f"{args.batch} keys, no sets"
        )
        print(HEADER)
        for transport in transports:
            for window in windows:
                plan = Plan(largest, args.batch_keys, args.batch, 0, args.duration, window)
                bursts.append(run(plan, transport))
                print(row(bursts[-1]), flush=True)
            if not packing:
                not_available(transport, largest)
    print(
        "CPU-bound farms: their lag is queueing on this machine (every instance shares its 2 "
        "cores); CPU per notification, envelopes and operations per notification still hold"
    )
    most = max(results + bursts, key=lambda r: sum(w.memory.get("dedup_ids", 0) for w in r.webs))
    per_id = most.dedup_bytes_per_id()  # the run with the most ids: the set's fixed part shared
    print(
        f"receive state: the dedup window holds {per_id:.0f} bytes per remembered envelope id: "
        f"{per_id * 100_000 / 2**20:.1f} MiB per instance at the default dedup_capacity "
        "(100,000 ids, reached after that many received envelopes; packing divides the count); "
        "sequence and presence state grow with the number of instances, not messages"
    )
    apply = min(apply_cost_us() for _ in range(3))
    print(f"cache apply per key (L1 expire, no transport; best of 3): {apply:.1f} us")
    parts = []
    for result in bursts:
        mode = "unpacked" if not result.plan.window else "packed"
        raw, net = result.cpu_per_1000(), result.net_cpu_per_1000()  # ms per 1k == us each
        extra = f" ({net:.0f} us net of idle)" if result.transport != "hub" else ""
        parts.append(f"{result.transport} {mode} {raw:.0f} us{extra}")
    print(
        f"per-key receive CPU per web instance at the largest batch (N={largest}, "
        f"invalidate() calls of {args.batch} keys): " + ", ".join(parts)
    )


if __name__ == "__main__":
    main()
