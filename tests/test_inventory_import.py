"""The inventory import job: bad rows reported and skipped, the rest upserted, changes invalidated."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from jobs import JobOutcome, JobProgress, JobScheduler, SchedulerOptions
from samples.inventory._db import InventoryDb
from samples.inventory._feed import PRODUCTS, InventoryFeed, stock_level
from samples.inventory._import_job import BadRow, InventoryImportJob, parse_feed
from samples.inventory._keys import ALL_PRODUCTS_KEY, product_key


class RecordingInvalidator:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def invalidate(self, keys: Iterable[str]) -> int:
        self.calls.append(list(keys))
        return len(self.calls[-1])


@pytest.fixture
def feed() -> Iterator[InventoryFeed]:
    with InventoryFeed() as feed:
        yield feed


def test_parse_reports_each_bad_row_with_line_and_reason() -> None:
    text = (
        "sku,name,stock,price\n"
        "SKU-1,Shoe,4,10.00\n"
        "SKU-2,Cap,-1,5\n"
        "bad sku,Tent,3,1\n"
        "SKU-3,,3,1\n"
        "SKU-4,Pole,lots,1\n"
        "SKU-5,Pack,3,1.999\n"
        "SKU-1,Shoe again,4,10.00\n"
        "SKU-6,Short row\n"
        "SKU-7,Sock,0,0.50\n"
    )
    products, bad = parse_feed(text)
    assert [(p.sku, p.stock, p.price_cents) for p in products] == [
        ("SKU-1", 4, 1000),
        ("SKU-7", 0, 50),
    ]
    assert bad == [
        BadRow(3, "stock -1 is negative"),
        BadRow(4, "sku 'bad sku' is not an upper-case code like 'SKU-001'"),
        BadRow(5, "name is empty"),
        BadRow(6, "stock 'lots' is not a whole number"),
        BadRow(7, "price 1.999 must be >= 0 with at most two decimals"),
        BadRow(8, "sku SKU-1 appears twice"),
        BadRow(9, "expected 4 fields, got 2"),
    ]


def test_import_job_skips_bad_rows_upserts_and_invalidates_changed(
    tmp_path: Path, feed: InventoryFeed
) -> None:
    db = InventoryDb(tmp_path / "inventory.sqlite3")
    invalidator = RecordingInvalidator()
    job = InventoryImportJob(feed_url=feed.url, db=db, invalidator=invalidator)
    scheduler = JobScheduler(
        [job], store=tmp_path / "jobs.sqlite3", options=SchedulerOptions(instance_id="job-1")
    )
    progress: list[JobProgress] = []
    scheduler.on_progress(progress.append)

    scheduler.run_now(job.id)
    [first] = scheduler.run_pending()
    assert first.outcome is JobOutcome.SUCCEEDED, first.status_message
    assert (
        "skipped 2 bad rows (line 6: stock -4 is negative; line 11: sku 'sku 13'"
        in first.status_message
    )
    assert len(db.all()) == len(PRODUCTS)
    assert (
        invalidator.calls[0][-1] == ALL_PRODUCTS_KEY
        and len(invalidator.calls[0]) == len(PRODUCTS) + 1
    )
    assert progress[-1].done == progress[-1].total == len(PRODUCTS)

    feed.generation = 2
    scheduler.run_now(job.id)
    [second] = scheduler.run_pending()
    assert second.outcome is JobOutcome.SUCCEEDED
    assert job.last_report is not None
    changed = [sku for i, (sku, _) in enumerate(PRODUCTS) if stock_level(i, 2) != stock_level(i, 1)]
    assert 0 < len(changed) < len(PRODUCTS)
    assert list(job.last_report.changed) == changed
    assert invalidator.calls[1] == [*map(product_key, changed), ALL_PRODUCTS_KEY]
    assert db.get("SKU-001") is not None and db.get("SKU-001").stock == stock_level(0, 2)  # type: ignore[union-attr]

    feed.failing = True
    scheduler.run_now(job.id)
    [failed] = scheduler.run_pending()
    assert failed.outcome is JobOutcome.FAILED
    assert failed.status_message == "ImportFailed: inventory system answered HTTP 503"
    assert len(invalidator.calls) == 2  # nothing imported, nothing invalidated
    scheduler.stop()


def test_a_stopped_import_rolls_back_and_invalidates_nothing(
    tmp_path: Path, feed: InventoryFeed
) -> None:
    db = InventoryDb(tmp_path / "inventory.sqlite3")
    invalidator = RecordingInvalidator()
    job = InventoryImportJob(feed_url=feed.url, db=db, invalidator=invalidator)
    scheduler = JobScheduler([job], store=tmp_path / "jobs.sqlite3")
    # an operator presses "stop" as soon as the first rows are written
    scheduler.on_progress(lambda p: p.done and scheduler.request_stop(job.id))
    scheduler.run_now(job.id)
    [run] = scheduler.run_pending()
    assert run.outcome is JobOutcome.STOPPED
    assert db.all() == [] and invalidator.calls == []
    scheduler.stop()
