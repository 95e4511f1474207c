"""Exponential backoff with full jitter, for reconnect loops."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs


@attrs.define
class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, each drawn uniformly from [d/2, d].

    `reset()` after a success; `next_delay()` after each failure.
    """

    initial: float
    maximum: float
    random: Callable[[], float] = random.random
    failures: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return ceiling / 2 + self.random() * ceiling / 2

    def reset(self) -> None:
        """Start again from ``initial`` after a success."""
        self.failures = 0
