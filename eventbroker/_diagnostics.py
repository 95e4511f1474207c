"""`LogLimiter` and `RecentCounts`: the shared implementation (in `cache`, the lower layer)."""

from __future__ import annotations

from cache._diagnostics import PERIOD, LogLimiter, RecentCounts

__all__ = ["PERIOD", "LogLimiter", "RecentCounts"]
