"""Subscription rules of the loopback Service Bus broker: TrueFilter, FalseFilter,
CorrelationFilter and a subset of the SQL filter language.

SQL subset: ``=  <>  !=  <  <=  >  >=``, ``IS [NOT] NULL``, ``[NOT] IN (...)``,
``[NOT] LIKE 'pattern'`` (``%`` and ``_``), ``EXISTS(property)``, ``AND``, ``OR``, ``NOT``,
parentheses, string / number / ``TRUE`` / ``FALSE`` / ``NULL`` literals, ``@parameters``,
``sys.<property>`` (MessageId, CorrelationId, To, ReplyTo, Label, Subject, SessionId,
ReplyToSessionId, ContentType) and ``user.<property>`` or a bare name for application
properties. Comparisons with NULL are unknown, as in SQL; a rule matches when it is true.

Rule actions (SqlRuleAction): ``SET <property> = <expression>`` and ``REMOVE <property>``
statements separated by ``;``, on application properties; an expression is an operand as
above, or operands joined by ``+ - * /``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import attrs
from proton import Message

__all__ = [
    "DEFAULT_RULE",
    "Action",
    "MessageView",
    "Rule",
    "RuleError",
    "compile_action",
    "parse_rule",
]

_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_TRUE_FILTER_XML = (
    '<Filter xsi:type="TrueFilter"><SqlExpression>1=1</SqlExpression>'
    "<CompatibilityLevel>20</CompatibilityLevel></Filter>"
    '<Action xsi:type="EmptyRuleAction"/><Name>$Default</Name>'
)

MessageView = tuple[dict[str, Any], dict[str, Any]]  # (system properties, application properties)
Predicate = Callable[[MessageView], bool | None]
# what an action does to a message: application properties to set, and to remove
Action = Callable[[MessageView], tuple[dict[str, Any], set[str]]]


class RuleError(ValueError):
    """A rule the loopback broker cannot parse or does not support."""


@attrs.frozen
class Rule:
    """A named subscription rule: its RuleDescription children (XML, echoed to the admin
    client) and the compiled filter."""

    name: str
    description_xml: str
    predicate: Predicate = attrs.field(eq=False, repr=False)
    accepts_all: bool = False
    action: Action | None = attrs.field(default=None, eq=False, repr=False)

    def matches(self, view: MessageView) -> bool:
        return self.accepts_all or self.predicate(view) is True


DEFAULT_RULE = Rule("$Default", _TRUE_FILTER_XML, lambda _view: True, accepts_all=True)


def message_view(bare: bytes) -> MessageView:
    """Decode the properties a filter can look at from a bare message."""
    message = Message()
    message.decode(bare)
    system = {
        "messageid": _text(message.id),
        "correlationid": _text(message.correlation_id),
        "to": _text(message.address),
        "replyto": _text(message.reply_to),
        "label": _text(message.subject),
        "subject": _text(message.subject),
        "sessionid": _text(message.group_id),
        "replytosessionid": _text(message.reply_to_group_id),
        "contenttype": _text(message.content_type),
    }
    properties: dict[Any, Any] = dict(message.properties or {})
    user = {str(k).lower(): _plain(v) for k, v in properties.items()}
    return system, user


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


# ---- RuleDescription XML ------------------------------------------------------------------
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _typed_value(value: ET.Element) -> Any:
    kind = (value.get(_XSI_TYPE) or "").rsplit(":", 1)[-1].lower()
    text = value.text or ""
    if kind in ("int", "long", "short", "byte", "unsignedint", "unsignedlong"):
        return int(text)
    if kind in ("double", "float", "decimal"):
        return float(text)
    if kind == "boolean":
        return text.strip().lower() == "true"
    return text


def _key_values(element: ET.Element | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if element is None:
        return out
    for pair in element:
        key, value = _child(pair, "Key"), _child(pair, "Value")
        if key is not None and value is not None:
            out[key.text or ""] = _typed_value(value)
    return out


def parse_rule(name: str, body: bytes) -> Rule:
    """Compile the RuleDescription of an admin request (an ATOM entry)."""
    raw = body.decode("utf-8")
    match = re.search(r"<RuleDescription[^>]*>(.*)</RuleDescription>", raw, re.S)
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise RuleError(f"the request body is not XML: {exc}") from None
    description = next((e for e in root.iter() if _local(e.tag) == "RuleDescription"), None)
    if description is None or match is None:
        raise RuleError("the request body has no RuleDescription element")
    inner = (
        # the broker writes the name and the creation time itself: the client's are dropped
        re.sub(r"<(Name|CreatedAt)(?:>.*?</\1>|\s*/>)", "", match.group(1), flags=re.S)
        + f"<Name>{_escape(name)}</Name>"
    )
    action = _action(_child(description, "Action"))
    filter_element = _child(description, "Filter")
    kind = "TrueFilter" if filter_element is None else (filter_element.get(_XSI_TYPE) or "")
    kind = kind.rsplit(":", 1)[-1]
    if kind == "TrueFilter":
        return Rule(name, inner, lambda _view: True, accepts_all=True, action=action)
    if kind == "FalseFilter":
        return Rule(name, inner, lambda _view: False, action=action)
    assert filter_element is not None
    if kind == "CorrelationFilter":
        return Rule(name, inner, _correlation(filter_element), action=action)
    if kind == "SqlFilter":
        expression = _child(filter_element, "SqlExpression")
        parameters = _key_values(_child(filter_element, "Parameters"))
        return Rule(
            name,
            inner,
            compile_sql((expression.text or "") if expression is not None else "", parameters),
            action=action,
        )
    raise RuleError(f"unsupported filter type {kind!r}")


def _action(element: ET.Element | None) -> Action | None:
    """The rule's SqlRuleAction compiled; None for none (or an EmptyRuleAction)."""
    if element is None:
        return None
    kind = (element.get(_XSI_TYPE) or "EmptyRuleAction").rsplit(":", 1)[-1]
    if kind == "EmptyRuleAction":
        return None
    if kind != "SqlRuleAction":
        raise RuleError(f"unsupported rule action type {kind!r}")
    expression = _child(element, "SqlExpression")
    parameters = _key_values(_child(element, "Parameters"))
    return compile_action((expression.text or "") if expression is not None else "", parameters)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_CORRELATION_FIELDS = {
    "CorrelationId": "correlationid",
    "MessageId": "messageid",
    "To": "to",
    "ReplyTo": "replyto",
    "Label": "label",
    "SessionId": "sessionid",
    "ReplyToSessionId": "replytosessionid",
    "ContentType": "contenttype",
}


def _correlation(element: ET.Element) -> Predicate:
    wanted_system = {
        key: child.text or ""
        for xml_name, key in _CORRELATION_FIELDS.items()
        if (child := _child(element, xml_name)) is not None
    }
    wanted_user = {k.lower(): v for k, v in _key_values(_child(element, "Properties")).items()}

    def predicate(view: MessageView) -> bool:
        system, user = view
        return all(system.get(k) == v for k, v in wanted_system.items()) and all(
            user.get(k) == v for k, v in wanted_user.items()
        )

    return predicate


# ---- SQL filter subset --------------------------------------------------------------------
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)"
    r"|(?P<op><>|!=|<=|>=|=|<|>|\(|\)|,|;|\+|-|\*|/)"
    r"|(?P<param>@\w+)|(?P<name>[A-Za-z_][\w.]*))"
)
_Value = Callable[[MessageView], Any]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise RuleError(f"cannot parse SQL filter {text!r} at offset {pos}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _SqlParser:
    def __init__(self, text: str, parameters: dict[str, Any], what: str = "filter") -> None:
        self.what = what
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.parameters = {k.lower(): v for k, v in parameters.items()}

    def fail(self, what: str) -> RuleError:
        return RuleError(
            f"unsupported SQL {self.what} {self.text!r}: {what} (the loopback broker supports "
            "comparisons, IS NULL, IN, LIKE, EXISTS, AND, OR, NOT in filters; SET and REMOVE "
            "of application properties in rule actions)"
        )

    def peek(self) -> str:
        return self.tokens[self.pos][1].upper() if self.pos < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise self.fail("unexpected end")
        token = self.tokens[self.pos]
        if expected is not None and token[1].upper() != expected:
            raise self.fail(f"expected {expected}, found {token[1]!r}")
        self.pos += 1
        return token

    def parse(self) -> Predicate:
        predicate = self.disjunction()
        if self.pos != len(self.tokens):
            raise self.fail(f"unexpected {self.tokens[self.pos][1]!r}")
        return predicate

    def disjunction(self) -> Predicate:
        return self._chain("OR", self.conjunction, decisive=True)

    def conjunction(self) -> Predicate:
        return self._chain("AND", self.negation, decisive=False)

    def _chain(self, word: str, operand: Callable[[], Predicate], decisive: bool) -> Predicate:
        """``operand (word operand)*`` in SQL three-valued logic: ``decisive`` is the result
        that settles it (True for OR, False for AND); otherwise unknown wins over its opposite."""
        parts = [operand()]
        while self.peek() == word:
            self.take()
            parts.append(operand())
        if len(parts) == 1:
            return parts[0]

        def combined(view: MessageView) -> bool | None:
            results = [p(view) for p in parts]
            if decisive in results:
                return decisive
            return None if None in results else not decisive

        return combined

    def negation(self) -> Predicate:
        if self.peek() == "NOT":
            self.take()
            inner = self.negation()
            return lambda view: None if (r := inner(view)) is None else not r
        return self.comparison()

    def comparison(self) -> Predicate:
        if self.peek() == "(":
            self.take()
            inner = self.disjunction()
            self.take(")")
            return inner
        if self.peek() == "EXISTS":
            self.take()
            self.take("(")
            name = self.take()[1]
            self.take(")")
            return self._exists(name)
        left = self.operand()
        word = self.peek()
        if word == "IS":
            self.take()
            negate = self.peek() == "NOT"
            if negate:
                self.take()
            self.take("NULL")
            return lambda view: (left(view) is None) != negate
        negate = word == "NOT"
        if negate:
            self.take()
            word = self.peek()
        if word == "IN":
            self.take()
            self.take("(")
            options = [self.operand()]
            while self.peek() == ",":
                self.take()
                options.append(self.operand())
            self.take(")")
            return _negated(lambda view: _in(left(view), [o(view) for o in options]), negate)
        if word == "LIKE":
            self.take()
            kind, literal = self.take()
            if kind != "str":
                raise self.fail("LIKE needs a string pattern")
            pattern = _like(literal[1:-1].replace("''", "'"))
            return _negated(
                lambda view: None if (v := left(view)) is None else bool(pattern.match(str(v))),
                negate,
            )
        if negate:
            raise self.fail("NOT must precede IN or LIKE here")
        operator = self.take()[1]
        if operator not in _OPERATORS:
            raise self.fail(f"unknown operator {operator!r}")
        compare = _OPERATORS[operator]
        right = self.operand()
        return lambda view: _compare(compare, left(view), right(view))

    def operand(self) -> _Value:
        kind, text = self.take()
        upper = text.upper()
        if kind == "str":
            literal: Any = text[1:-1].replace("''", "'")
            return lambda _view: literal
        if kind == "num":
            number = float(text) if "." in text else int(text)
            return lambda _view: number
        if kind == "param":
            if text.lower() not in self.parameters:
                raise self.fail(f"parameter {text} has no value")
            value = self.parameters[text.lower()]
            return lambda _view: value
        if kind == "name" and upper in ("TRUE", "FALSE"):
            flag = upper == "TRUE"
            return lambda _view: flag
        if kind == "name" and upper == "NULL":
            return lambda _view: None
        if kind == "name":
            return self._property(text)
        raise self.fail(f"unexpected {text!r}")

    def expression(self) -> _Value:
        """Operands joined by ``+ - * /`` (left to right; ``*`` and ``/`` first); NULL in,
        NULL out; ``+`` also joins strings."""
        value = self._term()
        while self.peek() in ("+", "-"):
            operator = _ARITHMETIC[self.take()[1]]
            value = _arithmetic(operator, value, self._term())
        return value

    def _term(self) -> _Value:
        value = self.operand()
        while self.peek() in ("*", "/"):
            operator = _ARITHMETIC[self.take()[1]]
            value = _arithmetic(operator, value, self.operand())
        return value

    def _property(self, name: str) -> _Value:
        scope, _, field = name.lower().rpartition(".")
        if scope == "sys":
            if field not in (
                "messageid",
                "correlationid",
                "to",
                "replyto",
                "label",
                "subject",
                "sessionid",
                "replytosessionid",
                "contenttype",
            ):
                raise self.fail(f"unsupported system property {name!r}")
            return lambda view: view[0].get(field)
        if scope not in ("", "user"):
            raise self.fail(f"unknown property scope in {name!r}")
        return lambda view: view[1].get(field)

    def _exists(self, name: str) -> Predicate:
        value = self._property(name)
        return lambda view: value(view) is not None


def _negated(predicate: Predicate, negate: bool) -> Predicate:
    if not negate:
        return predicate
    return lambda view: None if (r := predicate(view)) is None else not r


def _in(value: Any, options: list[Any]) -> bool | None:
    return None if value is None else value in options


def _like(pattern: str) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("".join(parts) + r"\Z", re.S)


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}


def _arithmetic(operator: Callable[[Any, Any], Any], left: _Value, right: _Value) -> _Value:
    def value(view: MessageView) -> Any:
        a, b = left(view), right(view)
        if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
            return None
        try:
            return operator(a, b)
        except (TypeError, ZeroDivisionError, OverflowError):  # 'a' * 'b', x / 0: NULL
            return None

    return value


def _compare(compare: Callable[[Any, Any], bool], left: Any, right: Any) -> bool | None:
    if left is None or right is None:
        return None
    try:
        return compare(left, right)
    except TypeError:  # e.g. a string against a number: never equal, not ordered
        return None


def compile_sql(text: str, parameters: dict[str, Any]) -> Predicate:
    """Compile a SQL filter expression of the supported subset into a predicate."""
    if not text.strip():
        raise RuleError("empty SQL filter expression")
    return _SqlParser(text, parameters).parse()


def compile_action(text: str, parameters: dict[str, Any]) -> Action:
    """Compile a SQL rule action (``SET p = expression``, ``REMOVE p``; ``;`` between)."""
    parser = _SqlParser(text, parameters, "rule action")
    statements: list[tuple[str, _Value | None]] = []
    while parser.pos < len(parser.tokens):
        if parser.peek() == ";":
            parser.take()
            continue
        verb = parser.take()[1].upper()
        if verb not in ("SET", "REMOVE"):
            raise parser.fail(f"a rule action statement starts with SET or REMOVE, not {verb!r}")
        name = _user_property(parser, parser.take()[1])
        if verb == "REMOVE":
            statements.append((name, None))
            continue
        parser.take("=")
        statements.append((name, parser.expression()))
        if parser.pos < len(parser.tokens) and parser.peek() != ";":
            raise parser.fail(f"unexpected {parser.tokens[parser.pos][1]!r}")
    if not statements:
        raise RuleError("empty SQL rule action")

    def apply(view: MessageView) -> tuple[dict[str, Any], set[str]]:
        values: dict[str, Any] = {}
        removed: set[str] = set()
        properties = dict(view[1])
        for name, value in statements:
            key = name.lower()
            if value is None:
                removed.add(name)
                values.pop(name, None)
                properties.pop(key, None)
            else:
                result = value((view[0], properties))
                values[name] = result
                removed.discard(name)
                properties[key] = result
        return values, removed

    return apply


def _user_property(parser: _SqlParser, name: str) -> str:
    scope, _, field = name.rpartition(".")
    if scope.lower() == "sys":
        raise parser.fail(
            f"rule actions change application properties only, not the system property {name!r}"
        )
    if scope.lower() not in ("", "user") or not field:
        raise parser.fail(f"unknown property scope in {name!r}")
    return field
