"""Flights: stampede protection. One in-progress load per key, a `concurrent.futures.Future`
in a dict guarded by a lock (taken only on a miss). The first caller leads (runs the load);
every later caller of the same key, sync thread or async task, waits for the leader's result."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Retry:
    """The leader was cancelled (or an eager refresh failed): followers try again (one of them
    leads)."""


RETRY = Retry()


class Flight:
    """One in-progress load of a key, shared by every caller of that key."""

    __slots__ = ("future", "loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        """The outcome, for followers on any thread or loop."""
        self.loop = loop
        """The async leader's loop (None for a sync leader)."""
        self.waiter: asyncio.Future[None] | None = None
        """A cheap wake-up for followers on the leader's own loop (made by the first of them)."""

    async def wait(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The leader's value (or error) for an async follower on `loop`."""
        if not self.future.done():
            if self.loop is loop:
                if self.waiter is None:
                    self.waiter = loop.create_future()
                # shield: a cancelled follower must not cancel the shared flight
                await asyncio.shield(self.waiter)
            else:
                await asyncio.shield(asyncio.wrap_future(self.future))
        return self.future.result()

    def follow_sync(self, key: str) -> Any:
        """The leader's value (or error) for a sync follower."""
        if self.loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self.loop:
                raise RuntimeError(
                    f"get_or_set({key!r}) was called from inside the event loop while "
                    "get_or_set_async loads the same key on it: this would deadlock; "
                    "use get_or_set_async in async code"
                )
        return self.future.result()


class Flights:
    """The flights of one cache, by key."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._lock = threading.Lock()
        self._running: dict[str, tuple[concurrent.futures.Future[Any], Any]] = {}
        """Timed-out factory calls still running in the background, by key: stampede
        protection outlives the flight that started them."""

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: str, loop: asyncio.AbstractEventLoop | None) -> tuple[Flight, bool]:
        """The key's flight, and whether the caller leads it (it did not exist)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight(loop)
            return flight, True

    def keep_running(self, key: str, call: concurrent.futures.Future[Any], context: Any) -> None:
        """`call` (a timed-out factory, with its factory context) runs on for `key` until it
        is claimed."""
        with self._lock:
            self._running[key] = (call, context)

    def running(self, key: str) -> tuple[concurrent.futures.Future[Any], Any] | None:
        """The factory call still running in the background for `key` and its context."""
        return self._running.get(key)

    def claim(self, key: str, call: concurrent.futures.Future[Any]) -> bool:
        """Forget `call` as the key's running call; True for the one caller that does it (and
        so stores its value)."""
        with self._lock:
            running = self._running.get(key)
            if running is None or running[0] is not call:
                return False
            del self._running[key]
            return True

    def land(
        self, key: str, flight: Flight, error: BaseException | None, value: Any = None
    ) -> None:
        """End the flight: followers get the value, the error, or (leader cancelled) a retry."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        if error is None:
            flight.future.set_result(value)
        elif isinstance(error, Exception):
            flight.future.set_exception(error)
        else:
            flight.future.set_result(RETRY)
        if flight.waiter is not None:  # async leader: we are on its loop
            flight.waiter.set_result(None)

    def lead_sync(self, key: str, flight: Flight, run: Callable[[], T]) -> T:
        """Run the load as the flight's leader and land the flight with its result."""
        try:
            value = run()
        except BaseException as exc:
            self.land(key, flight, exc)
            raise
        self.land(key, flight, None, value)
        return value

    async def lead_async(self, key: str, flight: Flight, run: Awaitable[T]) -> T:
        """`lead_sync` for the async face."""
        try:
            value = await run
        except BaseException as exc:
            self.land(key, flight, exc)
            raise
        self.land(key, flight, None, value)
        return value
