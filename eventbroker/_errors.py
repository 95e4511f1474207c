"""The root of every error the event broker raises on purpose."""

from __future__ import annotations


class EventBrokerError(Exception):
    """Base class of the event broker's errors (`PublishError`, the Service Bus errors)."""
