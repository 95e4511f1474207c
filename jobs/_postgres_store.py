"""The farm-wide job store: PostgreSQL through psycopg 3."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from ._errors import JobStoreError, JobStoreUnavailableError
from ._sql_store import SqlJobStore, check_identifier
from ._text import redact

try:
    import psycopg
except ImportError as exc:  # a core install: the [postgres] extra is missing
    raise ModuleNotFoundError(
        'PostgresJobStore needs psycopg 3: pip install "eventbroker-cache[postgres]"',
        name="psycopg",
    ) from exc

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class PostgresJobStore(SqlJobStore):
    """Schedules, leases and history in PostgreSQL, for schedulers on many machines.

    `url` is a libpq URL (``postgresql://user@host:5432/db``). Tables live in `schema`
    (created when missing) with names starting with `table_prefix`. The connection is
    re-opened once when the server drops it. Failures raise `JobStoreError`
    (`JobStoreUnavailableError` when the server cannot be reached).
    """

    _driver_errors = (psycopg.Error,)

    def __init__(
        self, url: str, *, schema: str = "public", table_prefix: str = "scheduled_job_"
    ) -> None:
        check_identifier("schema", schema)
        check_identifier("table_prefix", table_prefix)
        super().__init__(f"{table_prefix}schedule", f"{table_prefix}history")
        self.url = url
        self.schema = schema
        self._conn = self._connect()
        self._create_schema()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise JobStoreUnavailableError(
                redact(
                    f"PostgresJobStore: cannot connect to {self.url} ({exc}); check the "
                    "URL and that the server is up, e.g. postgresql://postgres@127.0.0.1:5432/test"
                )
            ) from exc
        try:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            conn.execute(f'SET search_path TO "{self.schema}"')
        except psycopg.Error as exc:
            conn.close()
            raise JobStoreError(
                redact(f"PostgresJobStore: cannot use schema {self.schema!r} ({exc})")
            ) from exc
        return conn

    def _execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        query = _PLACEHOLDER.sub(r"%(\1)s", sql)
        for attempt in (1, 2):
            try:
                cur = self._conn.execute(query, dict(params))
                rows = cur.fetchall() if cur.description else []
                return rows, cur.rowcount
            except psycopg.OperationalError:
                if attempt == 2 or not self._conn.closed:
                    raise
                log.warning("PostgresJobStore: connection lost; reconnecting")
                self._conn = self._connect()
        raise AssertionError("unreachable")

    def drop_tables(self) -> None:
        """Drop this store's tables (tests and teardown)."""
        self._q("DROP TABLE IF EXISTS {h}")
        self._q("DROP TABLE IF EXISTS {s}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"PostgresJobStore({redact(self.url)!r}, schema={self.schema!r})"
