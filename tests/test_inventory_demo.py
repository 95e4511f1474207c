"""The README's first command, run as a user runs it: exit status 0 and the fresh values."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from samples.inventory._feed import stock_level

ROOT = Path(__file__).resolve().parent.parent


def test_demo_on_the_embedded_default_passes_every_check() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "EVENTBROKER_SECRET")}
    result = subprocess.run(
        [sys.executable, "-m", "samples.inventory"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    old, new = stock_level(0, 1), stock_level(0, 2)
    assert old != new
    for web in ("web-1", "web-2"):
        assert f"ok   {web} serves stock {old} (fresh)" in out
        assert f"ok   {web} received the invalidation of inventory:product:SKU-001" in out
        assert f"ok   {web} serves the new stock {new} (fresh)" in out
        assert f"ok   {web} stays up with the last good value {new} (marked stale)" in out
    assert "FAIL" not in out
    assert "All " in out and "checks held." in out


def test_demo_over_service_bus_as_separate_processes() -> None:
    """With the Service Bus transport in the checkout the same story runs as OS processes over
    the loopback broker; without it the command says so and exits with status 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBROKER_")}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "samples.inventory", "--transport", "servicebus"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if importlib.util.find_spec("eventbroker.servicebus") is None:
        assert result.returncode == 2
        assert "the Service Bus transport (eventbroker.servicebus) is not in this checkout" in (
            result.stderr
        )
        return
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "separate OS processes over Azure Service Bus" in out
    new = stock_level(0, 2)
    for web in ("web-1", "web-2"):
        assert f"ok   {web} serves the new stock {new} (fresh)" in out
        assert f"ok   {web} stays up with the last good value {new} (marked stale)" in out
    assert "FAIL" not in out
