"""The sample's settings, each readable from an environment variable."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import attrs


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"InventorySettings.{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class InventorySettings:
    """Configuration of the inventory site (see docs/inventory-sample.md for the table)."""

    database_url: str | None = None
    """``postgresql://...`` or a SQLite file path; None: a SQLite file (the demo: in a temp dir)."""
    feed_url: str | None = None
    """The inventory system; None: the demo starts its own on loopback."""
    cache_seconds: float = attrs.field(default=30.0, converter=float, validator=_positive)
    """How long a product stays fresh in each web instance's cache."""
    import_interval: float = attrs.field(default=300.0, converter=float, validator=_positive)
    """Seconds between scheduled imports (the job role)."""
    jobs_store: str = "jobs.sqlite3"
    """The job store: a SQLite file path or a ``postgresql://`` URL."""
    secret: str | None = attrs.field(default=None, repr=False)
    """The event broker's shared secret (EVENTBROKER_SECRET); the demo makes a random one."""
    application_name: str = "inventory"
    instance_name: str = attrs.field(factory=socket.gethostname)
    port: int = attrs.field(default=8000, converter=int)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InventorySettings:
        env = os.environ if environ is None else environ
        names = {
            "database_url": "DATABASE_URL",
            "feed_url": "INVENTORY_FEED_URL",
            "cache_seconds": "INVENTORY_CACHE_SECONDS",
            "import_interval": "INVENTORY_IMPORT_INTERVAL",
            "jobs_store": "JOBS_STORE",
            "secret": "EVENTBROKER_SECRET",
            "application_name": "EVENTBROKER_APPLICATION_NAME",
            "instance_name": "INVENTORY_INSTANCE_NAME",
            "port": "PORT",
        }
        values = {field: env[var] for field, var in names.items() if env.get(var)}
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"inventory settings from the environment are invalid: {exc}") from exc
