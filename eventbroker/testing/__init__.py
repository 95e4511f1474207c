"""Test helpers shipped with the package (the loopback Service Bus broker)."""
