"""Steps: what the core generators (`_core.py`) ask their driver (`_drivers.py`) to do.

Each step is plain data, the way h11 keeps events as data: it names one piece of I/O and its
arguments, and the driver that receives it performs it (blocking for the sync face, awaiting
for the async one) and sends the result back into the generator. A step knows nothing of the
cache that yields it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import attrs

from ._backplane import BackplaneMessage
from ._options import EntryOptions

T = TypeVar("T")


@attrs.frozen
class L2Get:
    """Read `key` from the distributed cache; the result is its bytes or `None` (also when
    `timeout` seconds pass first: the read goes on in the background)."""

    key: str
    timeout: float | None = None


@attrs.frozen
class L2Set:
    """Write `data` under `key` for `ttl` seconds; the result is whether it was written
    (`False` too when `timeout` seconds pass first: the write goes on in the background)."""

    key: str
    data: bytes
    ttl: float
    timeout: float | None = None


@attrs.frozen
class L2Remove:
    """Delete `key` from the distributed cache; the result is whether it was deleted (as
    `L2Set` for `timeout`)."""

    key: str
    timeout: float | None = None


@attrs.frozen
class Publish:
    """Tell the other instances (the backplane); failures go to auto-recovery. No result."""

    message: BackplaneMessage
    options: EntryOptions


@attrs.frozen
class CallFactory:
    """Call `factory` within `timeout` seconds (`None`: no limit); the result is an `Outcome`."""

    factory: Callable[[], Any]
    timeout: float | None


@attrs.frozen
class CompleteInBackground:
    """A timed-out factory (`pending`) keeps running; when it succeeds, `complete(value)` (a
    core generator: resolve the value, store it) runs. Meanwhile it is the key's running call
    (`Flights.running`, with `context`): a later load waits for it rather than calling the
    factory again. No result."""

    key: str
    pending: concurrent.futures.Future[Any] | asyncio.Future[Any]
    context: Any
    complete: Callable[[Any], Generator[Any, Any, Any]]


@attrs.frozen
class AwaitPending:
    """Wait up to `timeout` seconds (`None`: no limit) for a factory call still running in the
    background (`pending`) instead of calling the factory again; the result is an `Outcome`."""

    pending: concurrent.futures.Future[Any]
    timeout: float | None


@attrs.frozen
class InBackground:
    """Run `operation` (a core generator) in the background; the caller goes on at once.
    No result."""

    operation: Generator[Any, Any, Any]


@attrs.frozen
class Outcome:
    """How a factory call ended: a value, an error, or still running after the timeout."""

    value: Any = None
    error: BaseException | None = None
    pending: concurrent.futures.Future[Any] | asyncio.Future[Any] | None = None


Step = (
    L2Get
    | L2Set
    | L2Remove
    | Publish
    | CallFactory
    | CompleteInBackground
    | AwaitPending
    | InBackground
)
Gen = Generator[Step, Any, T]
"""A core operation: yields steps, receives their results, returns the operation's result."""
