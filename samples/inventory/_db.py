"""The inventory database: SQLite by default (a file path), PostgreSQL with a URL."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs


@attrs.frozen
class Product:
    """One product row."""

    sku: str
    name: str
    stock: int
    price_cents: int
    updated_at: float = 0.0


_DDL = """CREATE TABLE IF NOT EXISTS inventory_products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    stock INTEGER NOT NULL,
    price_cents INTEGER NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL)"""
_COLUMNS = "sku, name, stock, price_cents, updated_at"


class InventoryDb:
    """Products table access. `target` is a file path (SQLite) or a ``postgresql://`` URL.

    Each call opens its own short connection, so any thread may call it.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = os.fspath(target)
        self.is_postgres = self.target.startswith(("postgresql://", "postgres://"))
        with self._connect() as conn:
            conn.execute(_DDL if self.is_postgres else _DDL.replace("DOUBLE PRECISION", "REAL"))

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        """A connection inside one transaction: committed on success, rolled back on error."""
        if self.is_postgres:
            import psycopg

            with psycopg.connect(self.target, connect_timeout=10) as pg:  # commits on exit
                yield pg
            return
        lite = sqlite3.connect(self.target, timeout=30)
        try:
            with lite:  # commits or rolls back
                yield lite
        finally:
            lite.close()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.is_postgres else sql

    def get(self, sku: str) -> Product | None:
        with self._connect() as conn:
            sql = self._sql(f"SELECT {_COLUMNS} FROM inventory_products WHERE sku = ?")
            row = conn.execute(sql, (sku,)).fetchone()
        return None if row is None else Product(*row)

    def all(self) -> list[Product]:
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM inventory_products ORDER BY sku"
            ).fetchall()
        return [Product(*r) for r in rows]

    def upsert(
        self,
        products: Sequence[Product],
        *,
        progress: Callable[[int, int], None] | None = None,
        chunk: int = 4,
    ) -> list[str]:
        """Insert or update `products` in one transaction; return the SKUs that changed.

        Rows equal to what is stored are left alone (and not reported), so callers can
        invalidate exactly the changed products. `progress(done, total)` is called per chunk.
        """
        now = time.time()
        changed: list[str] = []
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM inventory_products").fetchall()
            current = {r[0]: Product(*r) for r in rows}
            upsert = self._sql(
                f"INSERT INTO inventory_products ({_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (sku) DO UPDATE SET name = excluded.name, stock = excluded.stock, "
                "price_cents = excluded.price_cents, updated_at = excluded.updated_at"
            )
            for start in range(0, len(products), chunk):
                for p in products[start : start + chunk]:
                    old = current.get(p.sku)
                    if old is not None and (old.name, old.stock, old.price_cents) == (
                        p.name,
                        p.stock,
                        p.price_cents,
                    ):
                        continue
                    conn.execute(upsert, (p.sku, p.name, p.stock, p.price_cents, now))
                    changed.append(p.sku)
                if progress is not None:
                    progress(min(start + chunk, len(products)), len(products))
        return changed
