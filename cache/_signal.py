"""A small signal type: `subscribe(handler) -> Subscription`; plain or `async def` handlers.

Shared by `cache` (cache events) and `eventbroker` (events, broker signals), which re-exports it:
it lives here, in the lower layer, like `Health`.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, TypeVar

_default_logger = logging.getLogger("cache")

T = TypeVar("T")
Handler = Callable[[T], object]


class Subscription:
    """Returned by `Signal.subscribe`; `unsubscribe()` (idempotent) or use it as a context manager."""

    __slots__ = ("_handler", "_signal")

    def __init__(self, signal: Signal[Any], handler: Callable[[Any], object]) -> None:
        self._signal: Signal[Any] | None = signal
        self._handler = handler

    def unsubscribe(self) -> None:
        """Detach the handler; later emissions no longer reach it."""
        signal, self._signal = self._signal, None
        if signal is not None:
            signal._remove(self._handler)

    @property
    def active(self) -> bool:
        return self._signal is not None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unsubscribe()


class Signal(Generic[T]):
    """Handlers subscribed to one kind of notification.

    A handler that raises is logged (with the signal's name, e.g. the event id) and never
    stops the other handlers. Which thread or loop runs a handler is decided by the emitter:
    see `EventBroker` for the rules.
    """

    __slots__ = ("_async", "_lock", "_logger", "_sync", "name")

    def __init__(self, name: str, *, logger: logging.Logger | None = None) -> None:
        self.name = name
        self._logger = logger or _default_logger
        self._lock = threading.Lock()
        # Copy-on-write tuples: emitting reads them without a lock.
        self._sync: tuple[Callable[[T], object], ...] = ()
        self._async: tuple[Callable[[T], Awaitable[object]], ...] = ()

    def subscribe(self, handler: Callable[[T], object]) -> Subscription:
        """Add `handler` (a plain function or an `async def`); returns its `Subscription`."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}: {handler!r}")
        with self._lock:
            if inspect.iscoroutinefunction(handler):
                self._async = (*self._async, handler)
            else:
                self._sync = (*self._sync, handler)
        return Subscription(self, handler)

    def _remove(self, handler: Callable[[Any], object]) -> None:
        with self._lock:
            if handler in self._async:
                index = self._async.index(handler)
                self._async = self._async[:index] + self._async[index + 1 :]
            elif handler in self._sync:
                index = self._sync.index(handler)
                self._sync = self._sync[:index] + self._sync[index + 1 :]

    @property
    def has_sync_handlers(self) -> bool:
        return bool(self._sync)

    @property
    def has_async_handlers(self) -> bool:
        return bool(self._async)

    def __len__(self) -> int:
        return len(self._sync) + len(self._async)

    def emit_sync(self, arg: T) -> list[Coroutine[Any, Any, None]]:
        """Run the plain handlers here; return the async handlers' work as guarded coroutines."""
        return self.call_sync(arg) + self.async_work(arg)

    def call_sync(self, arg: T) -> list[Coroutine[Any, Any, None]]:
        """Run the plain handlers here, in order; each exception is logged, never raised.

        A plain handler that returns an awaitable (a `partial` of an async function, say) has
        that awaitable returned, guarded, for the caller to schedule.
        """
        pending: list[Coroutine[Any, Any, None]] = []
        for handler in self._sync:
            try:
                result = handler(arg)
            except Exception:
                self._logger.exception("handler %r for %s raised", handler, self.name)
                continue
            if result is not None and inspect.isawaitable(result):
                pending.append(self._guard(handler, result))
        return pending

    def async_work(self, arg: T) -> list[Coroutine[Any, Any, None]]:
        """The async handlers' work for `arg`, each guarded so that an exception is logged."""
        return [self._guard(handler, handler(arg)) for handler in self._async]

    async def _guard(self, handler: Callable[[T], object], work: Awaitable[object]) -> None:
        try:
            await work
        except Exception:
            self._logger.exception("async handler %r for %s raised", handler, self.name)
