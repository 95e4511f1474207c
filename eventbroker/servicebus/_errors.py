"""Typed errors of the Service Bus transport."""

from __future__ import annotations

from .._errors import EventBrokerError


class ServiceBusConfigurationError(EventBrokerError, ValueError):
    """A `ServiceBusOptions` setting is invalid; the message names the setting and the fix."""


class ConnectionStringError(ServiceBusConfigurationError):
    """The connection string is malformed. The message never contains the key."""


class SubscriptionNameError(ServiceBusConfigurationError):
    """A user-given subscription name breaks Service Bus naming rules."""


class ServiceBusStartError(EventBrokerError, RuntimeError):
    """The transport could not connect or provision its subscription at start."""
