"""The drivers: execute the steps (`_steps.py`) a core generator yields, blocking (`run_sync`)
or awaiting (`run_async`), and send each result back into the generator.

`Driver` holds the I/O the steps need: the guarded distributed cache (`_distributed.py`), the
backplane accessor (`_backplane_accessor.py`), the factory and background threads, and the
background tasks of the async face. It is the only place where a step turns into a call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from ._backplane_accessor import BackplaneAccessor, log_background_failure
from ._distributed import GuardedDistributedCache
from ._flights import Flights
from ._steps import (
    AwaitPending,
    CallFactory,
    CompleteInBackground,
    Gen,
    InBackground,
    L2Get,
    L2Remove,
    L2Set,
    Outcome,
    Publish,
    Step,
)

logger = logging.getLogger("cache._hybrid")

T = TypeVar("T")


def is_async_callable(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


class Driver:
    """Runs core generators: `run_sync` in the caller's thread, `run_async` on its loop."""

    def __init__(
        self,
        l2: GuardedDistributedCache | None,
        backplane: BackplaneAccessor | None,
        factory_executor: concurrent.futures.ThreadPoolExecutor,
        background_executor: concurrent.futures.ThreadPoolExecutor,
        flights: Flights,
    ) -> None:
        self.flights = flights
        self.l2 = l2
        self.backplane = backplane
        self.factory_executor = factory_executor
        self.background_executor = background_executor
        self.tasks: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- the two drivers

    def run_sync(self, gen: Gen[T]) -> T:
        sent: Any = None
        try:
            while True:
                sent = self._perform_sync(gen.send(sent))
        except StopIteration as stop:
            return cast(T, stop.value)

    async def run_async(self, gen: Gen[T]) -> T:
        sent: Any = None
        try:
            while True:
                sent = await self._perform_async(gen.send(sent))
        except StopIteration as stop:
            return cast(T, stop.value)

    # ---------------------------------------------------------------- one step, blocking

    def _perform_sync(self, step: Step) -> Any:
        if isinstance(step, L2Get | L2Set | L2Remove):
            return self._l2_sync(step)
        if isinstance(step, Publish):
            assert self.backplane is not None
            return self.backplane.publish(step.message, step.options)
        if isinstance(step, CallFactory):
            return self._call_factory_sync(step)
        if isinstance(step, InBackground):
            future = self.background_executor.submit(self.run_sync, step.operation)
            future.add_done_callback(log_background_failure)
            return None
        if isinstance(step, AwaitPending):
            try:
                return Outcome(value=step.pending.result(step.timeout))
            except concurrent.futures.TimeoutError:
                return Outcome(pending=step.pending)
            except Exception as exc:
                return Outcome(error=exc)
        return self._complete_in_background_sync(step)

    def _l2_sync(self, step: L2Get | L2Set | L2Remove) -> Any:
        l2 = self.l2
        assert l2 is not None
        if isinstance(step, L2Get):
            call: Callable[[], Any] = functools.partial(l2.get, step.key)
        elif isinstance(step, L2Set):
            call = functools.partial(l2.set, step.key, step.data, step.ttl)
        else:
            call = functools.partial(l2.remove, step.key)
        if step.timeout is None:
            return call()
        future = self.factory_executor.submit(call)
        try:
            return future.result(step.timeout)
        except concurrent.futures.TimeoutError:
            _l2_timed_out(step)
            return None if isinstance(step, L2Get) else False

    def _call_factory_sync(self, step: CallFactory) -> Outcome:
        if step.timeout is None:
            try:
                return Outcome(value=step.factory())
            except Exception as exc:
                return Outcome(error=exc)
        future = self.factory_executor.submit(step.factory)
        try:
            return Outcome(value=future.result(step.timeout))
        except Exception:
            if not future.done():  # timed out: the factory keeps running
                return Outcome(pending=future)
            error = future.exception()
            return Outcome(error=error) if error is not None else Outcome(value=future.result())

    def _complete_in_background_sync(self, step: CompleteInBackground) -> None:
        key, complete = step.key, step.complete
        call = cast(concurrent.futures.Future[Any], step.pending)
        self.flights.keep_running(key, call, step.context)

        def done(future: concurrent.futures.Future[Any]) -> None:
            if not self.flights.claim(key, call):
                return  # a caller waiting for it stored the value
            if future.cancelled() or future.exception() is not None:
                logger.warning("timed-out factory for %r failed in the background", key)
                return
            logger.debug("timed-out factory for %r completed in the background", key)
            self.run_sync(complete(future.result()))

        call.add_done_callback(done)

    # ---------------------------------------------------------------- one step, awaited

    async def _perform_async(self, step: Step) -> Any:
        if isinstance(step, L2Get | L2Set | L2Remove):
            return await self._l2_async(step)
        if isinstance(step, Publish):
            assert self.backplane is not None
            return await self.backplane.publish_async(step.message, step.options)
        if isinstance(step, CallFactory):
            return await self._call_factory_async(step)
        if isinstance(step, InBackground):
            self.spawn(self.run_async(step.operation))
            return None
        if isinstance(step, AwaitPending):
            waiting = asyncio.shield(asyncio.wrap_future(step.pending))
            try:
                return Outcome(value=await asyncio.wait_for(waiting, step.timeout))
            except TimeoutError:
                return Outcome(pending=step.pending)
            except Exception as exc:
                return Outcome(error=exc)
        return self._complete_in_background_async(step)

    async def _l2_async(self, step: L2Get | L2Set | L2Remove) -> Any:
        l2 = self.l2
        assert l2 is not None
        if isinstance(step, L2Get):
            call: Awaitable[Any] = l2.get_async(step.key)
        elif isinstance(step, L2Set):
            call = l2.set_async(step.key, step.data, step.ttl)
        else:
            call = l2.remove_async(step.key)
        if step.timeout is None:
            return await call
        task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({task}, timeout=step.timeout)
        if done:
            return task.result()
        self.tasks.add(task)  # goes on in the background
        task.add_done_callback(self.tasks.discard)
        _l2_timed_out(step)
        return None if isinstance(step, L2Get) else False

    async def _call_factory_async(self, step: CallFactory) -> Outcome:
        if step.timeout is None:
            try:
                return Outcome(value=await self.invoke_async(step.factory))
            except Exception as exc:
                return Outcome(error=exc)
        task = asyncio.ensure_future(self.invoke_async(step.factory))
        done, _ = await asyncio.wait({task}, timeout=step.timeout)
        if not done:
            return Outcome(pending=task)
        error = task.exception()
        return Outcome(error=error) if error is not None else Outcome(value=task.result())

    def _complete_in_background_async(self, step: CompleteInBackground) -> None:
        key, complete = step.key, step.complete
        task = cast(asyncio.Future[Any], step.pending)
        call: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.flights.keep_running(key, call, step.context)

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                call.cancel()
            elif future.exception() is not None:
                call.set_exception(future.exception())
            else:
                call.set_result(future.result())
            if not self.flights.claim(key, call):
                return  # a caller waiting for it stored the value
            if future.cancelled() or future.exception() is not None:
                logger.warning("timed-out factory for %r failed in the background", key)
                return
            logger.debug("timed-out factory for %r completed in the background", key)
            self.spawn(self.run_async(complete(future.result())))

        task.add_done_callback(done)

    # ---------------------------------------------------------------- helpers of the async face

    async def invoke_async(self, factory: Callable[[], Any]) -> Any:
        """Await an `async def` factory; run a plain one in a factory thread."""
        if is_async_callable(factory):
            return await factory()
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(self.factory_executor, factory)
        if inspect.isawaitable(value):
            value = await value
        return value

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` as a background task of the running loop (failures logged)."""

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                logger.exception("background cache work failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _l2_timed_out(step: L2Get | L2Set | L2Remove) -> None:
    what = {L2Get: "read", L2Set: "write", L2Remove: "remove"}[type(step)]
    logger.debug(
        "L2 %s of %r timed out after %ss: it goes on in the background",
        what,
        step.key,
        step.timeout,
    )
