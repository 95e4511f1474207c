"""Azure Service Bus transport: one topic, one subscription per instance.

```python
from eventbroker import EventBroker, EventBrokerOptions
from eventbroker.servicebus import ServiceBusOptions, ServiceBusTransport

transport = ServiceBusTransport(ServiceBusOptions(connection_string=CONN, topic="shop-events"))
broker = EventBroker(transport, EventBrokerOptions(secret="...", application_name="shop"))
```
"""

from .._transport import PublishError
from ._errors import (
    ConnectionStringError,
    ServiceBusConfigurationError,
    ServiceBusStartError,
    SubscriptionNameError,
)
from ._options import ServiceBusOptions
from ._transport import ServiceBusTransport

__all__ = [
    "ConnectionStringError",
    "PublishError",
    "ServiceBusConfigurationError",
    "ServiceBusOptions",
    "ServiceBusStartError",
    "ServiceBusTransport",
    "SubscriptionNameError",
]
