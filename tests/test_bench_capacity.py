"""The capacity model behind docs/scaling.md (bench/capacity.py): its arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.capacity import (
    SECONDS_PER_MONTH,
    Farm,
    largest_standard_farm,
    steady_pack,
    table,
)


def test_the_issues_example_every_instance_takes_in_ten_thousand_envelopes() -> None:
    # 100 instances each doing 100 sets/s, no heartbeats: each receives the other 99's
    farm = Farm(100, 100 * 100, heartbeat_interval=0)
    assert farm.envelopes_per_second == 10_000
    assert farm.deliveries_per_second == 990_000
    assert farm.deliveries_per_second / farm.instances == 9_900


def test_operations_and_credits_per_envelope() -> None:
    farm = Farm(4, 1, heartbeat_interval=0)
    assert farm.billed_operations_per_second == 1 + 2 * 3  # send, then receive + complete x3
    assert farm.standard_credits_per_second == 1 + 4 + 3  # send, 4 filters, 3 deliveries
    assert farm.monthly_operations == 7 * SECONDS_PER_MONTH


def test_packing_divides_envelopes_but_not_heartbeats() -> None:
    unpacked, packed = Farm(30, 1000), Farm(30, 1000, pack=100)
    assert unpacked.envelopes_per_second == 1000 + 1  # 30 instances, one heartbeat per 30 s
    assert packed.envelopes_per_second == 10 + 1


def test_packed_keys_cost_the_per_key_figure_not_an_envelope() -> None:
    unpacked, packed = Farm(2, 100, heartbeat_interval=0), Farm(2, 100, 10, heartbeat_interval=0)
    # each of the two instances receives half of what the farm sends
    assert unpacked.instance_cores(1000, 5) == pytest.approx(50 * 1000 / 1e6)
    assert packed.instance_cores(1000, 5) == pytest.approx((5 * 1000 + 45 * 5) / 1e6)


def test_heartbeats_alone_fill_a_standard_namespace_at_122_instances() -> None:
    # N/30 heartbeats/s, each 2N credits: N^2/15 <= 1,000
    assert largest_standard_farm(0) == 122
    assert largest_standard_farm(1000) == 0
    assert largest_standard_farm(1000, pack=100) > largest_standard_farm(1000)


def test_steady_pack() -> None:
    assert steady_pack(100, 0.002, 100) == pytest.approx(1.2)
    assert steady_pack(1e6, 0.002, 100) == 100


def test_table_has_a_row_per_size_rate_and_packing() -> None:
    rows = table([10, 3000], [10, 100], 1000, 5, 100)
    assert len(rows) == 2 + 2 * 2 * 2
    assert "Standard" in rows[2]
    assert "beyond one topic" in rows[-1]


@given(
    n=st.integers(2, 2000),
    rate=st.floats(0, 1e5),
    pack=st.floats(1, 100),
    extra=st.integers(1, 100),
)
def test_more_instances_or_less_packing_never_cost_less(
    n: int, rate: float, pack: float, extra: int
) -> None:
    farm = Farm(n, rate, pack)
    bigger = Farm(n + extra, rate, pack)
    unpacked = Farm(n, rate)
    assert bigger.deliveries_per_second >= farm.deliveries_per_second
    assert bigger.standard_credits_per_second >= farm.standard_credits_per_second
    assert unpacked.envelopes_per_second >= farm.envelopes_per_second
    assert unpacked.billed_operations_per_second >= farm.billed_operations_per_second
