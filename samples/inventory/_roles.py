"""The site's roles as long-running processes: ``web``, ``job`` and ``feed``.

These are what a deployment runs (one ``web`` per App Service instance, one ``job`` instance);
instances talk through Azure Service Bus (`eventbroker.servicebus`), configured by the
``EVENTBROKER_SERVICEBUS_*`` variables or ``--connection-string``.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import threading
from typing import Any

import attrs

from eventbroker import Transport

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


def servicebus_transport(connection_string: str | None) -> Transport:
    """A Service Bus transport from ``EVENTBROKER_SERVICEBUS_*`` (and the connection string)."""
    sb = servicebus_module()
    overrides = {"connection_string": connection_string} if connection_string else {}
    try:
        options = sb.ServiceBusOptions.from_env(**overrides)
    except (TypeError, ValueError) as exc:
        raise RoleError(f"Service Bus settings are invalid: {exc}") from exc
    transport: Transport = sb.ServiceBusTransport(options)
    return transport


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
    transport: Transport,
    *,
    host: str = "0.0.0.0",
    reporting: bool = False,
) -> None:
    """Serve the web app on ``host:PORT`` until SIGTERM/SIGINT."""
    feed_url, database = _require(settings)
    web = WebInstance(
        settings.instance_name,
        transport,
        settings,
        db=InventoryDb(database),
        feed_url=feed_url,
        host=host,
        port=settings.port,
        on_received=(lambda r: report("received", **attrs.asdict(r))) if reporting else None,
    )
    log.info("web instance %s on %s", web.name, web.url)
    if reporting:
        report("ready", name=web.name, url=web.url, instance_id=web.broker.instance_id)
    web.serve_forever()


def run_job(
    settings: InventorySettings,
    transport: Transport,
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
        transport,
        settings,
        db=InventoryDb(database),
        feed_url=feed_url,
        jobs_store=settings.jobs_store,
        scheduled=scheduled,
        chunk_pause=chunk_pause,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if reporting:
        job.scheduler.on_progress(lambda p: report("progress", done=p.done, total=p.total))
        job.scheduler.on_finished(lambda run: report("finished", run_id=run.run_id))
        report("ready", name=job.name, instance_id=job.broker.instance_id)
    job.scheduler.start()
    try:
        stop.wait()
    finally:
        job.stop()


def run_feed(port: int) -> None:
    """Serve a demo inventory system on ``127.0.0.1:port`` until interrupted."""
    feed = InventoryFeed(port)
    print(f"inventory feed on {feed.url}", flush=True)
    feed.serve_forever()
