"""The SQL filter subset of the loopback Service Bus broker's subscription rules."""

from __future__ import annotations

from typing import Any

import pytest

from eventbroker.testing._servicebus_rules import RuleError, compile_action, compile_sql

VIEW = (
    {
        "label": "web-1",
        "messageid": "m-1",
        "correlationid": None,
        "contenttype": "application/json",
    },
    {"kind": "order", "count": 3, "flag": True, "price": 9.5},
)


@pytest.mark.parametrize(
    ("expression", "parameters", "expected"),
    [
        ("1=1", {}, True),
        ("1=0", {}, False),
        ("sys.Label = 'web-1'", {}, True),
        ("sys.label <> @own", {"@own": "web-1"}, False),
        ("sys.Label IS NULL OR sys.Label <> @own", {"@own": "web-2"}, True),
        ("sys.CorrelationId IS NULL", {}, True),
        ("sys.CorrelationId = 'x'", {}, None),  # NULL compares unknown
        ("NOT sys.CorrelationId = 'x'", {}, None),
        ("sys.CorrelationId = 'x' OR kind = 'order'", {}, True),
        ("user.count > 2 AND price <= 9.5", {}, True),
        ("count IN (1, 2, 3)", {}, True),
        ("kind NOT IN ('order')", {}, False),
        ("sys.ContentType LIKE 'application/%'", {}, True),
        ("sys.MessageId LIKE 'm_2'", {}, False),
        ("EXISTS(user.flag) AND flag = TRUE", {}, True),
        ("EXISTS(missing)", {}, False),
        ("(kind = 'order') AND NOT (count = 4)", {}, True),
        ("kind = 'it''s'", {}, False),
        ("count = 'three'", {}, False),  # a string never equals a number
        ("count > 'three'", {}, None),  # and is not ordered against it
    ],
)
def test_sql_filter(expression: str, parameters: dict[str, Any], expected: bool | None) -> None:
    assert compile_sql(expression, parameters)(VIEW) == expected


@pytest.mark.parametrize(
    "expression",
    ["", "sys.Size > 5", "kind =", "kind = @missing", "a.b.c = 1", "kind ~ 1", "(kind = 'x'"],
)
def test_unsupported_sql_is_a_clear_error(expression: str) -> None:
    with pytest.raises(RuleError):
        compile_sql(expression, {})


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        ("SET Color = 'BlueProcessed'", ({"Color": "BlueProcessed"}, set())),
        ("SET user.total = count * 2 + 1", ({"total": 7}, set())),
        ("SET label = sys.Label + '-seen'; REMOVE kind", ({"label": "web-1-seen"}, {"kind"})),
        ("SET n = missing + 1", ({"n": None}, set())),  # NULL in, NULL out
        ("SET n = count / 0", ({"n": None}, set())),
        ("SET price = @p;", ({"price": 2.5}, set())),
        ("REMOVE flag; SET flag = NOT_A_PROPERTY", ({"flag": None}, set())),
    ],
)
def test_sql_rule_action(statements: str, expected: tuple[dict[str, Any], set[str]]) -> None:
    assert compile_action(statements, {"@p": 2.5})(VIEW) == expected


@pytest.mark.parametrize(
    "statements", ["", ";", "SET sys.Label = 'x'", "SET kind", "UPDATE kind = 1", "SET a = 1 2"]
)
def test_unsupported_rule_action_is_a_clear_error(statements: str) -> None:
    with pytest.raises(RuleError):
        compile_action(statements, {})
