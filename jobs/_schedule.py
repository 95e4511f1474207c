"""Schedules: a fixed interval or a cron expression (checked here, evaluated by `croniter`)."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from croniter import croniter as Croniter


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


def _croniter() -> type[Croniter]:
    """The `croniter` class, imported on first use: it comes with the ``[jobs]`` extra."""
    try:
        from croniter import croniter
    except ImportError as exc:
        raise ModuleNotFoundError(
            'Cron schedules need the croniter package: pip install "eventbroker-cache[jobs]"',
            name="croniter",
        ) from exc
    return croniter


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@attrs.frozen
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = attrs.field(factory=dict)
    extras: str = ""
    """What else the field takes (croniter's extensions), for the error message."""

    @property
    def max_step(self) -> int:
        # a larger step selects only the first value: almost surely a mistake
        return min(self.high, 6 if self.name == "day-of-week" else self.high) - self.low

    def allowed(self) -> str:
        names = f" or names {self.names_range()}" if self.names else ""
        extras = f"; also {self.extras}" if self.extras else ""
        return (
            f"values {self.low}-{self.high}{names}, steps 1-{self.max_step}, "
            f"e.g. '*', '5', '1-5', '*/2', '1,3'{extras}"
        )

    def names_range(self) -> str:
        keys = list(self.names)
        return f"{keys[0]}-{keys[-1]}".upper()


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31, extras="'?' (any) and 'L' (the last day)"),
    _Field("month", 1, 12, {m: i for i, m in enumerate(_MONTHS, 1)}),
    _Field(
        "day-of-week",
        0,
        7,
        {d: i for i, d in enumerate(_DAYS)},
        extras="'?' (any), 'D#N' (the Nth weekday D) and 'LD' (the last weekday D); 0 and 7 are Sunday",
    ),
)
_WORD = "[0-9A-Za-z]+"
_ITEM = re.compile(rf"(?P<base>\*|{_WORD}(?:-{_WORD})?)(?:/(?P<step>{_WORD}))?")
_NTH = re.compile(rf"(?P<day>{_WORD})#(?P<week>[0-9]+)")
_LAST = re.compile(r"[Ll](?P<day>[0-9])")


class _BadField(ValueError):
    pass


def _value(field: _Field, text: str) -> int:
    if text.isascii() and text.isdigit():
        number = int(text)
    elif text.lower() in field.names:
        number = field.names[text.lower()]
    else:
        raise _BadField(f"{text!r} is not a number{' or a name' if field.names else ''}")
    if not field.low <= number <= field.high:
        raise _BadField(f"{text!r} is out of range")
    return number


def _check_item(field: _Field, item: str) -> None:
    if item == "?" and field.name in ("day-of-month", "day-of-week"):
        return
    if item.upper() == "L" and field.name == "day-of-month":
        return
    if field.name == "day-of-week":
        nth = _NTH.fullmatch(item)
        if nth:
            _value(field, nth.group("day"))
            if not 1 <= int(nth.group("week")) <= 5:
                raise _BadField(f"{item!r}: the week number after '#' must be 1-5")
            return
        last_day = _LAST.fullmatch(item)
        if last_day:
            _value(field, last_day.group("day"))
            return
    match = _ITEM.fullmatch(item)
    if match is None:
        raise _BadField(f"{item!r} is not a value, range, step or list")
    base, step = match.group("base"), match.group("step")
    if base != "*":
        first, _, last = base.partition("-")
        low = _value(field, first)
        if last and _value(field, last) < low:
            raise _BadField(f"the range {base!r} runs backwards")
    if step is not None and not (
        step.isascii() and step.isdigit() and 1 <= int(step) <= field.max_step
    ):
        raise _BadField(f"the step {step!r} is out of range")


def _valid_cron(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"Cron: the expression must be a str, got {value!r}")
    parts = value.split()
    if len(parts) != len(_FIELDS):
        raise ValueError(
            f"Cron: {value!r} is not a valid cron expression: it has {len(parts)} field(s); "
            "use exactly five, 'minute hour day-of-month month day-of-week', "
            "e.g. '*/15 * * * *' (no seconds field, no '@hourly' aliases)"
        )
    for field, part in zip(_FIELDS, parts, strict=True):
        try:
            for item in part.split(","):
                _check_item(field, item)
        except _BadField as exc:
            raise ValueError(
                f"Cron: {value!r} is not a valid cron expression: the {field.name} field "
                f"{part!r} is wrong ({exc}); the {field.name} field takes {field.allowed()}"
            ) from None
    croniter = _croniter()
    if not croniter.is_valid(value):
        raise ValueError(
            f"Cron: {value!r} is not a valid cron expression: croniter cannot read it; "
            "use plain values, ranges, steps and lists, e.g. '*/15 * * * *'"
        )
    try:
        croniter(value, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).get_next(float)
    except Exception:
        raise ValueError(
            f"Cron: {value!r} is not a valid cron expression: it never matches a date; "
            "check the day-of-month and month fields (e.g. February has no 30th)"
        ) from None


def _valid_offset(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or not -1440 < value < 1440:
        raise ValueError(
            f"Cron.utc_offset_minutes must be whole minutes between -1439 and 1439, got {value!r}"
        )


@attrs.frozen
class Cron:
    """A cron expression: exactly five fields, evaluated in UTC unless `utc_offset_minutes` is set.

    ``minute (0-59) hour (0-23) day-of-month (1-31) month (1-12 or JAN-DEC)
    day-of-week (0-7 or SUN-SAT; 0 and 7 are Sunday)``; each field is ``*``, a value, a range
    ``a-b``, any of those with a step ``/n``, or a comma-separated list of them. Anything else,
    a value or step out of its field's range, or a sixth field raises `ValueError` naming the
    field. Needs the ``[jobs]`` extra (`croniter`).
    """

    expression: str = attrs.field(validator=_valid_cron)
    utc_offset_minutes: int = attrs.field(default=0, validator=_valid_offset)

    def next_after(self, t: float) -> float:
        tz = dt.timezone(dt.timedelta(minutes=self.utc_offset_minutes))
        start = dt.datetime.fromtimestamp(t, tz)
        nxt: dt.datetime = _croniter()(self.expression, start).get_next(dt.datetime)
        return nxt.timestamp()
