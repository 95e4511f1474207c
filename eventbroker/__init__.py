"""Broadcast events between the instances of an app (Optimizely-style event registry and broker)."""

from ._transport import (
    ConnectionState,
    PublishError,
    Rejection,
    Transport,
    TransportMessage,
    TransportSink,
)

__all__ = [
    "ConnectionState",
    "PublishError",
    "Rejection",
    "Transport",
    "TransportMessage",
    "TransportSink",
]
