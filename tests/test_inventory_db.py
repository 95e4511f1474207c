"""The inventory database on SQLite and PostgreSQL: changed rows only, all-or-nothing upserts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from samples.inventory._db import InventoryDb, Product

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InventoryDb]:
    if request.param == "sqlite":
        yield InventoryDb(tmp_path / "inventory.sqlite3")
        return
    import psycopg

    schema = f"inventory_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: {exc} (run scripts/services.sh)")
    try:
        yield InventoryDb(f"{PG_URL}?options={quote(f'-csearch_path={schema}')}")
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_upsert_reports_only_changed_rows(db: InventoryDb) -> None:
    a, b = Product("SKU-1", "Shoe", 4, 1000), Product("SKU-2", "Cap", 7, 500)
    assert db.upsert([a, b]) == ["SKU-1", "SKU-2"]
    assert db.upsert([a, Product("SKU-2", "Cap", 6, 500)]) == ["SKU-2"]
    assert db.upsert([a]) == []
    assert [(p.sku, p.stock) for p in db.all()] == [("SKU-1", 4), ("SKU-2", 6)]
    assert db.get("SKU-404") is None


def test_a_failed_import_changes_nothing(db: InventoryDb) -> None:
    db.upsert([Product("SKU-1", "Shoe", 4, 1000)])

    def stop_halfway(done: int, total: int) -> None:
        if done < total:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        db.upsert(
            [Product("SKU-1", "Shoe", 1, 1000), Product("SKU-2", "Cap", 7, 500)],
            progress=stop_halfway,
            chunk=1,
        )
    assert [(p.sku, p.stock) for p in db.all()] == [("SKU-1", 4)]
