"""The sample's settings, each readable from an environment variable."""

from __future__ import annotations

import socket

import attrs

from cache._settings import EnvSettings, env, hidden_repr, integer, number, url_repr

_positive = number(above=0)


@attrs.frozen
class InventorySettings(EnvSettings):
    """Configuration of the inventory site (see docs/inventory-sample.md for the table);
    `from_env()` reads it from the environment, keyword arguments winning."""

    database_url: str | None = attrs.field(
        default=None, repr=url_repr, metadata=env("DATABASE_URL", url=True)
    )
    """``postgresql://...`` or a SQLite file path; None: a SQLite file (the demo: in a temp dir)."""
    feed_url: str | None = attrs.field(
        default=None, repr=url_repr, metadata=env("INVENTORY_FEED_URL", url=True)
    )
    """The inventory system; None: the demo starts its own on loopback."""
    cache_seconds: float = attrs.field(
        default=30.0, validator=_positive, metadata=env("INVENTORY_CACHE_SECONDS")
    )
    """How long a product stays fresh in each web instance's cache."""
    import_interval: float = attrs.field(
        default=300.0, validator=_positive, metadata=env("INVENTORY_IMPORT_INTERVAL")
    )
    """Seconds between scheduled imports (the job role)."""
    jobs_store: str = attrs.field(
        default="jobs.sqlite3", repr=url_repr, metadata=env("JOBS_STORE", url=True)
    )
    """The job store: a SQLite file path or a ``postgresql://`` URL."""
    secret: str | None = attrs.field(
        default=None, repr=hidden_repr, metadata=env("EVENTBROKER_SECRET", secret=True)
    )
    """The event broker's shared secret (EVENTBROKER_SECRET); the demo makes a random one."""
    application_name: str = attrs.field(
        default="inventory", metadata=env("EVENTBROKER_APPLICATION_NAME")
    )
    instance_name: str = attrs.field(
        factory=socket.gethostname, metadata=env("INVENTORY_INSTANCE_NAME")
    )
    port: int = attrs.field(
        default=8000, validator=integer(minimum=0, maximum=65535), metadata=env("PORT")
    )
