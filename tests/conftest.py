from __future__ import annotations

import sys

import pytest

from eventbroker.testing.pytest_fixtures import servicebus_broker  # noqa: F401

_SAMPLES_MODULE = "tests.test_servicebus_sdk_samples"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The SDK samples' tests go last: their run overlaps everything before them."""
    samples = [item for item in items if _in_samples_module(item)]
    if samples:
        others = [item for item in items if not _in_samples_module(item)]
        items[:] = others + samples


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the SDK samples now (minutes of mostly waiting) when their tests were selected."""
    selected = [
        params["sample"]
        for item in session.items
        if _in_samples_module(item)
        and "sample" in (params := getattr(getattr(item, "callspec", None), "params", {}))
    ]
    if selected:
        from tests.servicebus_samples import SAMPLES_RUN

        SAMPLES_RUN.start(selected)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop what is left of the SDK samples' run (a session cut short)."""
    run = sys.modules.get("tests.servicebus_samples")
    if run is not None:
        run.SAMPLES_RUN.stop()


def _in_samples_module(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    return getattr(module, "__name__", "") == _SAMPLES_MODULE
