"""Incoming backplane messages: another instance's change applied to this instance's L1."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ._backplane import BackplaneMessage, BackplaneMessageAction
from ._backplane_accessor import BackplaneAccessor
from ._core import CacheCore, Counts
from ._diagnostics import LogLimiter
from ._marks import CLEAR, NEVER
from ._memory import MemoryCache
from ._options import CacheOptions
from ._stats import CacheEvents, emit

logger = logging.getLogger("cache._hybrid")

_TAG_ACTIONS = (BackplaneMessageAction.TAG_REMOVE, BackplaneMessageAction.TAG_EXPIRE)


class IncomingMessages(CacheCore):
    """The handlers `HybridCache` gives its backplane (a base of `HybridCache`)."""

    options: CacheOptions
    instance_id: str
    events: CacheEvents
    _clock: Callable[[], float]
    _memory: MemoryCache
    _counts: Counts
    _bp: BackplaneAccessor | None
    _lost_log: LogLimiter

    def _on_backplane_message(self, message: BackplaneMessage) -> None:
        """Apply another instance's change to L1 (called from the backplane's thread)."""
        self._on_backplane_messages((message,))

    def _on_backplane_messages(self, messages: Sequence[BackplaneMessage]) -> None:
        """Apply other instances' changes to L1 in order (a pack: the checks, the count and
        the log are done once for all)."""
        if self.options.ignore_incoming_backplane_notifications or not messages:
            return
        own = self.instance_id
        if messages[0].source_id == own and len(messages) == 1:
            return
        if logger.isEnabledFor(logging.DEBUG):
            first = messages[0]
            logger.debug(
                "cache %r: backplane message %s for %r from %s%s",
                self.options.name,
                first.action.name,
                first.cache_key,
                first.source_id or "a publisher without a cache",
                f" and {len(messages) - 1} more in its pack" if len(messages) > 1 else "",
            )
        signal = self.events.backplane_message_received
        emitting = bool(signal._sync or signal._async)
        queue = None if self._bp is None else self._bp.recovery.queue
        received = 0
        for message in messages:
            if message.source_id == own:
                continue
            received += 1
            if emitting:
                emit(signal, message)
            if queue is not None and not queue.accept_incoming(message):
                logger.debug(
                    "ignored %s for %r: a newer local one is queued",
                    message.action,
                    message.cache_key,
                )
                continue
            self._apply_incoming(message)
        self._counts.backplane_received += received

    def _apply_incoming(self, message: BackplaneMessage) -> None:
        action = message.action
        if action is BackplaneMessageAction.CLEAR:
            self._marks.learn(CLEAR, message.timestamp, NEVER)
            self._expire_all_local(message.timestamp, message.timestamp)
            return
        if action in _TAG_ACTIONS:
            if action is BackplaneMessageAction.TAG_REMOVE:
                self._marks.learn(message.cache_key, NEVER, message.timestamp)
            else:
                self._marks.learn(message.cache_key, message.timestamp, NEVER)
            self._apply_mark(message.cache_key)
            return
        if action is BackplaneMessageAction.ENTRY_EXPIRE:
            self._marks.expire_key(message.cache_key, message.timestamp)
        entry = self._memory.entries.get(message.cache_key)
        if entry is None or entry.timestamp >= message.timestamp:
            return
        if action is BackplaneMessageAction.ENTRY_REMOVE:
            self._memory.remove_if(message.cache_key, entry)
        elif action is BackplaneMessageAction.ENTRY_SET:
            # a newer value is in L2: anything newer than our copy may be served
            self._invalidate(message.cache_key, entry, self._clock(), entry.timestamp)
        else:  # ENTRY_EXPIRE: L2 values up to the message's time are stale too
            self._invalidate(message.cache_key, entry, self._clock(), message.timestamp)

    def _on_backplane_messages_lost(self) -> None:
        """An invalidation may have been lost: expire every local entry (values kept for
        fail-safe); the next read takes a newer L2 value if there is one, else calls the factory."""
        if self.options.ignore_incoming_backplane_notifications:
            return
        self._lost_log.warn(  # once a minute, with a count: it may come with every message
            "messages_lost",
            "cache %r: backplane messages may have been lost; expiring every local entry "
            "(values kept for fail-safe)",
            self.options.name,
        )
        self._expire_all_local(float("inf"), None)
