"""Property tests of the feed parser: good rows imported exactly, every bad row named by line."""

from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st

from samples.inventory._import_job import parse_feed

skus = st.from_regex(r"[A-Z0-9][A-Z0-9-]{0,12}", fullmatch=True)
names = st.text(alphabet="abcXYZ ,;'-", min_size=1, max_size=12).map(str.strip).filter(bool)
good = st.tuples(skus, names, st.integers(0, 10**6), st.integers(0, 10**7))
bad = st.sampled_from(
    [
        (["SKU-X", "Thing", "-1", "1.00"], "negative"),
        (["lower", "Thing", "1", "1.00"], "upper-case code"),
        (["SKU-Y", "", "1", "1.00"], "name is empty"),
        (["SKU-Z", "Thing", "x", "1.00"], "not a whole number"),
        (["SKU-W", "Thing", "1", "abc"], "not a number"),
        (["SKU-V", "Thing", "1"], "expected 4 fields"),
    ]
)
rows = st.lists(
    st.one_of(good.map(lambda g: ("good", g)), bad.map(lambda b: ("bad", b))), max_size=25
)


@given(rows)
def test_parse_keeps_good_rows_and_names_each_bad_line(spec: list[tuple[str, object]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sku", "name", "stock", "price"])
    expected_products, expected_bad, seen = [], [], set()
    for line, (kind, row) in enumerate(spec, start=2):
        if kind == "good":
            sku, name, stock, cents = row  # type: ignore[misc]
            writer.writerow([sku, name, stock, f"{cents // 100}.{cents % 100:02d}"])
            if sku in seen:
                expected_bad.append((line, "appears twice"))
            else:
                seen.add(sku)
                expected_products.append((sku, name, stock, cents))
        else:
            fields, reason = row  # type: ignore[misc]
            writer.writerow(fields)
            expected_bad.append((line, reason))
    products, bad_rows = parse_feed(out.getvalue())
    assert [(p.sku, p.name, p.stock, p.price_cents) for p in products] == expected_products
    assert [b.line for b in bad_rows] == [line for line, _ in expected_bad]
    for b, (_, reason) in zip(bad_rows, expected_bad, strict=True):
        assert reason in b.reason
