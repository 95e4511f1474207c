"""Schedules: a fixed interval or a cron expression (parsed by `croniter`)."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

import attrs
from croniter import croniter


class Schedule(Protocol):
    """When a job is due: `next_after(t)` is the first due time strictly after `t`."""

    def next_after(self, t: float) -> float: ...


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(
            f"Interval.{attribute.name} must be a positive number of seconds, got {value!r}"
        )


@attrs.frozen
class Interval:
    """Every `seconds` seconds, counted from the previous due time (or from the first start)."""

    seconds: float = attrs.field(converter=float, validator=_positive)

    def next_after(self, t: float) -> float:
        return t + self.seconds


def _valid_cron(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not croniter.is_valid(value):
        raise ValueError(
            f"Cron: {value!r} is not a valid cron expression; use five fields "
            "'minute hour day-of-month month day-of-week', e.g. '*/15 * * * *'"
        )


@attrs.frozen
class Cron:
    """A cron expression (five fields, evaluated in UTC unless `utc_offset_minutes` is set)."""

    expression: str = attrs.field(validator=_valid_cron)
    utc_offset_minutes: int = 0

    def next_after(self, t: float) -> float:
        tz = dt.timezone(dt.timedelta(minutes=self.utc_offset_minutes))
        start = dt.datetime.fromtimestamp(t, tz)
        nxt: dt.datetime = croniter(self.expression, start).get_next(dt.datetime)
        return nxt.timestamp()
