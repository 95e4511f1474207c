"""The site's roles as long-running processes: ``web``, ``job`` and ``feed``.

These are what a deployment runs (one ``web`` per App Service instance, one ``job`` instance);
instances talk through Azure Service Bus (`eventbroker.servicebus`), configured by the
``EVENTBROKER_SERVICEBUS_*`` variables or ``--connection-string``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

import attrs

from ._db import InventoryDb
from ._feed import InventoryFeed
from ._instances import JobInstance, WebInstance
from ._settings import InventorySettings

log = logging.getLogger(__name__)


class RoleError(Exception):
    """A role cannot start; the message says what to set."""


def servicebus_module() -> Any:
    """`eventbroker.servicebus`, or a `RoleError` saying it is missing."""
    try:
        return importlib.import_module("eventbroker.servicebus")
    except ImportError as exc:
        raise RoleError(
            "the Service Bus transport (eventbroker.servicebus) is not in this checkout yet; "
            "run the embedded demo instead: python -m samples.inventory"
        ) from exc


def servicebus_environ(connection_string: str | None) -> dict[str, str]:
    """The environment for a role: ``EVENTBROKER_SERVICEBUS_*`` (plus the connection string),
    checked so that the integration picks Service Bus and its settings are valid."""
    sb = servicebus_module()
    env = dict(os.environ)
    if connection_string:
        env["EVENTBROKER_SERVICEBUS_CONNECTION_STRING"] = connection_string
    try:
        sb.ServiceBusOptions.from_env(env)  # neither a connection string nor a namespace: error
    except (TypeError, ValueError) as exc:
        raise RoleError(f"Service Bus settings are invalid: {exc}") from exc
    return env


def _require(settings: InventorySettings) -> tuple[str, str]:
    if not settings.feed_url:
        raise RoleError("set INVENTORY_FEED_URL to the inventory system's base URL")
    if not settings.secret:
        raise RoleError("set EVENTBROKER_SECRET (the same value on every instance)")
    return settings.feed_url, settings.database_url or "inventory.sqlite3"


def report(event: str, **fields: object) -> None:
    """One JSON line on stdout for a parent process (the multi-process demo)."""
    print(json.dumps({"event": event, **fields}), flush=True)


def run_web(
    settings: InventorySettings,
    environ: Mapping[str, str],
    *,
    host: str = "0.0.0.0",
    reporting: bool = False,
) -> None:
    """Serve the web app on ``host:PORT`` until SIGTERM/SIGINT; the transport is the one the
    settings in `environ` choose (Service Bus)."""
    feed_url, database = _require(settings)

    def started(web: WebInstance) -> None:
        log.info("web instance %s on %s", web.name, web.url)
        if reporting:
            report("ready", name=web.name, url=web.url, instance_id=web.broker.instance_id)

    web = WebInstance(
        settings.instance_name,
        None,
        settings,
        db=InventoryDb(database),
        feed_url=feed_url,
        host=host,
        port=settings.port,
        on_received=(lambda r: report("received", **attrs.asdict(r))) if reporting else None,
        on_started=started,
        environ=environ,
    )
    web.serve_forever()


def run_job(
    settings: InventorySettings,
    environ: Mapping[str, str],
    *,
    scheduled: bool = True,
    reporting: bool = False,
    chunk_pause: float = 0.0,
) -> None:
    """Run the import every ``INVENTORY_IMPORT_INTERVAL`` seconds (and on request through the
    job store) until SIGTERM/SIGINT."""
    feed_url, database = _require(settings)
    job = JobInstance(
        settings.instance_name,
        None,
        settings,
        db=InventoryDb(database),
        feed_url=feed_url,
        jobs_store=settings.jobs_store,
        scheduled=scheduled,
        chunk_pause=chunk_pause,
        environ=environ,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if reporting:
        job.scheduler.on_progress(lambda p: report("progress", done=p.done, total=p.total))
        job.scheduler.on_finished(lambda run: report("finished", run_id=run.run_id))
    job.start()
    try:
        if reporting:
            report("ready", name=job.name, instance_id=job.broker.instance_id)
        stop.wait()
    finally:
        job.stop()


def run_feed(port: int) -> None:
    """Serve a demo inventory system on ``127.0.0.1:port`` until interrupted."""
    feed = InventoryFeed(port)
    print(f"inventory feed on {feed.url}", flush=True)
    feed.serve_forever()
