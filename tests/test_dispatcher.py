"""The dispatcher thread: plain handlers' work runs in submission order, each future resolves
only after its work ran, and a failing piece of work does not stop the rest."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pytest

from eventbroker._threads import Dispatcher, IoLoop


@pytest.fixture
def loop() -> Iterator[IoLoop]:
    io = IoLoop("test-io")
    io.start()
    yield io
    io.stop()


@pytest.fixture
def dispatcher(loop: IoLoop) -> Iterator[Dispatcher]:
    started = Dispatcher("test-dispatch")
    assert loop.loop is not None
    started.start(loop.loop)
    yield started
    started.stop()


def submit_on_loop(
    io: IoLoop, dispatcher: Dispatcher, items: list[tuple[object, object]]
) -> list[asyncio.Future[None]]:
    """Submit `items` (work, arg) in one turn of the loop, as a burst of messages does."""

    async def burst() -> list[asyncio.Future[None]]:
        return [dispatcher.submit(work, arg) for work, arg in items]  # type: ignore[arg-type]

    return io.run(burst())


def test_work_runs_in_order_and_each_future_resolves_after_its_work(
    loop: IoLoop, dispatcher: Dispatcher
) -> None:
    ran: list[int] = []
    gate = threading.Event()

    def work(n: int) -> None:
        if n == 0:
            gate.wait(10)  # the first piece holds the thread: the rest queues up in batches
        ran.append(n)

    futures = submit_on_loop(loop, dispatcher, [(work, n) for n in range(5)])
    futures += submit_on_loop(loop, dispatcher, [(work, n) for n in range(5, 300)])
    gate.set()

    async def wait_all() -> None:
        for n, future in enumerate(futures):
            await future
            assert n < len(ran), f"the future of work {n} resolved before it ran"

    loop.run(wait_all(), timeout=10)
    assert ran == list(range(300))


def test_failing_work_is_logged_and_the_batch_goes_on(
    loop: IoLoop, dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []

    def work(n: int) -> None:
        if n == 2:
            raise RuntimeError("boom")
        ran.append(n)

    with caplog.at_level(logging.ERROR, logger="eventbroker"):
        futures = submit_on_loop(loop, dispatcher, [(work, n) for n in range(5)])

        async def wait_all() -> None:
            await asyncio.gather(*futures)

        loop.run(wait_all(), timeout=10)
    assert ran == [0, 1, 3, 4]
    assert "dispatch failed" in caplog.text and "boom" in caplog.text


def test_stop_runs_what_was_submitted(loop: IoLoop, dispatcher: Dispatcher) -> None:
    ran: list[int] = []
    gate = threading.Event()

    def work(n: int) -> None:
        gate.wait(10)
        ran.append(n)

    submit_on_loop(loop, dispatcher, [(work, n) for n in range(50)])
    gate.set()
    dispatcher.stop(timeout=10)
    assert ran == list(range(50))
