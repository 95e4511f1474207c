"""`CacheInvalidator`: a job tells every instance which cache keys its update made stale."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from cache import (
    Backplane,
    BackplaneError,
    BackplaneMessage,
    BackplaneMessageAction,
    EntryOptions,
    PackingBackplane,
)

from ._errors import JobsError

if TYPE_CHECKING:
    from eventbroker import EventRegistry

log = logging.getLogger(__name__)


class InvalidationError(JobsError):
    """Some keys could not be published before the deadline; `keys` lists them (retry them)."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = keys


class CacheInvalidator:
    """Publishes EntryExpire (default) or EntryRemove messages for keys, on every instance.

    The job needs no `HybridCache` of its own and fills no source id: the event broker never
    echoes a message to its sender. Expire keeps the old value on each instance for fail-safe
    (the next read reloads it; if that load fails the last good value is served); remove
    deletes it. Keys are de-duplicated, stamped with one time (entries loaded before it are
    affected) and sent in order: over a backplane that packs (`EventBrokerBackplane`), in as
    few envelopes as its limits allow, at once; else one message per key. When the transport
    pushes back (`PublishError` or `BackplaneError`: a full outgoing queue) the invalidator
    waits and retries until `publish_timeout`.
    """

    def __init__(
        self,
        backplane: Backplane,
        *,
        remove: bool = False,
        publish_timeout: float = 30.0,
    ) -> None:
        if publish_timeout <= 0:
            raise ValueError(f"publish_timeout must be > 0 seconds, got {publish_timeout!r}")
        self.backplane = backplane
        self.remove = remove
        self.publish_timeout = publish_timeout
        self._options = EntryOptions()

    @classmethod
    def for_registry(
        cls, registry: EventRegistry, *, remove: bool = False, publish_timeout: float = 30.0
    ) -> CacheInvalidator:
        """An invalidator over the registry's broker (through an `EventBrokerBackplane` whose
        pack limits `BackplaneOptions.from_env()` reads: ``CACHE_BACKPLANE_COALESCE_*``)."""
        from cache.eventbroker_backplane import BackplaneOptions, EventBrokerBackplane

        options = BackplaneOptions.from_env()
        backplane = EventBrokerBackplane(registry, registry.broker, options=options)
        return cls(backplane, remove=remove, publish_timeout=publish_timeout)

    def invalidate(self, keys: Iterable[str], *, remove: bool | None = None) -> int:
        """Tell every instance that `keys` are stale; returns how many keys were sent (a pack
        carries many)."""
        from eventbroker import PublishError

        action = (
            BackplaneMessageAction.ENTRY_REMOVE
            if (self.remove if remove is None else remove)
            else BackplaneMessageAction.ENTRY_EXPIRE
        )
        pending = list(_unique(keys))
        stamp = time.time()
        messages = [BackplaneMessage(cache_key=k, action=action, timestamp=stamp) for k in pending]
        backplane = self.backplane
        packing = backplane if isinstance(backplane, PackingBackplane) else None
        groups = packing.envelopes(messages) if packing is not None else [(m,) for m in messages]
        deadline = time.monotonic() + self.publish_timeout
        delay = 0.01
        sent = index = 0
        while index < len(groups):
            group = groups[index]
            try:
                if packing is not None:
                    packing.publish_envelope(group)
                else:
                    backplane.publish(group[0], self._options)
            except (PublishError, BackplaneError) as exc:
                if time.monotonic() + delay > deadline:
                    raise InvalidationError(
                        f"published {sent} of {len(pending)} invalidations; the transport kept "
                        f"refusing ({exc}) for {self.publish_timeout:.0f}s: retry the rest",
                        pending[sent:],
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.01
            sent += len(group)
            index += 1
        if sent:
            log.debug("invalidated %d key(s) (%s) on every instance", sent, action.value)
        return sent

    async def invalidate_async(self, keys: Iterable[str], *, remove: bool | None = None) -> int:
        """`invalidate` without blocking the caller's loop."""
        return await asyncio.to_thread(self.invalidate, list(keys), remove=remove)

    def batch(self, *, remove: bool | None = None) -> InvalidationBatch:
        """Collect keys while updating; they are sent when the `with` block ends without error."""
        return InvalidationBatch(self, remove)


class InvalidationBatch:
    """Keys gathered during an update (``with invalidator.batch() as b: b.add(key)``).

    Sent on a clean exit, after the caller committed; on an exception nothing is sent (the
    data did not change).
    """

    def __init__(self, invalidator: CacheInvalidator, remove: bool | None) -> None:
        self._invalidator = invalidator
        self._remove = remove
        self.keys: list[str] = []
        self.sent = 0

    def add(self, *keys: str) -> None:
        self.keys.extend(keys)

    def __enter__(self) -> InvalidationBatch:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None and self.keys:
            self.sent = self._invalidator.invalidate(self.keys, remove=self._remove)


def _unique(keys: Iterable[str]) -> Iterator[str]:
    seen: set[str] = set()
    for key in [keys] if isinstance(keys, str) else keys:
        if not isinstance(key, str) or not key:
            raise TypeError(f"cache keys must be non-empty str, got {key!r}")
        if key not in seen:
            seen.add(key)
            yield key
