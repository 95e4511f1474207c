"""The azure-servicebus SDK's own samples run unchanged against the loopback broker.

52 sample files (sync and aio) from the SDK's sdist, vendored under
``tests/azure_servicebus_samples``; each must run clean (see ``tests/servicebus_samples.py``
for what that means per sample). The run starts in the background as soon as this module is
collected, and these tests are collected last, so the minutes the lock-renewal samples sleep
overlap the rest of the suite.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

import pytest

from tests.servicebus_samples import (
    SAMPLES,
    SAMPLES_DIR,
    SAMPLES_RUN,
    VENDORED_VERSION,
    Sample,
    problems,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_the_vendored_samples_are_the_52_that_can_run_locally() -> None:
    files = sorted(str(p.relative_to(SAMPLES_DIR)) for p in SAMPLES_DIR.glob("*_samples/*.py"))
    assert files == sorted(s.path for s in SAMPLES)
    assert len(files) == 52
    installed = version("azure-servicebus")
    if installed != VENDORED_VERSION:
        warnings.warn(
            f"the vendored samples are azure-servicebus {VENDORED_VERSION}'s, the installed SDK "
            f"is {installed}: refresh them (tests/azure_servicebus_samples/README.md)",
            stacklevel=1,
        )


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.path for s in SAMPLES])
def test_sdk_sample_runs_clean(sample: Sample) -> None:
    outcome = SAMPLES_RUN.outcome(sample)
    found = problems(sample, outcome)
    assert not found, f"{sample.path} did not run clean:\n" + "\n".join(found)
