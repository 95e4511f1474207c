"""The one-command demo: two web instances and a job instance share one in-memory hub.

Prints a short timeline; returns 0 only if every check held.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import attrs
import httpx

from eventbroker import InMemoryHub, InMemoryTransport
from jobs import JobOutcome, JobProgress, JobRun

from ._db import InventoryDb
from ._feed import PRODUCTS, InventoryFeed, stock_level
from ._instances import JobInstance, WebInstance
from ._keys import product_key
from ._settings import InventorySettings

DEMO_SKU = PRODUCTS[0][0]
DEMO_CACHE_SECONDS = 2.0


class Timeline:
    """Prints ``[+1.234s] text`` lines and keeps score of the checks."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.failed: list[str] = []
        self.passed = 0
        self._progress_open = False

    def _stamp(self) -> str:
        return f"[+{time.monotonic() - self.t0:6.3f}s]"

    def say(self, text: str) -> None:
        self._end_progress()
        print(f"{self._stamp()} {text}", file=self.out, flush=True)

    def step(self, text: str) -> None:
        self._end_progress()
        print(f"\n{self._stamp()} == {text}", file=self.out, flush=True)

    def check(self, ok: bool, text: str) -> bool:
        self.say(f"  {'ok  ' if ok else 'FAIL'} {text}")
        if ok:
            self.passed += 1
        else:
            self.failed.append(text)
        return ok

    def progress(self, p: JobProgress) -> None:
        if p.total is None or p.done is None:
            return
        width = 24
        filled = width * p.done // max(p.total, 1)
        bar = f"  import [{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total} rows"
        if self.out.isatty():
            print(f"\r{self._stamp()} {bar}", end="", file=self.out, flush=True)
            self._progress_open = True
        else:
            print(f"{self._stamp()} {bar}", file=self.out, flush=True)

    def _end_progress(self) -> None:
        if self._progress_open:
            print(file=self.out)
            self._progress_open = False


@attrs.frozen
class Read:
    instance: str
    status: int
    stock: int | None
    fresh: bool | None
    loaded_by: str | None


def read_product(client: httpx.Client, web: WebInstance, sku: str) -> Read:
    response = client.get(f"{web.url}/products/{sku}")
    body: dict[str, Any] = response.json()
    return Read(
        instance=body.get("instance", web.name),
        status=response.status_code,
        stock=body.get("stock"),
        fresh=body.get("fresh"),
        loaded_by=body.get("loaded_by"),
    )


def show_read(t: Timeline, read: Read) -> None:
    state = "fresh" if read.fresh else "STALE (fail-safe: last good value)"
    t.say(
        f"  GET /products/{DEMO_SKU} via {read.instance}: HTTP {read.status}, stock {read.stock}, "
        f"{state}"
    )


class JobWaiter:
    """Runs the import now and waits for its end (the scheduler runs it on its own thread)."""

    def __init__(self, job: JobInstance) -> None:
        self.job = job
        self._done = threading.Event()
        self._last: JobRun | None = None
        job.scheduler.on_finished(self._finished)

    def _finished(self, run: JobRun) -> None:
        self._last = run
        self._done.set()

    def run(self, timeout: float = 30.0) -> JobRun | None:
        self._done.clear()
        self.job.scheduler.run_now(self.job.job.id)
        return self._last if self._done.wait(timeout) else None


def run_demo(settings: InventorySettings, out: TextIO = sys.stdout) -> int:
    t = Timeline(out)
    settings = attrs.evolve(
        settings,
        secret=settings.secret or secrets.token_hex(16),
        cache_seconds=DEMO_CACHE_SECONDS,
    )
    with tempfile.TemporaryDirectory(prefix="inventory-demo-") as tmp:
        return _run(t, settings, Path(tmp))


def _run(t: Timeline, settings: InventorySettings, tmp: Path) -> int:
    t.step("Setting up (one process: in-memory hub, SQLite in a temp dir, no services)")
    feed = InventoryFeed().start()
    db_target = settings.database_url or str(tmp / "inventory.sqlite3")
    db = InventoryDb(db_target)
    t.say(f"inventory system (external) on {feed.url}, stock generation 1")
    t.say(f"database: {'PostgreSQL (DATABASE_URL)' if db.is_postgres else 'SQLite'}")
    hub = InMemoryHub()
    webs: list[WebInstance] = []
    job: JobInstance | None = None
    client = httpx.Client(timeout=10)
    try:
        job = JobInstance(
            "job-1",
            InMemoryTransport(hub),
            settings,
            db=db,
            feed_url=feed.url,
            jobs_store=str(tmp / "jobs.sqlite3"),
            chunk_pause=0.15,
        )
        waiter = JobWaiter(job)
        job.scheduler.on_progress(t.progress)
        job.scheduler.start()
        first = waiter.run()
        t.check(
            first is not None and first.outcome is JobOutcome.SUCCEEDED,
            f"initial import: {first.status_message if first else 'did not finish'}",
        )
        for name in ("web-1", "web-2"):
            web = WebInstance(name, InMemoryTransport(hub), settings, db=db, feed_url=feed.url)
            webs.append(web.start())
            t.say(f"{name} serving on {web.url} (own EventBroker + HybridCache)")
        t.say(
            f"job-1 runs the scheduler (job store: SQLite), cache entries last {settings.cache_seconds:g}s"
        )

        t.step("1. Read a product through both web instances")
        old = stock_level(0, 1)
        for web in webs:
            read = read_product(client, web, DEMO_SKU)
            show_read(t, read)
            t.check(
                read.status == 200 and read.stock == old and read.fresh is True,
                f"{web.name} serves stock {old} (fresh)",
            )

        t.step("2. The inventory system's stock levels change; job-1 runs the import")
        feed.generation = 2
        new = stock_level(0, 2)
        run = waiter.run()
        t.check(
            run is not None and run.outcome is JobOutcome.SUCCEEDED,
            f"import: {run.status_message if run else 'did not finish'}",
        )
        if run is not None:
            t.say(
                f"  run {run.run_id[:8]} on {run.instance_id}, {(run.duration or 0) * 1000:.0f} ms"
            )

        t.step("3. Each web instance receives the invalidation")
        key = product_key(DEMO_SKU)
        source = job.broker.instance_id
        for web in webs:
            got = web.wait_received(key, source)
            if got is not None:
                t.say(
                    f"  {web.name} got {got.action} {got.key} from job-1 {got.delay_ms:.1f} ms "
                    f"after it was sent ({len(web.received_from(source))} keys in all)"
                )
            t.check(got is not None, f"{web.name} received the invalidation of {key}")

        t.step("4. Read again: new stock on both instances")
        for web in webs:
            read = read_product(client, web, DEMO_SKU)
            show_read(t, read)
            t.check(
                read.status == 200 and read.stock == new and read.fresh is True,
                f"{web.name} serves the new stock {new} (fresh)",
            )

        t.step("5. The inventory system goes down")
        feed.failing = True
        failed = waiter.run()
        t.check(
            failed is not None and failed.outcome is JobOutcome.FAILED,
            f"import fails cleanly: {failed.status_message if failed else 'did not finish'}",
        )
        wait = settings.cache_seconds + 0.2
        t.say(f"  waiting {wait:.1f}s for the cached entries to expire ...")
        time.sleep(wait)
        for web in webs:
            read = read_product(client, web, DEMO_SKU)
            show_read(t, read)
            t.check(
                read.status == 200 and read.stock == new and read.fresh is False,
                f"{web.name} stays up with the last good value {new} (marked stale)",
            )

        t.step("Job history (newest first)")
        for h in job.scheduler.history(job.job.id):
            duration = f"{(h.duration or 0) * 1000:5.0f} ms"
            t.say(
                f"  {time.strftime('%H:%M:%S', time.localtime(h.started_at))} {duration} "
                f"{h.outcome.value:<9} {h.instance_id}: {h.status_message[:70]}"
            )
    finally:
        client.close()
        for web in webs:
            web.stop()
        if job is not None:
            job.stop()
        feed.stop()

    if t.failed:
        t.step(f"{len(t.failed)} check(s) FAILED: " + "; ".join(t.failed))
        return 1
    t.step(f"All {t.passed} checks held.")
    return 0
