"""The one-command demo: two web instances and a job instance share one in-memory hub.

Prints a short timeline; returns 0 only if every check held.
"""

from __future__ import annotations

import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

import attrs
import httpx

from eventbroker import InMemoryHub, InMemoryTransport
from eventbroker.contrib.farm import FarmSettings
from jobs import JobOutcome, JobProgress, JobRun

from ._db import InventoryDb
from ._feed import PRODUCTS, InventoryFeed, stock_level
from ._instances import JobInstance, ReceivedLog, WebInstance
from ._keys import product_key
from ._settings import InventorySettings
from ._web import FARM_PATH

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

    def verdict(self) -> int:
        """Print the summary; 0 only if every check held."""
        if self.failed or not self.passed:
            self.step(f"{len(self.failed)} check(s) FAILED: " + "; ".join(self.failed))
            return 1
        self.step(f"All {self.passed} checks held.")
        return 0

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


def read_product(client: httpx.Client, web: WebHandle, sku: str) -> Read:
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


def read_everywhere(
    t: Timeline, client: httpx.Client, webs: list[WebHandle], stock: int, *, fresh: bool, says: str
) -> None:
    """Read the demo product through every web instance and check stock and freshness."""
    for web in webs:
        read = read_product(client, web, DEMO_SKU)
        show_read(t, read)
        t.check(
            read.status == 200 and read.stock == stock and read.fresh is fresh,
            f"{web.name} {says.format(stock=stock)}",
        )


class WebHandle(Protocol):
    """A web instance as the story sees it (in this process or another one)."""

    name: str
    url: str
    received: ReceivedLog
    """The backplane messages it received."""

    @property
    def instance_id(self) -> str:
        """Its broker's instance id."""
        ...


class JobHandle(Protocol):
    """The job instance as the story sees it."""

    name: str
    instance_id: str
    """Its broker's instance id (the source of its invalidations)."""

    def run(self, timeout: float = 30.0) -> JobRun | None:
        """Run the import now; its record once it ended (None: it did not end in time)."""
        ...

    def history(self) -> list[JobRun]: ...


class LocalJob:
    """A `JobInstance` in this process: runs the import now and waits for its end."""

    def __init__(self, job: JobInstance, on_progress: Callable[[JobProgress], None]) -> None:
        self.job = job
        self.name = job.name
        self.instance_id = job.broker.instance_id
        self._done = threading.Event()
        self._last: JobRun | None = None
        job.scheduler.on_finished(self._finished)
        job.scheduler.on_progress(on_progress)

    def _finished(self, run: JobRun) -> None:
        self._last = run
        self._done.set()

    def run(self, timeout: float = 30.0) -> JobRun | None:
        self._done.clear()
        self.job.scheduler.run_now(self.job.job.id)
        return self._last if self._done.wait(timeout) else None

    def history(self) -> list[JobRun]:
        return self.job.scheduler.history(self.job.job.id)


def demo_settings(settings: InventorySettings) -> InventorySettings:
    """The demo's settings: a random shared secret unless one is set, short cache entries."""
    return attrs.evolve(
        settings,
        secret=settings.secret or secrets.token_hex(16),
        cache_seconds=DEMO_CACHE_SECONDS,
    )


def demo_farm() -> FarmSettings:
    """The farm view's settings: ``EVENTBROKER_FARM_*``, with a random token unless one is set."""
    farm = FarmSettings.from_env()
    return farm if farm.token else attrs.evolve(farm, token=secrets.token_urlsafe(24))


def farm_address(web: WebHandle, token: str) -> str:
    """The farm view of `web`, with the token that lets a browser in."""
    return f"{web.url}{FARM_PATH}/?token={token}"


def run_demo(settings: InventorySettings, out: TextIO = sys.stdout, *, serve: bool = False) -> int:
    """The embedded demo: everything in this process on one in-memory hub. With `serve`, the
    instances keep serving after the story (the farm view shows them) until Ctrl-C or SIGTERM."""
    t = Timeline(out)
    settings = demo_settings(settings)
    farm = demo_farm()
    token = farm.token or ""
    t.step("Setting up (one process: in-memory hub, SQLite in a temp dir, no services)")
    hub = InMemoryHub()
    webs: list[WebInstance] = []
    job: JobInstance | None = None
    with tempfile.TemporaryDirectory(prefix="inventory-demo-") as tmp, InventoryFeed() as feed:
        db = InventoryDb(settings.database_url or str(Path(tmp) / "inventory.sqlite3"))
        t.say(f"inventory system (external) on {feed.url}, stock generation 1")
        t.say(f"database: {'PostgreSQL (DATABASE_URL)' if db.is_postgres else 'SQLite'}")

        def start_webs() -> list[WebHandle]:
            for name in ("web-1", "web-2"):
                web = WebInstance(
                    name, InMemoryTransport(hub), settings, db=db, feed_url=feed.url, farm=farm
                )
                webs.append(web.start())
                t.say(f"{name} serving on {web.url} (own EventBroker + HybridCache)")
            t.say(f"farm view: {farm_address(webs[0], token)}")
            return list(webs)

        try:
            job = JobInstance(
                "job-1",
                InMemoryTransport(hub),
                settings,
                db=db,
                feed_url=feed.url,
                jobs_store=str(Path(tmp) / "jobs.sqlite3"),
                chunk_pause=0.15,
            ).start()
            run_story(t, feed, LocalJob(job, t.progress), start_webs, settings.cache_seconds, token)
            if serve:
                feed.failing = False
                serve_until_stopped(t, webs, job.broker.instance_id, token)
        finally:
            for web in webs:
                web.stop()
            if job is not None:
                job.stop()
    return t.verdict()


def serve_until_stopped(
    t: Timeline, webs: list[WebInstance], job_instance_id: str, token: str
) -> None:
    """Keep the instances up until Ctrl-C or SIGTERM, saying where the farm view is."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        t.step("Serving until Ctrl-C (the inventory system is back up)")
        for web in webs:
            t.say(f"{web.name}: {web.url}/products/SKU-001 (instance {web.instance_id})")
        t.say(f"job-1: instance {job_instance_id}")
        t.say(f"farm view: {farm_address(webs[0], token)}")
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_story(
    t: Timeline,
    feed: InventoryFeed,
    job: JobHandle,
    start_webs: Callable[[], list[WebHandle]],
    cache_seconds: float,
    farm_token: str | None = None,
) -> None:
    """The timeline: the same steps whatever runs the instances (and, with the farm view's
    token, a look at the farm view)."""
    with httpx.Client(timeout=10) as client:
        first = job.run()
        t.check(
            first is not None and first.outcome is JobOutcome.SUCCEEDED,
            f"initial import: {first.status_message if first else 'did not finish'}",
        )
        webs = start_webs()
        t.say(f"{job.name} runs the scheduler, cache entries last {cache_seconds:g}s")
        _steps(t, feed, job, webs, client, cache_seconds)
        if farm_token:
            _farm_step(t, job, webs, client, farm_token)


def _farm_step(
    t: Timeline, job: JobHandle, webs: list[WebHandle], client: httpx.Client, token: str
) -> None:
    web = webs[0]
    t.step(f"6. The farm view of {web.name} shows the whole farm")
    expected = {w.name: w.instance_id for w in webs} | {job.name: job.instance_id}
    url = f"{web.url}{FARM_PATH}/"
    shown: set[str] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = client.get(url, headers={"Authorization": f"Bearer {token}"})
        shown = {n for n, i in expected.items() if f'data-instance="{i}"' in response.text}
        if response.status_code == 200 and len(shown) == len(expected):
            break
        time.sleep(0.2)
    t.say(f"  {url}: lists {', '.join(sorted(shown)) or 'nothing'}")
    t.check(shown == set(expected), f"the farm view lists {', '.join(sorted(expected))}")


def _steps(
    t: Timeline,
    feed: InventoryFeed,
    job: JobHandle,
    webs: list[WebHandle],
    client: httpx.Client,
    cache_seconds: float,
) -> None:
    t.step("1. Read a product through both web instances")
    old = stock_level(0, 1)
    read_everywhere(t, client, webs, old, fresh=True, says="serves stock {stock} (fresh)")

    t.step(f"2. The inventory system's stock levels change; {job.name} runs the import")
    feed.generation = 2
    new = stock_level(0, 2)
    run = job.run()
    t.check(
        run is not None and run.outcome is JobOutcome.SUCCEEDED,
        f"import: {run.status_message if run else 'did not finish'}",
    )
    if run is not None:
        t.say(f"  run {run.run_id[:8]} on {run.instance_id}, {(run.duration or 0) * 1000:.0f} ms")

    t.step("3. Each web instance receives the invalidation")
    key = product_key(DEMO_SKU)
    expected = 1 + sum(1 for i in range(len(PRODUCTS)) if stock_level(i, 1) != stock_level(i, 2))
    for web in webs:
        got = web.received.wait_received(key, job.instance_id)
        everything = web.received.wait_count(job.instance_id, expected)
        if got is not None:
            slowest = max(r.delay_ms for r in everything)
            t.say(
                f"  {web.name} got {got.action} {got.key} from {job.name} {got.delay_ms:.1f} ms "
                f"after it was sent; all {len(everything)} keys within {slowest:.1f} ms"
            )
        t.check(got is not None, f"{web.name} received the invalidation of {key}")
        t.check(
            len(everything) == expected,
            f"{web.name} received all {expected} keys (changed products + the list)",
        )

    t.step("4. Read again: new stock on both instances")
    read_everywhere(t, client, webs, new, fresh=True, says="serves the new stock {stock} (fresh)")

    t.step("5. The inventory system goes down")
    feed.failing = True
    failed = job.run()
    t.check(
        failed is not None and failed.outcome is JobOutcome.FAILED,
        f"import fails cleanly: {failed.status_message if failed else 'did not finish'}",
    )
    wait = cache_seconds + 0.2
    t.say(f"  waiting {wait:.1f}s for the cached entries to expire ...")
    time.sleep(wait)
    read_everywhere(
        t,
        client,
        webs,
        new,
        fresh=False,
        says="stays up with the last good value {stock} (marked stale)",
    )

    t.step("Job history (newest first)")
    for h in job.history():
        duration = f"{(h.duration or 0) * 1000:5.0f} ms"
        t.say(
            f"  {time.strftime('%H:%M:%S', time.localtime(h.started_at))} {duration} "
            f"{h.outcome.value:<9} {h.instance_id}: {h.status_message[:70]}"
        )
