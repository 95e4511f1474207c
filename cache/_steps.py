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
    """Read `key` from the distributed cache; the result is its bytes or `None`."""

    key: str


@attrs.frozen
class L2Set:
    """Write `data` under `key` for `ttl` seconds; the result is whether it was written."""

    key: str
    data: bytes
    ttl: float


@attrs.frozen
class L2Remove:
    """Delete `key` from the distributed cache; the result is whether it was deleted."""

    key: str


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
    """A timed-out factory (`pending`) keeps running; when it succeeds its value is stored for
    `key` under `options`. Meanwhile it is the key's running call (`Flights.running`): a later
    load waits for it rather than calling the factory again. No result."""

    key: str
    pending: concurrent.futures.Future[Any] | asyncio.Future[Any]
    options: EntryOptions


@attrs.frozen
class AwaitPending:
    """Wait up to `timeout` seconds (`None`: no limit) for a factory call still running in the
    background (`pending`) instead of calling the factory again; the result is an `Outcome`."""

    pending: concurrent.futures.Future[Any]
    timeout: float | None


@attrs.frozen
class Outcome:
    """How a factory call ended: a value, an error, or still running after the timeout."""

    value: Any = None
    error: BaseException | None = None
    pending: concurrent.futures.Future[Any] | asyncio.Future[Any] | None = None


Step = L2Get | L2Set | L2Remove | Publish | CallFactory | CompleteInBackground | AwaitPending
Gen = Generator[Step, Any, T]
"""A core operation: yields steps, receives their results, returns the operation's result."""
