"""The parser: what it accepts, and where and why it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonlink.rules.parser import MAX_DEPTH, RuleSyntaxError, parse
from carbonlink.rules.tree import Binary, Call, Name, Num


def test_a_full_rule_parses_into_its_parts() -> None:
    rule = parse("""SELECT avg(value) AS so2, max(value) FROM '+/so2', DEVICE 'cems-*'
                    WHERE quality = 'N' AND o2 BETWEEN 3 AND 18
                    GROUP BY device, HOPPING(5m, 1m)
                    HAVING count(*) >= 3
                    RAISE WHEN so2 > 200 mg/m3 FOR 2m CLEAR WHEN so2 < 180 mg/m³ FOR 30s""")
    assert rule.names == ("so2",)
    assert [s.kind for s in rule.sources] == ["topic", "device"]
    assert rule.group_keys == ("device",)
    assert rule.window is not None and (rule.window.kind, rule.window.size, rule.window.step) == ("hopping", 300_000,
                                                                                                   60_000)
    assert rule.trigger is not None
    assert (rule.trigger.raise_for_ms, rule.trigger.clear_for_ms) == (120_000, 30_000)
    cond = rule.trigger.raise_when
    assert isinstance(cond, Binary) and isinstance(cond.right, Num) and cond.right.unit == "mg/m3"


def test_units_follow_numbers_but_keywords_do_not() -> None:
    rule = parse("SELECT * FROM '+/t' WHERE value > 20 °C AND value < 5 OR value = 21 %")
    assert rule.where is not None
    text = repr(rule.where)
    assert "unit='°C'" in text and "unit='%'" in text and "unit='AND'" not in text


def test_precedence_multiplication_before_addition_and_and_before_or() -> None:
    rule = parse("SELECT 1 + 2 * 3 AS x FROM 'a/b' WHERE a OR b AND c")
    assert rule.select is not None
    expr = rule.select[0].expr
    assert isinstance(expr, Binary) and expr.op == "+" and isinstance(expr.right, Binary) and expr.right.op == "*"
    assert isinstance(rule.where, Binary) and rule.where.op == "OR"


def test_quoted_names_and_count_star() -> None:
    rule = parse('SELECT count(*) AS n, "a21026-Rtd" FROM POINT \'a21026-*\' GROUP BY COUNT(10, 5)')
    assert rule.select is not None
    call = rule.select[0].expr
    assert isinstance(call, Call) and call.star
    name = rule.select[1].expr
    assert isinstance(name, Name) and name.quoted and name.name == "a21026-Rtd"
    assert rule.window is not None and (rule.window.size, rule.window.step) == (10, 5)


@pytest.mark.parametrize("text,line,column,needle", [
    ("SELECT value FORM '+/so2'", 1, 14, "expected FROM, found 'FORM'"),
    ("SELECT value\nFROM '+/so2'\nWHERE value >", 3, 14, "found the end of the rule"),
    ("SELECT value FROM '+/so2' WHERE value > 200 mg/m3 GROUP BY device, TUMBLING(5)", 1, 77, "a duration"),
    ("SELECT value FROM so2", 1, 19, "a topic filter"),
    ("SELECT value FROM '+/so2' WHERE value = \"x", 1, 41, "unexpected character"),
    ("SELECT value FROM '+/so2' RAISE value > 3", 1, 33, "expected WHEN"),
    ("SELECT value FROM '+/so2' GROUP BY TUMBLING(1m), SLIDING(1m)", 1, 50, "at most one window"),
    ("SELECT value FROM '+/so2' WHERE value > o2 extra", 1, 44, "expected GROUP BY or HAVING or RAISE WHEN"),
    ("SELECT value FROM '+/so2' GROUP BY COUNT(0)", 1, 42, "whole number above 0"),
    ("SELECT `value` FROM 'a/b'", 1, 8, "strings use single quotes"),
])
def test_errors_name_line_column_and_what_was_expected(text: str, line: int, column: int, needle: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        parse(text)
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert needle in str(e)
    assert str(e).startswith(f"line {line}, column {column}: ")


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    text = "SELECT " + "(" * (MAX_DEPTH + 5) + "1" + ")" * (MAX_DEPTH + 5) + " FROM 'a/b'"
    with pytest.raises(RuleSyntaxError, match="nests deeper"):
        parse(text)
    with pytest.raises(RuleSyntaxError, match="nests deeper"):
        parse("SELECT " + "NOT " * 200 + "true FROM 'a/b'")
    with pytest.raises(RuleSyntaxError, match="nests deeper"):
        parse("SELECT " + "- " * 200 + "1 FROM 'a/b'")


def test_over_long_text_is_refused() -> None:
    with pytest.raises(RuleSyntaxError, match="over the limit"):
        parse("SELECT * FROM 'a/b' -- " + "x" * 9000)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("SELECT FROMWHERGUPBYAVgv()'*,<>=+-/0123456789.%m\n\"")), max_size=80))
def test_any_text_parses_or_gives_a_positioned_error(text: str) -> None:
    try:
        parse(text)
    except RuleSyntaxError as e:
        assert e.line >= 1 and e.column >= 1
