"""One settings mechanism for every options class of the library (and the sample).

Each attrs field that can come from the environment names its variable in its metadata
(`env("CACHE_NAME")`); its validators state the rule, so the constructor and `from_env` refuse
the same values; a secret field prints as ``<hidden>`` in reprs and errors, a URL field with its
password replaced by ``***``. Classes inherit `from_env` from `EnvSettings`:

* ``from_env(environ=None, **overrides)``: keyword arguments win, then the variables, then the
  defaults; an empty variable counts as unset;
* booleans: ``true/false``, ``1/0``, ``yes/no``, ``on/off`` in any case, nothing else;
* integers: digits only (``2.5`` or ``1e3`` are refused); numbers: never NaN, infinity only
  where the field's validator allows it; ``none`` for a number that may be None;
* every refusal names the variable, the value (hidden for a secret) and what is expected:
  ``CACHE_FAIL_SAFE='maybe' is not a boolean: expected true/false, 1/0, yes/no or on/off``.

It lives in `cache` because `cache` must not import `eventbroker` while `eventbroker` and `jobs`
may import `cache` (as `cache._health`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NoReturn, Self

import attrs

from ._redact import redact_url

HIDDEN = "<hidden>"
"""What a secret shows instead of its value."""

BOOLEAN_WORDS = "true/false, 1/0, yes/no or on/off"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NONE = "none"

_ENV = "env"
_SECRECY = "env_secrecy"
_PARSER = "env_parser"
_GROUP = "env_group"
SECRET = "secret"
URL = "url"


@attrs.frozen
class Parser:
    """Turns the text of a variable into a value, or says what it expected."""

    noun: str
    """What the value must be, with its article: ``a boolean``."""
    expected: str
    """The accepted forms: ``true/false, 1/0, yes/no or on/off``; ``{example}`` stands for the
    field's default (or `example` when it has none)."""
    parse: Callable[[str], Any]
    """Returns the value; raises `ValueError` when the text is not one of the accepted forms."""
    example: str = ""

    def refusal(self, variable: str, shown_value: str, default: object = None) -> str:
        """``VARIABLE='value' is not <noun>: expected <forms>``."""
        example = self.example
        if isinstance(default, int | float) and not isinstance(default, bool):
            example = repr(default)
        expected = self.expected.format(example=example)
        return f"{variable}={shown_value} is not {self.noun}: expected {expected}"


def _parse_bool(text: str) -> bool:
    word = text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(text)


def _parse_int(text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError(text)
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)  # ValueError for garbage; accepts "inf" (validators decide)
    if math.isnan(value):
        raise ValueError(text)
    return value


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.lower() == _NONE else parse(text)

    return parse_optional


BOOLEAN = Parser("a boolean", BOOLEAN_WORDS, _parse_bool)
INTEGER = Parser("an integer", "a whole number such as {example}", _parse_int, "10")
NUMBER = Parser("a number", "a decimal number such as {example}", _parse_float, "2.5")
OPTIONAL_NUMBER = Parser(
    "a number", "a decimal number such as {example}, or none", _optional(_parse_float), "2.5"
)
TEXT = Parser("a text", "any text", str)

_BY_TYPE = {
    "bool": BOOLEAN,
    "int": INTEGER,
    "float": NUMBER,
    "float | None": OPTIONAL_NUMBER,
    "str": TEXT,
    "str | None": TEXT,
}
"""The parser of a field, by its annotation (the modules use ``from __future__ import
annotations``, so attrs keeps annotations as text)."""


def env(
    variable: str,
    *,
    secret: bool = False,
    url: bool = False,
    parser: Parser | None = None,
) -> dict[str, Any]:
    """Field metadata: the field comes from `variable`.

    `secret`: the value is never shown (give the field ``repr=hidden_repr``); `url`: shown with
    its credentials redacted (``repr=url_repr``); `parser`: for a type other than bool, int,
    float, str and their optional forms.
    """
    metadata: dict[str, Any] = {_ENV: variable}
    if secret:
        metadata[_SECRECY] = SECRET
    elif url:
        metadata[_SECRECY] = URL
    if parser is not None:
        metadata[_PARSER] = parser
    return metadata


def env_group(cls: type[EnvSettings]) -> dict[str, Any]:
    """Field metadata: the field is a `cls` whose own fields come from the environment."""
    return {_GROUP: cls}


def hidden_repr(value: object) -> str:
    """The repr of a secret field: ``<hidden>`` (or ``None``)."""
    return "None" if value is None else HIDDEN


def url_repr(value: object) -> str:
    """The repr of a URL field: the URL with its password replaced by ``***``."""
    return repr(redact_url(value)) if isinstance(value, str) else repr(value)


def shown(text: str, secrecy: str | None) -> str:
    """How a value from the environment appears in an error."""
    if secrecy == SECRET:
        return HIDDEN
    if secrecy == URL:
        return repr(redact_url(text))
    return repr(text)


@attrs.frozen
class EnvField:
    """One field of an options class that comes from the environment."""

    name: str
    variable: str
    parser: Parser
    secrecy: str | None
    attribute: attrs.Attribute[Any]


def env_fields(cls: type[Any]) -> tuple[EnvField, ...]:
    """The fields of the attrs class `cls` that name a variable (`TypeError` for a field whose
    type has no parser: a programming mistake, found by the tests walking every class)."""
    found = []
    for field in attrs.fields(cls):
        variable = field.metadata.get(_ENV)
        if variable is None:
            continue
        parser = field.metadata.get(_PARSER) or _BY_TYPE.get(str(field.type))
        if parser is None:
            raise TypeError(
                f"{cls.__name__}.{field.name} ({field.type}) needs env(..., parser=...)"
            )
        found.append(EnvField(field.name, variable, parser, field.metadata.get(_SECRECY), field))
    return tuple(found)


def group_fields(cls: type[Any]) -> tuple[tuple[str, type[EnvSettings]], ...]:
    """The fields of `cls` that are options classes read from the environment themselves."""
    return tuple(
        (field.name, field.metadata[_GROUP])
        for field in attrs.fields(cls)
        if _GROUP in field.metadata
    )


def refuse(
    error: type[Exception],
    instance: object,
    attribute: attrs.Attribute[Any],
    value: object,
    rule: str,
) -> NoReturn:
    """Raise `error`: ``Owner.field must be <rule>, got <value>`` (the value hidden for a
    secret field). Without an instance (`from_env` checking one value, naming its variable
    itself): ``must be <rule>, got <value>``."""
    secret = attribute.metadata.get(_SECRECY) == SECRET
    got = HIDDEN if secret else repr(value)
    owner = "" if instance is None else f"{type(instance).__name__}.{attribute.name} "
    raise error(f"{owner}must be {rule}, got {got}")


Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def number(
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    infinite_ok: bool = False,
    what: str = "a finite number",
    note: str = "",
    error: type[Exception] = ValueError,
) -> Validator:
    """A validator: an int or float (never a bool), never NaN, finite unless `infinite_ok`,
    within the bounds given; `None` passes (the field's type says whether it may be None).
    A wrong type raises `TypeError`, a value out of range `error`."""
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum:g}")
    if above is not None:
        bounds.append(f"> {above:g}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
    if below is not None:
        bounds.append(f"< {below:g}")
    rule = " ".join([what, " and ".join(bounds)]).strip() + (f" ({note})" if note else "")

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            refuse(TypeError, instance, attribute, value, rule)
        try:
            as_float = float(value)
        except OverflowError:  # an int beyond float
            as_float = math.inf if value > 0 else -math.inf
        in_range = (
            (minimum is None or as_float >= minimum)
            and (above is None or as_float > above)
            and (maximum is None or as_float <= maximum)
            and (below is None or as_float < below)
        )  # every comparison is False for NaN
        if not in_range or math.isnan(as_float) or not (infinite_ok or math.isfinite(as_float)):
            refuse(error, instance, attribute, value, rule)

    return check


def integer(
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    note: str = "",
    error: type[Exception] = ValueError,
) -> Validator:
    """A validator: an int (never a bool or a float) within the bounds; `None` passes."""
    bounds = [f">= {minimum}"] if minimum is not None else []
    bounds += [f"<= {maximum}"] if maximum is not None else []
    rule = " ".join(["an int", " and ".join(bounds)]).strip() + (f" ({note})" if note else "")

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            refuse(TypeError, instance, attribute, value, rule)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            refuse(error, instance, attribute, value, rule)

    return check


class EnvSettings:
    """Base of the options classes readable from the environment.

    A subclass is an attrs class whose fields carry `env(...)` metadata; `settings_error` is the
    error its `from_env` raises (a `ValueError` subclass)."""

    __slots__ = ()
    settings_error: ClassVar[type[ValueError]] = ValueError

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Options from the environment variables named by the fields; keyword arguments win.

        An empty variable counts as unset. A refused value raises `settings_error` naming the
        variable, the value (never a secret's) and what is expected."""
        values, read = read_env(cls, os.environ if environ is None else environ, overrides)
        try:
            return cls(**values)
        except ValueError as exc:  # a rule across fields: say which variables set them
            named = [v for name, v in read.items() if re.search(rf"\b{name}\b", str(exc))]
            if not named:
                raise
            raise type(exc)(f"{exc} (set by {', '.join(named)})") from None


def read_env(
    cls: type[Any], environ: Mapping[str, str], overrides: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The keyword arguments of `cls` from `environ`, `overrides` winning, and the variables
    read by field name. Each value read is checked by the field's converter and validators on
    its own, so a refusal names its variable."""
    error = cls.settings_error
    values: dict[str, Any] = {}
    read: dict[str, str] = {}
    for name, group in group_fields(cls):
        if name not in overrides:
            values[name] = group.from_env(environ)
    for field in env_fields(cls):
        if field.name in overrides:
            continue
        text = environ.get(field.variable, "").strip()
        if not text:
            continue
        values[field.name] = _read(cls, field, text, error)
        read[field.name] = field.variable
    values.update(overrides)
    for field in attrs.fields(cls):
        if field.default is attrs.NOTHING and field.name not in values:
            variable = field.metadata.get(_ENV)
            how = f"set {variable} or pass" if variable else "pass"
            raise error(f"{cls.__name__}.{field.name} is not set: {how} {field.name}=...")
    return values, read


def _read(cls: type[Any], field: EnvField, text: str, error: type[ValueError]) -> Any:
    value_shown = shown(text, field.secrecy)
    try:
        value = field.parser.parse(text)
    except (ValueError, OverflowError):
        default = field.attribute.default
        raise error(field.parser.refusal(field.variable, value_shown, default)) from None
    attribute = field.attribute
    try:
        if attribute.converter is not None:
            value = attribute.converter(value)  # type: ignore[operator]
        if attribute.validator is not None:
            attribute.validator(None, attribute, value)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if field.secrecy == SECRET:
            message = message.replace(text, HIDDEN)
        kind = type(exc) if isinstance(exc, error) else error
        raise kind(
            f"{field.variable}={value_shown} is not valid for {cls.__name__}.{field.name}: "
            f"{message}"
        ) from None
    return value


def process_environ() -> Mapping[str, str]:
    """The process's environment: for code that passes settings on as a whole (a command line
    that adjusts some of them for its own broker); read single settings with `read_variable`."""
    return os.environ


def read_variable(
    variable: str,
    parser: Parser = TEXT,
    environ: Mapping[str, str] | None = None,
    *,
    default: Any = None,
    secrecy: str | None = None,
    error: type[ValueError] = ValueError,
) -> Any:
    """One setting outside an options class (a command-line default, a URL): the parsed value
    of `variable`, or `default` when it is unset or empty; refusals as in
    `EnvSettings.from_env`."""
    env_map = os.environ if environ is None else environ
    text = env_map.get(variable, "").strip()
    if not text:
        return default
    try:
        return parser.parse(text)
    except (ValueError, OverflowError):
        raise error(parser.refusal(variable, shown(text, secrecy), default)) from None
