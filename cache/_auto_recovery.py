"""Auto-recovery: backplane messages that could not be published wait in a bounded queue and
are replayed when the backplane is back (its connect handler), after a publish succeeds, and on
a timer every `auto_recovery_delay` while the queue holds messages (FusionCache's
AutoRecoveryService)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

import attrs

from ._backplane import BackplaneMessage, BackplaneMessageAction
from ._options import EntryOptions
from ._redact import redact_text

logger = logging.getLogger("cache._backplane")


@attrs.frozen
class PendingMessage:
    """A queued message and when it stops being worth sending."""

    message: BackplaneMessage
    options: EntryOptions
    expires_at: float


_TAG_ACTIONS = (BackplaneMessageAction.TAG_REMOVE, BackplaneMessageAction.TAG_EXPIRE)


def _queue_key(message: BackplaneMessage) -> str:
    if message.action is BackplaneMessageAction.CLEAR:
        return "\0clear"
    if message.action in _TAG_ACTIONS:
        return f"\0tag:{message.action.value}:{message.cache_key}"
    return message.cache_key


class AutoRecoveryQueue:
    """Messages that could not be published: one per key (newest wins), bounded, dropped once
    the entry would have expired anyway. Thread-safe."""

    def __init__(self, max_items: int, clock: Callable[[], float]) -> None:
        self._max_items = max_items
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, PendingMessage] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def enqueue(self, message: BackplaneMessage, options: EntryOptions) -> None:
        ttl = options.duration
        key = _queue_key(message)
        with self._lock:
            current = self._items.get(key)
            if current is not None and current.message.timestamp > message.timestamp:
                return
            self._put(key, PendingMessage(message, options, self._clock() + ttl))

    def _put(self, key: str, item: PendingMessage) -> None:
        self._items.pop(key, None)
        self._items[key] = item
        while len(self._items) > self._max_items:
            dropped, _ = self._items.popitem(last=False)
            logger.warning("auto-recovery queue full: dropped the oldest item (key %r)", dropped)

    def accept_incoming(self, message: BackplaneMessage) -> bool:
        """Reconcile an incoming message with the queue: a newer incoming message cancels the
        queued one (True: apply it); an older one is ignored (False: ours will be replayed)."""
        with self._lock:
            if message.action is BackplaneMessageAction.CLEAR:
                for key in [
                    k for k, p in self._items.items() if p.message.timestamp < message.timestamp
                ]:
                    del self._items[key]
                return True
            key = _queue_key(message)
            current = self._items.get(key)
            if current is None:
                return True
            if message.timestamp > current.message.timestamp:
                del self._items[key]
                return True
            return False

    def take(self) -> list[PendingMessage]:
        """Remove and return every item still worth sending, oldest first."""
        now = self._clock()
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        return [p for p in items if p.expires_at > now]

    def put_back(self, items: list[PendingMessage]) -> None:
        """Return items a replay could not send (unless a newer one was queued meanwhile)."""
        with self._lock:
            for item in items:
                key = _queue_key(item.message)
                current = self._items.get(key)
                if current is None or current.message.timestamp <= item.message.timestamp:
                    self._put(key, item)


class AutoRecovery:
    """The auto-recovery service of one cache: its queue, the retry timer and the replay.

    `send` publishes one message (raising when it cannot), `failed` records a failure,
    `recovered` records that publishing works again; `executor` runs replays off the caller's
    thread."""

    def __init__(
        self,
        name: str,
        max_items: int,
        delay: float,
        clock: Callable[[], float],
        executor: Callable[[Callable[[], object]], None],
        send: Callable[[BackplaneMessage, EntryOptions], None],
        failed: Callable[[Exception], None],
        recovered: Callable[[], None],
    ) -> None:
        self.queue = AutoRecoveryQueue(max_items, clock)
        self._name = name
        self._delay = delay
        self._submit = executor
        self._send, self._failed, self._recovered = send, failed, recovered
        self._replay_lock = threading.Lock()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self.queue)

    def enqueue(self, message: BackplaneMessage, options: EntryOptions) -> None:
        """Queue `message` and make sure a retry is scheduled."""
        self.queue.enqueue(message, options)
        self._schedule_retry()

    def close(self) -> None:
        """Stop the timer; no replay starts after this."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _schedule_retry(self) -> None:
        """Retry the queue after the delay (one timer at a time; real time)."""
        with self._lock:
            if self._timer is not None or self._closed:
                return
            timer = threading.Timer(self._delay, self._retry_due)
            timer.name = f"cache-{self._name}-auto-recovery"
            timer.daemon = True
            self._timer = timer
        timer.start()

    def _retry_due(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed:
                return
        self.process()
        if len(self.queue):
            self._schedule_retry()

    def submit_replay(self, only_if_idle: bool = False) -> None:
        """Replay the queue on a background thread (if it holds anything)."""
        if self._closed or not len(self.queue):
            return
        if only_if_idle and self._replay_lock.locked():
            return
        with contextlib.suppress(RuntimeError):  # shut down meanwhile
            self._submit(self.process)

    def process(self) -> int:
        """Publish what the queue holds; returns how many went out."""
        if not self._replay_lock.acquire(blocking=False):
            return 0
        try:
            items = self.queue.take()
            for index, item in enumerate(items):
                try:
                    self._send(item.message, item.options)
                except Exception as exc:
                    self.queue.put_back(items[index:])
                    self._failed(exc)
                    logger.info(
                        "auto-recovery paused after %d item(s): %s", index, describe_error(exc)
                    )
                    return index
            if items:
                self._recovered()
                logger.info("auto-recovery published %d queued message(s)", len(items))
            return len(items)
        finally:
            self._replay_lock.release()


def describe_error(exc: BaseException) -> str:
    """`Type: message`, credentials redacted."""
    return redact_text(f"{type(exc).__name__}: {exc}")
