"""The default job store: one SQLite file shared by the schedulers of one machine."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from typing import Any

from ._errors import JobStoreUnavailableError
from ._sql_store import SqlJobStore, check_identifier


class SqliteJobStore(SqlJobStore):
    """Schedules, leases and history in a SQLite file (stdlib `sqlite3`, WAL mode).

    Fine for one machine (several processes may share the file); use `PostgresJobStore` for a
    farm of machines. Failures raise `JobStoreError` (`JobStoreUnavailableError` when the file
    cannot be opened).
    """

    _driver_errors = (sqlite3.Error,)

    def __init__(
        self, path: str | os.PathLike[str], *, table_prefix: str = "scheduled_job_"
    ) -> None:
        check_identifier("table_prefix", table_prefix)
        super().__init__(f"{table_prefix}schedule", f"{table_prefix}history")
        self.path = os.fspath(path)
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.OperationalError as exc:
            raise JobStoreUnavailableError(
                f"SqliteJobStore: cannot open {self.path!r} ({exc}); pass a writable file path"
            ) from exc
        self._q("PRAGMA journal_mode=WAL")
        self._q("PRAGMA busy_timeout=30000")
        self._q("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        self._create_schema()

    def _execute(self, sql: str, params: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        cur = self._conn.execute(sql.replace("DOUBLE PRECISION", "REAL"), dict(params))
        rows = cur.fetchall()
        return rows, cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteJobStore({self.path!r})"
