"""Cron expressions: exactly five fields, each within its range, or a ValueError that says so."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs import Cron

T = dt.datetime(2026, 3, 2, 10, 0, 30, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("expression", "field", "allowed"),
    [
        ("*/15 * * * * *", None, "exactly five"),  # a seconds field: ran every second
        ("0 */15 * * * *", None, "exactly five"),
        ("* * * *", None, "exactly five"),
        ("@hourly", None, "exactly five"),
        ("*/61 * * * *", "minute", "steps 1-59"),  # ran hourly
        ("*/60 * * * *", "minute", "steps 1-59"),
        ("*/0 * * * *", "minute", "steps 1-59"),
        ("60 * * * *", "minute", "values 0-59"),
        ("0-60 * * * *", "minute", "values 0-59"),
        ("5-1 * * * *", "minute", "values 0-59"),
        ("x * * * *", "minute", "values 0-59"),
        ("0 24 * * *", "hour", "values 0-23"),
        ("0 */24 * * *", "hour", "steps 1-23"),
        ("0 0 0 * *", "day-of-month", "values 1-31"),
        ("0 0 32 * *", "day-of-month", "values 1-31"),
        ("0 0 * 13 *", "month", "values 1-12 or names JAN-DEC"),
        ("0 0 * foo *", "month", "values 1-12 or names JAN-DEC"),
        ("0 0 * * 8", "day-of-week", "values 0-7 or names SUN-SAT"),
        ("0 0 * * */7", "day-of-week", "steps 1-6"),
        ("0 0 * * 1#6", "day-of-week", "values 0-7"),
        ("0 0 * * 1,,2", "day-of-week", "values 0-7"),
    ],
)
def test_bad_expressions_name_the_field_and_the_allowed_range(
    expression: str, field: str | None, allowed: str
) -> None:
    with pytest.raises(ValueError, match="not a valid cron expression") as info:
        Cron(expression)
    message = str(info.value)
    assert repr(expression) in message and allowed in message
    if field is not None:
        assert f"the {field} field" in message


def test_an_expression_that_never_matches_is_refused() -> None:
    with pytest.raises(ValueError, match="never matches a date"):
        Cron("0 0 30 2 *")


@pytest.mark.parametrize(
    ("expression", "next_due"),
    [
        ("*/15 * * * *", dt.datetime(2026, 3, 2, 10, 15, tzinfo=dt.UTC)),
        ("*/59 * * * *", dt.datetime(2026, 3, 2, 10, 59, tzinfo=dt.UTC)),
        ("5-55/10 9-17 * * *", dt.datetime(2026, 3, 2, 10, 5, tzinfo=dt.UTC)),
        ("0 9 * * mon-fri", dt.datetime(2026, 3, 3, 9, 0, tzinfo=dt.UTC)),
        ("0 0 1 jan,JUL *", dt.datetime(2026, 7, 1, tzinfo=dt.UTC)),
        ("0 0 * * 7", dt.datetime(2026, 3, 8, tzinfo=dt.UTC)),  # 7 is Sunday
        ("0 0 L * *", dt.datetime(2026, 3, 31, tzinfo=dt.UTC)),
        ("0 0 ? * 1#2", dt.datetime(2026, 3, 9, tzinfo=dt.UTC)),
        ("  0   0 * * *  ", dt.datetime(2026, 3, 3, tzinfo=dt.UTC)),
    ],
)
def test_good_expressions_run_on_their_slots(expression: str, next_due: dt.datetime) -> None:
    assert Cron(expression).next_after(T) == next_due.timestamp()


def test_utc_offset_is_whole_minutes_within_a_day() -> None:
    assert Cron("0 9 * * *", utc_offset_minutes=60).next_after(T) == (
        dt.datetime(2026, 3, 3, 8, 0, tzinfo=dt.UTC).timestamp()
    )
    with pytest.raises(ValueError, match="utc_offset_minutes"):
        Cron("0 9 * * *", utc_offset_minutes=1440)


@given(st.text(max_size=40))
def test_any_text_is_a_cron_or_a_value_error(text: str) -> None:
    try:
        cron = Cron(text)
    except ValueError:
        return
    assert cron.next_after(T) > T


FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


@st.composite
def cron_field(draw: st.DrawFn, index: int) -> str:
    low, high = FIELDS[index]
    max_step = (6 if index == 4 else high) - low
    kind = draw(st.sampled_from(["star", "value", "range", "step"]))
    if kind == "star":
        return "*"
    a = draw(st.integers(low, high))
    if kind == "value":
        return str(a)
    b = draw(st.integers(a, high))
    if kind == "range":
        return f"{a}-{b}"
    return f"{draw(st.sampled_from(['*', f'{a}-{b}']))}/{draw(st.integers(1, max_step))}"


@given(st.tuples(*(cron_field(i) for i in range(5))))
def test_every_in_range_expression_is_accepted(fields: tuple[str, ...]) -> None:
    expression = " ".join(fields)
    try:
        cron = Cron(expression)
    except ValueError as exc:  # only an impossible date (e.g. 31 in a 30-day month) may fail
        assert "never matches a date" in str(exc)
        return
    due = dt.datetime.fromtimestamp(cron.next_after(T), dt.UTC)
    assert due.timestamp() > T and due.second == 0
