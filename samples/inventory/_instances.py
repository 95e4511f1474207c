"""The instances of the site: a web instance (app + cache + broker) and the job instance, both
wired by the library's integration (`eventbroker.contrib.starlette`)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import uvicorn

from cache import CacheOptions, EntryOptions
from cache.eventbroker_backplane import EVENT_ID as BACKPLANE_EVENT_ID
from cache.eventbroker_backplane import PACK_ACTION, BackplaneWireMessage, decode_pack
from eventbroker import (
    EventBroker,
    EventBrokerOptions,
    EventReceivedEventArgs,
    EventRegistry,
    Transport,
)
from eventbroker.contrib.farm import FarmSettings
from eventbroker.contrib.starlette import AppServices, AppServicesArgs, EventBrokerLifespan
from jobs import CacheInvalidator, Interval, JobScheduler, ScheduledJob, SchedulerOptions

from ._db import InventoryDb
from ._import_job import InventoryImportJob
from ._settings import InventorySettings
from ._web import FARM_PATH, create_app

log = logging.getLogger(__name__)


@attrs.frozen
class Received:
    """A remote event as seen by a web instance's broker."""

    key: str
    action: str
    delay_ms: float
    source_instance_id: str


class ReceivedLog:
    """The backplane messages a web instance received, waitable by key and source."""

    def __init__(self) -> None:
        self._items: list[Received] = []
        self._cond = threading.Condition(threading.RLock())

    def add(self, received: Received) -> None:
        with self._cond:
            self._items.append(received)
            self._cond.notify_all()

    def received_from(self, source_instance_id: str) -> list[Received]:
        with self._cond:  # re-entrant use from wait_for is fine: Condition wraps an RLock
            return [r for r in self._items if r.source_instance_id == source_instance_id]

    def wait_received(
        self, key: str, source_instance_id: str, timeout: float = 10.0
    ) -> Received | None:
        """The first message for `key` from that instance (waiting up to `timeout`)."""

        def find() -> Received | None:
            return next(
                (
                    r
                    for r in self._items
                    if r.key == key and r.source_instance_id == source_instance_id
                ),
                None,
            )

        with self._cond:
            self._cond.wait_for(lambda: find() is not None, timeout)
            return find()

    def wait_count(
        self, source_instance_id: str, count: int, timeout: float = 10.0
    ) -> list[Received]:
        """The messages from that instance once there are `count` (or what came by `timeout`)."""
        with self._cond:
            self._cond.wait_for(
                lambda: len(self.received_from(source_instance_id)) >= count, timeout
            )
            return self.received_from(source_instance_id)


def _backplane_fields(param: Any) -> list[tuple[str, str]]:
    """(cache key, action) of each notification a backplane message param carries (a pack
    carries several), whatever shape it travels in."""
    if isinstance(param, BackplaneWireMessage) and param.action == PACK_ACTION:
        messages, _, _ = decode_pack(param)
        return [(m.cache_key, m.action.value) for m in messages]
    if isinstance(param, dict):
        key = param.get("cache_key", "?")
        action = param.get("action", "?")
    else:
        key = getattr(param, "cache_key", "?")
        action = getattr(param, "action", "?")
    return [(str(key), str(getattr(action, "value", action)))]


def _services_args(
    transport: Transport | None, settings: InventorySettings, environ: Mapping[str, str] | None
) -> AppServicesArgs:
    """What both instances give the integration: the broker's options, and the transport when
    one is given (the demo's in-memory hub); otherwise the settings choose it (Service Bus)."""
    if not settings.secret:
        raise ValueError("set EVENTBROKER_SECRET: every instance must share one secret")
    args: AppServicesArgs = {
        "broker_options": EventBrokerOptions(
            secret=settings.secret, application_name=settings.application_name
        ),
    }
    if environ is not None:
        args["environ"] = environ
    if transport is not None:
        args["transport"] = transport
    return args


class WebInstance:
    """One web instance: uvicorn serving the app, whose lifespan (the library's Starlette
    integration) runs its own broker and cache (with an EventBrokerBackplane)."""

    def __init__(
        self,
        name: str,
        transport: Transport | None,
        settings: InventorySettings,
        *,
        db: InventoryDb,
        feed_url: str,
        host: str = "127.0.0.1",
        port: int = 0,
        on_received: Callable[[Received], None] | None = None,
        on_started: Callable[[WebInstance], None] | None = None,
        environ: Mapping[str, str] | None = None,
        farm: FarmSettings | None = None,
    ) -> None:
        self.name = name
        self.received = ReceivedLog()
        self._on_received_hook = on_received
        self._on_started_hook = on_started
        args = _services_args(transport, settings, environ)
        args["caches"] = [CacheOptions(name=settings.application_name)]
        args["run_jobs"] = False  # web instances do not run the scheduler
        self.services = EventBrokerLifespan(**args)
        entry_options = EntryOptions(
            duration=settings.cache_seconds,
            is_fail_safe_enabled=True,
            factory_soft_timeout=2.0,
        )
        app = create_app(
            name=name,
            services=self.services,
            db=db,
            feed_url=feed_url,
            entry_options=entry_options,
            on_started=self._started,
            farm=farm if farm is not None else FarmSettings.from_env(environ),
        )
        self._socket = socket.create_server((host, port))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.farm_url = f"{self.url}{FARM_PATH}/"
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=f"uvicorn-{name}"
        )

    @property
    def broker(self) -> EventBroker:
        """This instance's broker (once the app started)."""
        if self.services.services is None:
            raise RuntimeError(f"web instance {self.name} has not started")
        return self.services.services.broker

    @property
    def instance_id(self) -> str:
        return self.broker.instance_id

    def _started(self, services: AppServices) -> None:
        services.broker.event_received.subscribe(self._on_received)
        if self._on_started_hook is not None:
            self._on_started_hook(self)

    def _on_received(self, args: EventReceivedEventArgs) -> None:
        if args.event_id != BACKPLANE_EVENT_ID:
            return
        delay_ms = (time.time() - args.sent_at) * 1000
        for key, action in _backplane_fields(args.param):
            received = Received(key, action, delay_ms, args.source_instance_id)
            self.received.add(received)
            if self._on_received_hook is not None:
                self._on_received_hook(received)

    def start(self) -> WebInstance:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"web instance {self.name} did not start on {self.url}")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until SIGTERM/SIGINT (the web role as its own process):
        uvicorn then runs the lifespan's shutdown, which stops the cache and the broker."""
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()

    def stop(self) -> None:
        """Stop uvicorn; its lifespan shutdown closes the cache and stops the broker."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(30)
        self._socket.close()


class JobInstance:
    """The background instance: the jobs role of the library's `AppServices` (a broker, no
    cache, the scheduler with the import job)."""

    def __init__(
        self,
        name: str,
        transport: Transport | None,
        settings: InventorySettings,
        *,
        db: InventoryDb,
        feed_url: str,
        jobs_store: str,
        scheduled: bool = False,
        chunk_pause: float = 0.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name

        def jobs(registry: EventRegistry) -> list[ScheduledJob]:
            # the import tells every web instance which keys changed, through this broker
            return [
                InventoryImportJob(
                    feed_url=feed_url,
                    db=db,
                    invalidator=CacheInvalidator.for_registry(registry),
                    schedule=Interval(settings.import_interval) if scheduled else None,
                    chunk_pause=chunk_pause,
                )
            ]

        args = _services_args(transport, settings, environ)
        args["caches"] = ()
        args["run_jobs"] = True  # the jobs role
        args["jobs"] = jobs
        args["jobs_store"] = jobs_store
        args["scheduler_options"] = SchedulerOptions(instance_id=name, poll_interval=0.2)
        self.services = AppServices.build(**args)
        self.broker = self.services.broker
        assert self.services.scheduler is not None
        self.scheduler: JobScheduler = self.services.scheduler
        self.job = self.scheduler.jobs[InventoryImportJob.id]

    def start(self) -> JobInstance:
        """Start the broker, then the scheduler."""
        self.services.start()
        return self

    def stop(self) -> None:
        """Stop the scheduler (a running import is asked to stop), then the broker."""
        self.services.stop()
