"""pytest fixtures for the loopback Service Bus broker.

Import them into a ``conftest.py``::

    from eventbroker.testing.pytest_fixtures import servicebus_broker  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .servicebus_broker import LoopbackServiceBus

__all__ = ["servicebus_broker"]


@pytest.fixture
def servicebus_broker() -> Iterator[LoopbackServiceBus]:
    """A fresh, started :class:`LoopbackServiceBus` on free loopback ports; stopped after the test."""
    broker = LoopbackServiceBus()
    try:
        broker.start()
    except Exception as exc:  # a missing real part fails, never skips
        pytest.fail(f"cannot start the loopback Service Bus broker: {exc!r}")
    try:
        yield broker
    finally:
        broker.stop()
