"""Log a recurring cause at most once per period, saying how many were suppressed meanwhile."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

PERIOD = 60.0


class LogLimiter:
    """One line per cause per `period` seconds (by `clock`); the count suppressed goes into the
    next line. ``exc_info`` is logged with the first line of a cause only: one traceback is
    enough to find a bug, the counts show it goes on."""

    def __init__(
        self, logger: logging.Logger, clock: Callable[[], float], period: float = PERIOD
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._period = period
        self._next: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def log(
        self,
        level: int,
        cause: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log unless `cause` was logged less than a period ago; True when it was logged."""
        now = self._clock()
        first = cause not in self._next
        if not first and now < self._next[cause]:
            self._suppressed[cause] += 1
            return False
        self._next[cause] = now + self._period
        suppressed = self._suppressed.pop(cause, 0)
        if suppressed:
            span = "minute" if self._period == 60 else f"{self._period:g} s"
            message += f" ({suppressed} more of this cause in the last {span})"
        self._logger.log(level, message, *args, exc_info=exc_info if first else None)
        return True
