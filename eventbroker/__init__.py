"""Broadcast events between the instances of an app (Optimizely-style event registry and broker).

```python
hub = InMemoryHub()
broker = EventBroker(InMemoryTransport(hub), EventBrokerOptions(secret="...", application_name="shop"))
registry = EventRegistry(broker)
with broker:
    event = registry.get(EVENT_ID)
    event.raised.subscribe(handler)
    event.raise_(RAISER_ID, {"sku": "A-1"}, EventRaiseOption.RAISE_BROADCAST)
```
"""

from cache._health import Health, HealthStatus

from ._args import (
    EventMissedEventArgs,
    EventNotification,
    EventRaiseOption,
    EventReceivedEventArgs,
    MessageRefusedEventArgs,
    MissedReason,
)
from ._broker import BrokerStats, EventBroker
from ._errors import EventBrokerError
from ._flow import Flow, FlowWindow
from ._memory_transport import HubFaults, InMemoryHub, InMemoryTransport
from ._options import EventBrokerOptions
from ._registry import Event, EventRegistry
from ._signal import Signal, Subscription
from ._transport import (
    ConnectionState,
    PublishError,
    Rejection,
    Transport,
    TransportMessage,
    TransportSink,
)

__all__ = [
    "BrokerStats",
    "ConnectionState",
    "Event",
    "EventBroker",
    "EventBrokerError",
    "EventBrokerOptions",
    "EventMissedEventArgs",
    "EventNotification",
    "EventRaiseOption",
    "EventReceivedEventArgs",
    "EventRegistry",
    "Flow",
    "FlowWindow",
    "Health",
    "HealthStatus",
    "HubFaults",
    "InMemoryHub",
    "InMemoryTransport",
    "MessageRefusedEventArgs",
    "MissedReason",
    "PublishError",
    "Rejection",
    "Signal",
    "Subscription",
    "Transport",
    "TransportMessage",
    "TransportSink",
]
