"""The backplane accessor: how a cache publishes (FusionCache's BackplaneAccessor). A publish
that fails is counted, logged once per outage and queued for auto-recovery
(`_auto_recovery.py`); the accessor remembers since when publishing fails, for `health()`."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ._auto_recovery import AutoRecovery, describe_error
from ._backplane import Backplane, BackplaneMessage
from ._options import CacheOptions, EntryOptions

logger = logging.getLogger("cache._hybrid")


class BackplaneAccessor:
    """Publishes a cache's messages on `backplane`; `counts` holds `backplane_sent` and
    `backplane_errors`."""

    def __init__(
        self,
        backplane: Backplane,
        options: CacheOptions,
        clock: Callable[[], float],
        executor: concurrent.futures.Executor,
        counts: Any,
    ) -> None:
        self.backplane = backplane
        self._name = options.name
        self._clock = clock
        self._counts = counts
        self.failing_since: float | None = None
        """When publishing began to fail; `None` while it works."""
        self.last_error = ""
        self.recovery = AutoRecovery(
            options.name,
            options.auto_recovery_max_items,
            options.auto_recovery_delay,
            clock,
            lambda fn: self._background(executor, fn),
            self._replay_one,
            self.failed,
            self._recovered,
        )

    @staticmethod
    def _background(executor: concurrent.futures.Executor, fn: Callable[[], object]) -> None:
        executor.submit(fn).add_done_callback(log_background_failure)

    def publish(self, message: BackplaneMessage, options: EntryOptions) -> None:
        try:
            self.backplane.publish(message, options)
        except Exception as exc:
            self._publish_failed(message, options, exc)
        else:
            self._publish_succeeded(message)

    async def publish_async(self, message: BackplaneMessage, options: EntryOptions) -> None:
        try:
            await self.backplane.publish_async(message, options)
        except Exception as exc:
            self._publish_failed(message, options, exc)
        else:
            self._publish_succeeded(message)

    def publish_failed(
        self, items: Sequence[tuple[BackplaneMessage, EntryOptions]], exc: Exception
    ) -> None:
        """The backplane could not send messages it had accepted (a pack, after `publish`
        returned): queue them for auto-recovery like a publish that raised."""
        for message, options in items:
            self._publish_failed(message, options, exc)

    def _publish_failed(
        self, message: BackplaneMessage, options: EntryOptions, exc: Exception
    ) -> None:
        self._counts.backplane_errors += 1
        if isinstance(exc, TypeError | ValueError):  # the message itself is bad: retry won't help
            logger.error(
                "backplane refused %s for %r (%s); not queued",
                message.action.name,
                message.cache_key,
                describe_error(exc),
            )
            return
        first = self.failing_since is None
        self.failed(exc)
        # one warning per outage, not one per write: the rest wait in the queue quietly (the
        # replay logs how many it published; health() shows the backlog meanwhile)
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "backplane publish of %s for %r failed (%s); queued for auto-recovery",
            message.action.name,
            message.cache_key,
            self.last_error,
        )
        self.recovery.enqueue(message, options)

    def _publish_succeeded(self, message: BackplaneMessage) -> None:
        self._counts.backplane_sent += 1
        logger.debug(
            "cache %r: told the other instances %s for %r (backplane)",
            self._name,
            message.action.name,
            message.cache_key,
        )
        self.failing_since = None
        self.recovery.submit_replay(only_if_idle=True)

    def failed(self, exc: Exception) -> None:
        """Publishing failed (a publish, or a replay)."""
        if self.failing_since is None:
            self.failing_since = self._clock()
        self.last_error = describe_error(exc)

    def _replay_one(self, message: BackplaneMessage, options: EntryOptions) -> None:
        try:
            self.backplane.publish(message, options)
        except Exception:
            self._counts.backplane_errors += 1
            raise
        self._counts.backplane_sent += 1

    def _recovered(self) -> None:
        self.failing_since = None

    def connected(self) -> None:
        """The backplane says it is connected (again): replay the queue."""
        self.failing_since = None
        self.recovery.submit_replay()


def log_background_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("background cache work failed", exc_info=future.exception())
