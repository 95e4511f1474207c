"""`InventoryImportJob`: fetch the feed, validate, upsert in one transaction, invalidate."""

from __future__ import annotations

import csv
import io
import re
import time
import uuid
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Protocol

import attrs
import httpx

from jobs import JobContext, Schedule, ScheduledJob

from ._db import InventoryDb, Product
from ._keys import ALL_PRODUCTS_KEY, product_key

_SKU = re.compile(r"^[A-Z0-9][A-Z0-9-]{0,31}$")
HEADER = ("sku", "name", "stock", "price")


class Invalidator(Protocol):
    """What the job needs to tell every instance which keys are stale (`jobs.CacheInvalidator`)."""

    def invalidate(self, keys: Iterable[str]) -> int: ...


@attrs.frozen
class BadRow:
    """A feed row that was skipped: its line in the CSV and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@attrs.frozen
class ImportReport:
    """What one import did."""

    rows: int
    """Valid rows read from the feed."""
    changed: tuple[str, ...]
    """SKUs whose row changed (these keys were invalidated)."""
    bad_rows: tuple[BadRow, ...]
    invalidated_keys: int = 0

    def summary(self) -> str:
        text = f"imported {self.rows} rows, {len(self.changed)} changed"
        if self.bad_rows:
            text += (
                f"; skipped {len(self.bad_rows)} bad rows ({'; '.join(map(str, self.bad_rows))})"
            )
        return text


class ImportFailed(Exception):
    """The feed could not be fetched or read as a whole; nothing was imported."""


def parse_feed(text: str) -> tuple[list[Product], list[BadRow]]:
    """Validate the CSV: good rows as products, bad rows with their line and reason."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFailed(
            "the feed is empty (expected a header line 'sku,name,stock,price')"
        ) from None
    if tuple(h.strip().lower() for h in header) != HEADER:
        raise ImportFailed(f"unexpected header {header!r}; expected {','.join(HEADER)!r}")
    products: list[Product] = []
    bad: list[BadRow] = []
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        reason = _invalid(row, seen)
        if reason:
            bad.append(BadRow(line, reason))
            continue
        sku, name, stock, price = (c.strip() for c in row)
        seen.add(sku)
        products.append(Product(sku, name, int(stock), int(Decimal(price) * 100)))
    return products, bad


def _invalid(row: list[str], seen: set[str]) -> str | None:
    if len(row) != len(HEADER):
        return f"expected {len(HEADER)} fields, got {len(row)}"
    sku, name, stock, price = (c.strip() for c in row)
    if not _SKU.match(sku):
        return f"sku {sku!r} is not an upper-case code like 'SKU-001'"
    if sku in seen:
        return f"sku {sku} appears twice"
    if not name:
        return "name is empty"
    if not stock.lstrip("-").isdigit():
        return f"stock {stock!r} is not a whole number"
    if int(stock) < 0:
        return f"stock {stock} is negative"
    try:
        amount = Decimal(price)
    except InvalidOperation:
        return f"price {price!r} is not a number"
    if amount < 0 or amount != amount.quantize(Decimal("0.01")):
        return f"price {price} must be >= 0 with at most two decimals"
    return None


class InventoryImportJob(ScheduledJob):
    """Imports the external inventory feed into the database, then invalidates changed keys."""

    id = uuid.UUID("6f1d2c3b-8a4e-4f5d-9b6a-7c8d9e0f1a2b")
    name = "Inventory import"
    description = "Fetches stock levels from the inventory system and updates the product table."
    stoppable = True
    restartable = True

    def __init__(
        self,
        *,
        feed_url: str,
        db: InventoryDb,
        invalidator: Invalidator | None,
        schedule: Schedule | None = None,
        timeout: float = 10.0,
        chunk_pause: float = 0.0,
    ) -> None:
        self.feed_url = feed_url.rstrip("/")
        self.db = db
        self.invalidator = invalidator
        self.schedule = schedule
        self.timeout = timeout
        self.chunk_pause = chunk_pause
        """Seconds to pause between upsert chunks (paces a busy database)."""
        self.last_report: ImportReport | None = None

    def fetch(self) -> str:
        url = f"{self.feed_url}/inventory.csv"
        try:
            response = httpx.get(url, timeout=self.timeout)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise ImportFailed(
                f"inventory system answered HTTP {exc.response.status_code}"
            ) from exc
        except httpx.HTTPError as exc:
            raise ImportFailed(f"inventory system unreachable at {url}: {exc}") from exc
        return response.text

    def execute(self, ctx: JobContext) -> str:
        ctx.report_status("fetching the feed")
        products, bad = parse_feed(self.fetch())
        for row in bad:
            ctx.report_status(f"skipping {row}")
        ctx.raise_if_stop_requested()
        ctx.report_status(f"upserting {len(products)} rows")

        def progress(done: int, total: int) -> None:
            ctx.report_progress(done, total)
            if self.chunk_pause and done < total:
                time.sleep(self.chunk_pause)
            ctx.raise_if_stop_requested()  # inside the transaction: a stop rolls it back

        changed = self.db.upsert(products, progress=progress)
        keys = [product_key(sku) for sku in changed]
        if keys:
            keys.append(ALL_PRODUCTS_KEY)
        sent = self.invalidator.invalidate(keys) if self.invalidator and keys else 0
        report = ImportReport(len(products), tuple(changed), tuple(bad), sent)
        self.last_report = report
        return report.summary()
