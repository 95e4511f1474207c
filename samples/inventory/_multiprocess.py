"""The demo over Azure Service Bus: the web and job instances as separate OS processes.

The parent runs the inventory system (feed) and the timeline; it starts
``python -m samples.inventory web --report`` twice and ``job --report --manual`` once. The
children talk to each other only through Service Bus (a real namespace, or the loopback broker
the parent starts when no connection string is given) and share the SQLite database and job
store files. The parent asks for an import through the job store (as any instance of the farm
could) and follows the children through the JSON lines they print.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TextIO

from jobs import JobProgress, JobRun, JobTrigger, SqliteJobStore

from ._demo import (
    JobHandle,
    Timeline,
    WebHandle,
    demo_farm,
    demo_settings,
    farm_address,
    run_story,
)
from ._feed import InventoryFeed
from ._import_job import InventoryImportJob
from ._instances import Received, ReceivedLog
from ._roles import RoleError, servicebus_module
from ._settings import InventorySettings

_ROOT = Path(__file__).resolve().parent.parent.parent
TOPIC = "inventory-demo"


class Child:
    """One role in its own process; its JSON lines go to `on_event`, its log to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[str] = self.log_path.open("w")
        self._ready = threading.Event()
        self.ready: dict[str, Any] = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "samples.inventory", *args],
            env=env,
            cwd=_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def on_event(self, event: dict[str, Any]) -> None:
        """Handle one JSON line (subclasses)."""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "ready":
                self.ready = event
                self._ready.set()
            else:
                self.on_event(event)

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self._ready.wait(timeout):
            raise RoleError(
                f"{self.name} did not start within {timeout:.0f}s (exit status "
                f"{self.proc.poll()}); its log:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class RemoteWeb(Child):
    """A web instance in another process (a `WebHandle`)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(name, ["web", "--report", "--host", "127.0.0.1"], env, log_dir)
        self.received = ReceivedLog()
        self.url = ""
        self.instance_id = ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        super().wait_ready(timeout)
        self.url = str(self.ready["url"])
        self.instance_id = str(self.ready["instance_id"])

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "received":
            fields = {k: event[k] for k in ("key", "action", "delay_ms", "source_instance_id")}
            self.received.add(Received(**fields))


class RemoteJob(Child):
    """The job instance in another process (a `JobHandle`): runs are requested in the store."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        log_dir: Path,
        store: SqliteJobStore,
        on_progress: Callable[[JobProgress], None],
    ) -> None:
        super().__init__(
            name, ["job", "--report", "--manual", "--chunk-pause", "0.15"], env, log_dir
        )
        self.store = store
        self.instance_id = ""
        self._on_progress = on_progress
        self._finished = threading.Event()

    def wait_ready(self, timeout: float = 60.0) -> None:
        super().wait_ready(timeout)
        self.instance_id = str(self.ready["instance_id"])

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "progress":
            self._on_progress(
                JobProgress(
                    job_id=InventoryImportJob.id,
                    run_id="",
                    instance_id=self.name,
                    status="",
                    done=event.get("done"),
                    total=event.get("total"),
                )
            )
        elif event.get("event") == "finished":
            self._finished.set()

    def run(self, timeout: float = 30.0) -> JobRun | None:
        self._finished.clear()
        self.store.request_run(InventoryImportJob.id, JobTrigger.MANUAL)
        if not self._finished.wait(timeout):
            return None
        return self.history()[0]

    def history(self) -> list[JobRun]:
        return self.store.history(InventoryImportJob.id)


def _loopback() -> Any:
    try:
        testing = importlib.import_module("eventbroker.testing")
    except ImportError as exc:
        raise RoleError(
            "no --connection-string given and the loopback Service Bus broker "
            "(eventbroker.testing, the 'loopback' extra) is not available"
        ) from exc
    bus = testing.LoopbackServiceBus()
    bus.start()
    return bus


def run_servicebus_demo(
    settings: InventorySettings, connection_string: str | None, out: TextIO = sys.stdout
) -> int:
    """The demo as separate OS processes over Service Bus; 0 only if every check held."""
    servicebus_module()  # RoleError naming what is missing, before anything starts
    t = Timeline(out)
    settings = demo_settings(settings)
    token = demo_farm().token or ""
    env = dict(os.environ)
    bus = None
    connection_string = connection_string or env.get("EVENTBROKER_SERVICEBUS_CONNECTION_STRING")
    if not connection_string and not env.get("EVENTBROKER_SERVICEBUS_FULLY_QUALIFIED_NAMESPACE"):
        bus = _loopback()
        connection_string = bus.connection_string
        env["EVENTBROKER_SERVICEBUS_ADMINISTRATION_ENDPOINT"] = bus.admin_endpoint
    if connection_string:
        env["EVENTBROKER_SERVICEBUS_CONNECTION_STRING"] = connection_string
    env.setdefault("EVENTBROKER_SERVICEBUS_TOPIC", TOPIC)
    children: list[Child] = []
    try:
        t.step("Setting up (separate OS processes over Azure Service Bus)")
        where = "the loopback broker" if bus is not None else "the given namespace"
        t.say(f"Service Bus: {where}, topic {env['EVENTBROKER_SERVICEBUS_TOPIC']}")
        with tempfile.TemporaryDirectory(prefix="inventory-demo-") as tmp, InventoryFeed() as feed:
            tmp_path = Path(tmp)
            jobs_store = str(tmp_path / "jobs.sqlite3")
            env.update(
                DATABASE_URL=settings.database_url or str(tmp_path / "inventory.sqlite3"),
                JOBS_STORE=jobs_store,
                INVENTORY_FEED_URL=feed.url,
                EVENTBROKER_SECRET=settings.secret or "",
                INVENTORY_CACHE_SECONDS=str(settings.cache_seconds),
                EVENTBROKER_FARM_TOKEN=token,
                PORT="0",
                PYTHONPATH=os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")])),
            )
            t.say(f"inventory system (external) on {feed.url}, stock generation 1")
            store = SqliteJobStore(jobs_store)
            job = RemoteJob(
                "job-1", {**env, "INVENTORY_INSTANCE_NAME": "job-1"}, tmp_path, store, t.progress
            )
            children.append(job)
            job.wait_ready()
            t.say(f"job-1 started (pid {job.proc.pid})")

            def start_webs() -> list[WebHandle]:
                webs = [
                    RemoteWeb(name, {**env, "INVENTORY_INSTANCE_NAME": name}, tmp_path)
                    for name in ("web-1", "web-2")
                ]
                children.extend(webs)
                for web in webs:
                    web.wait_ready()
                    t.say(f"{web.name} serving on {web.url} (pid {web.proc.pid})")
                t.say(f"farm view: {farm_address(webs[0], token)}")
                return list(webs)

            handle: JobHandle = job
            run_story(t, feed, handle, start_webs, settings.cache_seconds, token)
            t.step("Stopping the instances (SIGTERM, as App Service and containers do)")
            for child in children:
                child.stop()
                # uvicorn re-raises SIGTERM once its shutdown (the lifespan's) is complete
                status = child.proc.returncode
                t.check(
                    status in (0, -signal.SIGTERM),
                    f"{child.name} stopped cleanly (exit status {status})",
                )
            if bus is not None:
                left = bus.subscription_names(env["EVENTBROKER_SERVICEBUS_TOPIC"])
                t.check(not left, f"no subscription left on the topic ({len(left)} left)")
            store.close()
    except RoleError as exc:
        t.check(False, str(exc))
    finally:
        for child in children:
            child.stop()
        if bus is not None:
            bus.stop()
    return t.verdict()
