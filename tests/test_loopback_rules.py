"""The SQL filter subset of the loopback Service Bus broker's subscription rules."""

from __future__ import annotations

from typing import Any

import pytest

from eventbroker.testing._servicebus_rules import RuleError, compile_sql

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
