"""What the jobs layer costs, side by side with the bare path it wraps.

(1) Invalidation: a job instance expires N keys on two web instances (each a HybridCache on an
    EventBrokerBackplane, one in-memory hub). `CacheInvalidator.invalidate(keys)` against the
    original design's manual path (`backplane.publish(BackplaneMessage(..., source_id=...))` in
    a loop; the backplane packs what follows the first within its window) and against the
    invalidator with packs off. Time until both web brokers have received every notification.
(2) Runs per second of a trivial job through the scheduler (lease taken and released, history
    written) on SQLite and on PostgreSQL (127.0.0.1:5432, db test).

Run: python bench/jobs_invalidation.py [keys] [runs]
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

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
from jobs import CacheInvalidator, JobContext, JobScheduler, JobStore, ScheduledJob, SqliteJobStore

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def invalidation(n: int, manual: bool, packs: bool = True) -> float:
    hub = InMemoryHub()
    options = EventBrokerOptions(secret="bench-0123456789abcdef", application_name="bench")
    brokers = [EventBroker(InMemoryTransport(hub), options) for _ in range(3)]
    for b in brokers:
        b.start()
    job_broker, webs = brokers[0], brokers[1:]
    caches = []
    done = threading.Semaphore(0)
    for broker in webs:
        cache = HybridCache(
            CacheOptions(name="bench"),
            backplane=EventBrokerBackplane(EventRegistry(broker), broker),
        )
        caches.append(cache)
        count = [0]

        def seen(args: EventReceivedEventArgs, count: list[int] = count) -> None:
            items = args.param.items  # a pack carries several notifications
            count[0] += len(items) // 3 if items else 1
            if count[0] == n:
                done.release()

        broker.event_received.subscribe(seen)
    keys = [f"product:{i}" for i in range(n)]
    registry = EventRegistry(job_broker)
    start = time.perf_counter()
    if manual:  # the original design: a cache on the job instance, source id by hand
        job_cache = HybridCache(CacheOptions(name="bench"))
        backplane = EventBrokerBackplane(registry, job_broker)
        for key in keys:
            message = BackplaneMessage(
                cache_key=key,
                action=BackplaneMessageAction.ENTRY_EXPIRE,
                source_id=job_cache.instance_id,
            )
            backplane.publish(message, EntryOptions())
    elif packs:
        CacheInvalidator.for_registry(registry).invalidate(keys)
    else:
        unpacked = EventBrokerBackplane(registry, job_broker, coalesce_window=0)
        CacheInvalidator(unpacked).invalidate(keys)
    for _ in webs:
        done.acquire()
    elapsed = time.perf_counter() - start
    for cache in caches:
        cache.close()
    for b in brokers:
        b.stop()
    return elapsed


class Noop(ScheduledJob):
    id = uuid.UUID("0b0b0b0b-0000-4000-8000-000000000001")

    def execute(self, ctx: JobContext) -> str:
        return "ok"


def runs_per_second(store: JobStore, runs: int) -> float:
    scheduler = JobScheduler([Noop()], store=store)
    start = time.perf_counter()
    for _ in range(runs):
        scheduler.run_now(Noop.id)
        scheduler.run_pending()
    elapsed = time.perf_counter() - start
    scheduler.stop()
    return runs / elapsed


def best(fn: Callable[[], float], repeat: int = 3) -> float:
    return min(fn() for _ in range(repeat))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    helper = best(lambda: invalidation(n, manual=False))
    unpacked = best(lambda: invalidation(n, manual=False, packs=False))
    manual = best(lambda: invalidation(n, manual=True))
    print(f"invalidate {n} keys to 2 web instances (in-memory hub):")
    print(f"  CacheInvalidator        {helper * 1000:8.1f} ms  ({n / helper:8.0f} keys/s)")
    print(f"  ... with packs off      {unpacked * 1000:8.1f} ms  ({n / unpacked:8.0f} keys/s)")
    print(f"  manual backplane loop   {manual * 1000:8.1f} ms  ({n / manual:8.0f} keys/s)")
    print(f"  ratio helper/manual     {helper / manual:8.2f}")
    print(f"  ratio helper/unpacked   {helper / unpacked:8.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = runs_per_second(SqliteJobStore(Path(tmp) / "jobs.sqlite3"), runs)
    from jobs import PostgresJobStore

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    pg_store = PostgresJobStore(PG_URL, schema=schema)
    try:
        postgres = runs_per_second(pg_store, runs)
    finally:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    print(f"scheduled runs of a no-op job ({runs}; lease + history per run):")
    print(f"  SQLite store            {sqlite:8.0f} runs/s")
    print(f"  PostgreSQL store        {postgres:8.0f} runs/s")
    print(f"  ratio SQLite/PostgreSQL {sqlite / postgres:8.2f}")


if __name__ == "__main__":
    main()
