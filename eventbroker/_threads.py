"""The broker's two threads: its asyncio I/O loop, and the dispatcher for plain handlers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

logger = logging.getLogger("eventbroker")

T = TypeVar("T")


class IoLoop:
    """An asyncio loop running forever in a daemon thread; sync and async callers hand it work."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> asyncio.AbstractEventLoop:
        if self.loop is not None:
            return self.loop
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            # Cancel what is left so nothing logs "Task was destroyed but it is pending".
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()
        self.loop = loop
        return loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.loop is None:
            coro.close()
            raise RuntimeError(f"{self._name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for it from a plain thread."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "this blocking call was made on the broker's own loop (from an async handler): "
                "use the *_async method instead"
            )
        return self.submit(coro).result(timeout)

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and await it from any other loop (or this one)."""
        if self.in_loop_thread():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; wait up to `timeout` seconds for its thread (a daemon) to end."""
        loop, thread = self.loop, self._thread
        self.loop = None
        self._thread = None
        if loop is not None and thread is not None:
            with contextlib.suppress(RuntimeError):  # closed already
                loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(timeout)


class Dispatcher:
    """Runs plain handlers in order on one thread, then resolves their futures on the loop.

    Work submitted during one turn of the loop goes to the thread as one batch, and the batch's
    futures are resolved in one call back: a burst costs two wake-ups, not two per message.
    A batch holds its work and arguments flat, beside one future: the little that stays alive
    per message until the thread runs it is what the garbage collector walks meanwhile.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._batch: list[Any] = []  # work, arg, work, arg, ...
        self._batch_future: asyncio.Future[None] | None = None  # shared by the batch's work
        self._idle = False  # waiting for work with nothing queued

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def submit(self, work: Callable[[T], object], arg: T) -> asyncio.Future[None]:
        """Run `work(arg)` on the dispatcher thread; the future resolves (to None) once it ran.

        Called on the broker loop. An idle dispatcher gets the work at once (latency); a busy
        one gets what this loop turn submits as one batch at the end of the turn (throughput),
        and the work of one batch shares one future: it resolves once the whole batch ran.
        """
        assert self._loop is not None, "start() the dispatcher first"
        with self._lock:
            batch = self._batch
            if self._idle and not batch:
                self._idle = False
                future = self._loop.create_future()
                self._queue.put((future, [work, arg]))
                return future
            shared = self._batch_future
            batch.append(work)
            batch.append(arg)
            if shared is not None:
                return shared
            future = self._batch_future = self._loop.create_future()
        self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
            future, self._batch_future = self._batch_future, None
        if future is not None:
            self._queue.put((future, batch))

    def _run(self) -> None:
        get, empty = self._queue.get, self._queue.empty
        while True:
            if empty():
                with self._lock:
                    self._idle = True
            batch = get()
            self._idle = False
            if batch is None:
                return
            future, items = batch
            pairs = iter(items)
            for work in pairs:
                try:
                    work(next(pairs))
                except Exception:  # the work guards handlers; this is a last resort
                    logger.exception("dispatch failed")
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_resolve, future)

    def stop(self, timeout: float = 10.0) -> None:
        """Let queued work finish, up to `timeout` seconds (a stuck handler is abandoned)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._flush()  # what this loop turn submitted still runs
            self._queue.put(None)
            if thread is not threading.current_thread():
                thread.join(timeout)
                if thread.is_alive():
                    logger.warning(
                        "a plain event handler is still running after %.3g s at stop: abandoned",
                        timeout,
                    )


_Batch = tuple["asyncio.Future[None]", list[Any]]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
