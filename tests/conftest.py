from eventbroker.testing.pytest_fixtures import servicebus_broker  # noqa: F401
