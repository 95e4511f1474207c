"""`Signal` and `Subscription`: the shared implementation (in `cache`, the lower layer), logging
a failing handler to the ``eventbroker`` logger."""

from __future__ import annotations

import logging
from typing import TypeVar

from cache._signal import Signal as _Signal
from cache._signal import Subscription

__all__ = ["Signal", "Subscription"]

T = TypeVar("T")
_logger = logging.getLogger("eventbroker")


class Signal(_Signal[T]):
    """Handlers subscribed to one kind of notification (see `cache._signal.Signal`)."""

    __slots__ = ()

    def __init__(self, name: str) -> None:
        super().__init__(name, logger=_logger)
