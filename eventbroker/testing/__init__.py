"""Test helpers shipped with the package: the loopback Service Bus broker (needs the
``loopback`` extra), its administration client helper and pytest fixture."""

from ._servicebus_admin_client import administration_client
from .servicebus_broker import DeadLetter, LoopbackServiceBus, ServiceBusEntityError

__all__ = ["DeadLetter", "LoopbackServiceBus", "ServiceBusEntityError", "administration_client"]
