"""The stateless SQL compiler: each construct, NULL rules, type errors, errors with positions."""

from __future__ import annotations

from typing import Any

import pytest

from rtis.sql import (
    CompiledQuery,
    EvalError,
    SqlError,
    compile_condition,
    compile_query,
    load_functions,
)

STREAMS = {"orders", "clicks"}


def q(sql: str, **kwargs: Any) -> CompiledQuery:
    return compile_query("t", sql, streams=STREAMS, **kwargs)


def value(expr: str, row: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    out = q(f"SELECT {expr} AS v FROM orders", **kwargs).run(row or {})
    assert out is not None
    return out["v"]


def sql_error(sql: str, **kwargs: Any) -> SqlError:
    with pytest.raises(SqlError) as info:
        q(sql, **kwargs)
    return info.value


def eval_error(expr: str, row: dict[str, Any]) -> str:
    with pytest.raises(EvalError) as info:
        value(expr, row)
    return str(info.value)


# ---------------------------------------------------------------- SELECT forms


def test_select_star_returns_a_copy_of_the_event() -> None:
    query = q("SELECT * FROM orders")
    row = {"a": 1, "b": {"c": 2}}
    out = query.run(row)
    assert out == row
    assert out is not row
    assert query.select_star and query.columns == ()


def test_select_star_with_extra_columns_sets_them_on_the_copy() -> None:
    query = q("SELECT *, amount * 2 AS double, lower(region) FROM orders")
    row = {"amount": 3, "region": "EU"}
    assert query.run(row) == {"amount": 3, "region": "EU", "double": 6, "lower(region)": "eu"}
    assert row == {"amount": 3, "region": "EU"}
    assert query.columns == ("double", "lower(region)")


def test_named_columns_come_out_in_order_with_sensible_default_names() -> None:
    query = q('SELECT id, data.user.name, "my field", amount + 1, amount AS a FROM orders')
    assert query.columns == ("id", "name", "my field", "amount + 1", "a")
    out = query.run({"id": 7, "data": {"user": {"name": "ann"}}, "my field": True, "amount": 1})
    assert out == {"id": 7, "name": "ann", "my field": True, "amount + 1": 2, "a": 1}
    assert list(out or {}) == list(query.columns)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 9])
def test_projection_of_any_width_produces_every_column(count: int) -> None:
    cols = ", ".join(f"c{i}" for i in range(count))
    row = {f"c{i}": i for i in range(count)}
    assert q(f"SELECT {cols} FROM orders").run(row) == row


def test_where_filters_and_run_returns_none_for_filtered_events() -> None:
    query = q("SELECT id FROM orders WHERE amount < 500 AND region = 'eu'")
    assert query.run({"id": 1, "amount": 10, "region": "eu"}) == {"id": 1}
    assert query.run({"id": 2, "amount": 900, "region": "eu"}) is None
    assert query.run({"id": 3, "amount": 10, "region": "us"}) is None
    assert query.source == "orders"
    assert query.where is not None


def test_query_without_where_has_no_filter() -> None:
    assert q("SELECT id FROM orders").where is None


def test_a_trailing_semicolon_is_accepted() -> None:
    assert q("SELECT id FROM orders;").run({"id": 1}) == {"id": 1}


def test_sql_and_name_are_kept_on_the_compiled_query() -> None:
    query = compile_query("big", "SELECT id FROM orders", streams=STREAMS)
    assert query.name == "big" and query.sql == "SELECT id FROM orders"


def test_plan_describes_source_filter_and_outputs() -> None:
    query = compile_query(
        "small_orders",
        "SELECT id, amount * 2 AS double FROM orders WHERE amount < 500",
        streams=STREAMS,
    )
    assert "small_orders" in query.plan
    assert "stream 'orders'" in query.plan
    assert "amount < 500" in query.plan
    assert "double = amount * 2" in query.plan
    assert len(query.plan.splitlines()) >= 4


def test_plan_of_select_star_mentions_every_field() -> None:
    plan = q("SELECT *, 1 AS one FROM orders").plan
    assert "SELECT *" in plan and "set one = 1" in plan
    assert "filter   none" in plan


# ---------------------------------------------------------------- fields and NULL


def test_missing_field_is_null() -> None:
    assert value("nope") is None
    assert value("nope IS NULL") is True


def test_nested_fields_follow_objects_and_are_null_past_non_objects() -> None:
    row = {"a": {"b": {"c": 5}}, "s": "text", "l": [1, 2]}
    assert value("a.b.c", row) == 5
    assert value("a.b", row) == {"c": 5}
    assert value("a.x.c", row) is None
    assert value("s.length", row) is None
    assert value("l.b", row) is None
    assert value("a.b.c.d.e", row) is None


def test_quoted_identifiers_name_fields_with_spaces_and_keep_case() -> None:
    row = {"my field": 1, "Region": "eu", "region": "us"}
    assert value('"my field"', row) == 1
    assert value('"Region"', row) == "eu"
    assert value("region", row) == "us"
    assert value('"a b"."c d"', {"a b": {"c d": 3}}) == 3


def test_null_propagates_through_arithmetic_comparison_and_functions() -> None:
    row = {"x": None}
    for expr in [
        "x + 1",
        "1 - x",
        "x * 2",
        "x / 2",
        "x % 2",
        "-x",
        "x = 1",
        "x < 1",
        "x || 'a'",
        "lower(x)",
        "abs(x)",
        "substr(x, 1)",
        "x LIKE 'a'",
        "x IN (1, 2)",
        "x BETWEEN 1 AND 2",
        "CAST(x AS TEXT)",
        "NOT x",
    ]:
        assert value(expr, row) is None, expr


def test_where_treats_null_as_false_even_under_not() -> None:
    query = q("SELECT id FROM orders WHERE NOT (amount > 5)")
    assert query.run({"id": 1}) is None
    assert query.run({"id": 1, "amount": 1}) == {"id": 1}


# ---------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("7 / 2", 3),
        ("-7 / 2", -3),
        ("7 / -2", -3),
        ("7.0 / 2", 3.5),
        ("7 / 0", None),
        ("7.5 / 0.0", None),
        ("7 % 3", 1),
        ("-7 % 3", -1),
        ("7 % -3", 1),
        ("7.5 % 2", 1.0),
        ("5 % 0", None),
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("1 + 1.5", 2.5),
        ("9223372036854775807 + 1", 9.223372036854776e18),
        ("TRUE + TRUE", 2),
        ("-(3)", -3),
    ],
)
def test_arithmetic_follows_sqlite(expr: str, expected: Any) -> None:
    result = value(expr)
    assert result == expected
    assert type(result) is type(expected)


def test_booleans_in_events_count_as_one_and_zero() -> None:
    assert value("flag + 1", {"flag": True}) == 2
    assert value("flag = 1", {"flag": True}) is True
    assert value("flag * 5", {"flag": False}) == 0


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1 = 1", True),
        ("1 == 1.0", True),
        ("1 != 2", True),
        ("1 <> 1", False),
        ("'a' < 'b'", True),
        ("'B' < 'a'", True),
        ("2 <= 2", True),
        ("3 > 2.5", True),
        ("2 >= 3", False),
    ],
)
def test_comparisons(expr: str, expected: bool) -> None:
    assert value(expr) is expected


@pytest.mark.parametrize(
    ("a", "b", "and_", "or_"),
    [
        (True, True, True, True),
        (True, False, False, True),
        (True, None, None, True),
        (False, None, False, None),
        (None, None, None, None),
        (False, False, False, False),
    ],
)
def test_and_or_use_three_valued_logic(a: Any, b: Any, and_: Any, or_: Any) -> None:
    row = {"a": a, "b": b}
    assert value("a AND b", row) is and_
    assert value("b AND a", row) is and_
    assert value("a OR b", row) is or_
    assert value("b OR a", row) is or_


def test_not_of_null_is_null_and_numbers_are_conditions() -> None:
    assert value("NOT x", {}) is None
    assert value("NOT x", {"x": 0}) is True
    assert value("NOT x", {"x": 2.5}) is False


def test_in_and_not_in_with_null_in_the_list() -> None:
    assert value("x IN (1, 2, 3)", {"x": 2}) is True
    assert value("x IN (1, 2, 3)", {"x": 4}) is False
    assert value("x IN (1, NULL)", {"x": 4}) is None
    assert value("x IN (1, NULL)", {"x": 1}) is True
    assert value("x NOT IN (1, 2)", {"x": 4}) is True
    assert value("x NOT IN (1, NULL)", {"x": 4}) is None
    assert value("x IN ('a', 'b')", {"x": "b"}) is True
    assert value("x IN (1.0, 2)", {"x": 1}) is True


def test_in_with_expressions_in_the_list() -> None:
    row = {"x": 3, "y": 1}
    assert value("x IN (y, y + 2)", row) is True
    assert value("x IN (y, y + 1)", row) is False
    assert value("x IN (y, z)", row) is None


def test_between_and_not_between_are_inclusive() -> None:
    assert value("x BETWEEN 1 AND 3", {"x": 1}) is True
    assert value("x BETWEEN 1 AND 3", {"x": 3}) is True
    assert value("x BETWEEN 1 AND 3", {"x": 4}) is False
    assert value("x NOT BETWEEN 1 AND 3", {"x": 4}) is True
    assert value("x BETWEEN 1 AND y", {"x": 0}) is False
    assert value("x BETWEEN 1 AND y", {"x": 2}) is None
    assert value("x BETWEEN 'a' AND 'c'", {"x": "b"}) is True


@pytest.mark.parametrize(
    ("text", "pattern", "expected"),
    [
        ("hello", "h%", True),
        ("hello", "H_LLO", True),
        ("hello", "h_l", False),
        ("a\nb", "a_b", True),
        ("50%", "50!%", None),
        ("É", "é", False),
        ("", "%", True),
        ("a.c", "a.c", True),
        ("abc", "a.c", False),
    ],
)
def test_like_wildcards_and_ascii_case_insensitivity(
    text: str, pattern: str, expected: bool | None
) -> None:
    row = {"t": text, "p": pattern}
    if expected is None:  # pattern with an escape: tested below
        return
    assert value("t LIKE p", row) is expected
    assert value(f"t LIKE '{pattern}'", row) is expected
    assert value(f"t NOT LIKE '{pattern}'", row) is (not expected)


def test_like_escape_makes_wildcards_literal() -> None:
    assert value("t LIKE '50!%' ESCAPE '!'", {"t": "50%"}) is True
    assert value("t LIKE '50!%' ESCAPE '!'", {"t": "500"}) is False
    assert value("t NOT LIKE 'a!_b' ESCAPE '!'", {"t": "axb"}) is True


def test_like_escape_must_be_one_character() -> None:
    err = sql_error("SELECT t LIKE 'a' ESCAPE 'ab' FROM orders")
    assert "single character" in err.reason


def test_is_null_is_not_null_is_true() -> None:
    assert value("x IS NULL", {"x": None}) is True
    assert value("x IS NOT NULL", {"x": 0}) is True
    assert value("x IS TRUE", {"x": 1}) is True
    assert value("x IS NOT TRUE", {}) is True
    assert value("x IS FALSE", {"x": 0}) is True


def test_searched_and_simple_case() -> None:
    searched = "CASE WHEN x > 10 THEN 'big' WHEN x > 5 THEN 'mid' ELSE 'small' END"
    assert value(searched, {"x": 11}) == "big"
    assert value(searched, {"x": 6}) == "mid"
    assert value(searched, {"x": 1}) == "small"
    assert value(searched, {}) == "small"
    simple = "CASE x WHEN 1 THEN 'one' WHEN 2 THEN 'two' END"
    assert value(simple, {"x": 2}) == "two"
    assert value(simple, {"x": 3}) is None
    assert value(simple, {}) is None


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("CAST(3.9 AS INTEGER)", 3),
        ("CAST(-3.9 AS INT)", -3),
        ("CAST(' 12 ' AS INTEGER)", 12),
        ("CAST('2.5' AS REAL)", 2.5),
        ("CAST('1e3' AS REAL)", 1000.0),
        ("CAST(2 AS REAL)", 2.0),
        ("CAST(1.0 AS TEXT)", "1.0"),
        ("CAST(1e20 AS TEXT)", "1.0e+20"),
        ("CAST(12 AS TEXT)", "12"),
        ("CAST(TRUE AS TEXT)", "1"),
        ("CAST('yes' AS BOOLEAN)", True),
        ("CAST(0 AS BOOLEAN)", False),
        ("CAST('12' AS NUMERIC)", 12),
        ("CAST('1.5' AS NUMERIC)", 1.5),
        ("CAST('x' AS VARCHAR(3))", "x"),
    ],
)
def test_cast(expr: str, expected: Any) -> None:
    result = value(expr)
    assert result == expected
    assert type(result) is type(expected)


def test_cast_refuses_text_that_is_not_a_number_at_runtime() -> None:
    assert "cannot cast text 'abc' to INTEGER" in eval_error("CAST(x AS INTEGER)", {"x": "abc"})
    assert "to INTEGER" in eval_error("CAST(x AS INTEGER)", {"x": "3.7"})
    assert "to REAL" in eval_error("CAST(x AS REAL)", {"x": "12abc"})


def test_cast_to_unknown_type_is_a_compile_error() -> None:
    err = sql_error("SELECT CAST(x AS BLOB) FROM orders")
    assert "INTEGER, REAL, TEXT, BOOLEAN, NUMERIC" in err.reason


def test_concatenation_writes_numbers_as_sqlite_does() -> None:
    assert value("'a' || 'b'") == "ab"
    assert value("'n=' || 1") == "n=1"
    assert value("'x=' || 1.5") == "x=1.5"
    assert value("a || b", {"a": "p", "b": 2.0}) == "p2.0"


# ---------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("lower('AbÉ')", "abÉ"),
        ("upper('abé')", "ABé"),
        ("trim('  a\t ')", "a\t"),
        ("trim('xxaxx', 'x')", "a"),
        ("ltrim('  a ')", "a "),
        ("rtrim('  a ')", "  a"),
        ("length('héllo')", 5),
        ("substr('hello', 2)", "ello"),
        ("substr('hello', 2, 3)", "ell"),
        ("substr('hello', 0, 2)", "h"),
        ("substr('hello', -2)", "lo"),
        ("substr('hello', 2, -1)", "h"),
        ("substring('hello', 1, 1)", "h"),
        ("replace('aXbX', 'X', '-')", "a-b-"),
        ("replace('abc', '', '-')", "abc"),
        ("replace('abc', '', NULL)", "abc"),
        ("replace('abc', 'b', NULL)", None),
        ("coalesce(NULL, NULL, 3)", 3),
        ("coalesce(NULL, NULL)", None),
        ("ifnull(NULL, 'd')", "d"),
        ("nullif(1, 1)", None),
        ("nullif(1, 2)", 1),
        ("abs(-3)", 3),
        ("abs(-2.5)", 2.5),
        ("round(2.5)", 3.0),
        ("round(-2.5)", -3.0),
        ("round(2.675, 2)", 2.68),
        ("round(5)", 5.0),
        ("floor(2.5)", 2.0),
        ("floor(3)", 3),
        ("ceil(2.1)", 3.0),
        ("ceiling(-2.1)", -2.0),
        ("LOWER('A')", "a"),
    ],
)
def test_builtin_functions(expr: str, expected: Any) -> None:
    result = value(expr)
    assert result == expected
    assert type(result) is type(expected)


def test_coalesce_evaluates_lazily() -> None:
    assert value("coalesce(x, 1 + y)", {"x": 1, "y": "not evaluated"}) == 1


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("epoch('2024-01-02T03:04:05Z')", 1704164645),
        ("epoch('2024-01-02T03:04:05.5+01:00')", 1704161045.5),
        ("epoch(12.5)", 12.5),
        ("to_timestamp(1704164645)", "2024-01-02T03:04:05Z"),
        ("to_timestamp('2024-01-02T04:04:05+01:00')", "2024-01-02T03:04:05Z"),
        ("date_trunc('minute', 1704164645)", 1704164640),
        ("date_trunc('hour', '2024-01-02T03:04:05Z')", "2024-01-02T03:00:00Z"),
        ("date_trunc('day', '2024-01-02T03:04:05Z')", "2024-01-02T00:00:00Z"),
        ("date_trunc('week', '2024-01-04T03:04:05Z')", "2024-01-01T00:00:00Z"),
        ("date_trunc('month', '2024-01-04T03:04:05Z')", "2024-01-01T00:00:00Z"),
        ("date_trunc('YEAR', '2024-05-04T03:04:05Z')", "2024-01-01T00:00:00Z"),
        ("date_part('hour', '2024-01-02T03:04:05Z')", 3),
        ("date_part('dow', '2024-01-07T00:00:00Z')", 0),
        ("date_part('doy', '2024-02-01T00:00:00Z')", 32),
        ("format_time(1704164645, '%Y-%m-%d %H:%M')", "2024-01-02 03:04"),
    ],
)
def test_time_functions(expr: str, expected: Any) -> None:
    result = value(expr)
    assert result == expected
    assert type(result) is type(expected)


def test_time_functions_reject_bad_input_at_runtime() -> None:
    assert "not an RFC 3339 time" in eval_error("epoch(t)", {"t": "yesterday"})
    assert "expects epoch seconds or RFC 3339 text" in eval_error("to_timestamp(t)", {"t": True})


def test_time_function_units_and_formats_are_checked_when_compiled() -> None:
    assert "unknown unit" in sql_error("SELECT date_trunc('minutes', t) FROM orders").reason
    assert "unknown unit" in sql_error("SELECT date_part('fortnight', t) FROM orders").reason
    assert "unsupported directive" in sql_error("SELECT format_time(t, '%Q') FROM orders").reason


def test_wrong_number_of_arguments_is_a_compile_error() -> None:
    err = sql_error("SELECT substr(x) FROM orders")
    assert "substr() takes 2 to 3 arguments, got 1" in err.reason
    assert (err.line, err.column) == (1, 8)
    assert "at least 2" in sql_error("SELECT coalesce(x) FROM orders").reason


def test_user_functions_are_called_case_insensitively_with_none_for_null() -> None:
    seen: list[tuple[Any, ...]] = []

    def tag(*args: Any) -> str:
        seen.append(args)
        return "tagged"

    assert value("TAG(x, missing)", {"x": 1}, functions={"tag": tag}) == "tagged"
    assert seen == [(1, None)]


def test_user_function_failure_is_an_eval_error_naming_the_function() -> None:
    def boom(x: Any) -> Any:
        raise ZeroDivisionError("nope")

    query = q("SELECT boom(x) AS v FROM orders", functions={"boom": boom})
    with pytest.raises(EvalError, match=r"function boom\(\) failed: ZeroDivisionError: nope"):
        query.run({"x": 1})


def test_user_function_returning_an_unsupported_type_is_an_eval_error() -> None:
    query = q("SELECT f(x) AS v FROM orders", functions={"f": lambda x: object()})
    with pytest.raises(EvalError, match="returned a object"):
        query.run({})


def test_user_functions_may_not_shadow_builtins() -> None:
    with pytest.raises(ValueError, match="clashes with the built-in"):
        q("SELECT 1 FROM orders", functions={"Lower": str.lower})


def test_load_functions_imports_module_callables() -> None:
    loaded = load_functions({"sqrt": "math:sqrt", "dumps": "json:dumps"})
    assert value("sqrt(x)", {"x": 9}, functions=loaded) == 3.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"f": "math"}, "expected 'module:callable'"),
        ({"f": "no_such_module_xyz:f"}, "cannot import module"),
        ({"f": "math:no_such_attr"}, "has no attribute"),
        ({"f": "math:pi"}, "is not callable"),
        ({"lower": "math:sqrt"}, "clashes with the built-in"),
    ],
)
def test_load_functions_names_the_bad_entry(spec: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_functions(spec)
    assert "functions" in str(info.value)


# ---------------------------------------------------------------- type errors


@pytest.mark.parametrize(
    ("expr", "row", "reason"),
    [
        ("amount + 1", {"amount": "abc"}, "cannot add text 'abc' and number 1 in amount + 1"),
        ("amount * 2", {"amount": "12"}, "cannot multiply text '12' and number 2"),
        ("a - b", {"a": 1, "b": {"x": 1}}, "cannot subtract number 1 and object"),
        ("x < 5", {"x": "4"}, "cannot compare text '4' with number 5 in x < 5"),
        ("x = 'eu'", {"x": 1}, "cannot compare number 1 with text 'eu'"),
        ("x = y", {"x": [1], "y": [1]}, "cannot compare array with array"),
        ("x IN (1, 2)", {"x": "1"}, "cannot compare text '1' with number 1"),
        ("x AND TRUE", {"x": "yes"}, "cannot use text 'yes' as a condition in x AND TRUE"),
        ("-x", {"x": "a"}, "cannot negate text 'a'"),
        ("lower(x)", {"x": 5}, "lower() expects text, got number 5 in lower(x)"),
        ("abs(x)", {"x": "5"}, "abs() expects a number, got text '5'"),
        ("x LIKE 'a%'", {"x": 1}, "LIKE needs text, got number 1"),
        ("x || 'a'", {"x": {"k": 1}}, "cannot concatenate object and text 'a'"),
        ("CASE x WHEN 1 THEN 2 END", {"x": "1"}, "cannot compare text '1' with number 1"),
    ],
)
def test_ill_typed_values_raise_eval_error_with_the_reason(
    expr: str, row: dict[str, Any], reason: str
) -> None:
    assert reason in eval_error(expr, row)


def test_where_with_a_type_error_raises_instead_of_filtering() -> None:
    query = q("SELECT id FROM orders WHERE amount < 500")
    with pytest.raises(EvalError, match="cannot compare text 'lots' with number 500"):
        query.run({"id": 1, "amount": "lots"})


def test_a_constant_expression_that_always_fails_is_a_compile_error() -> None:
    err = sql_error("SELECT id, 1 + 'a' AS bad FROM orders")
    assert "cannot add number 1 and text 'a'" in err.reason
    assert (err.line, err.column) == (1, 12)


# ---------------------------------------------------------------- compile errors


def test_sql_error_is_a_400_value_error_naming_query_line_and_column() -> None:
    with pytest.raises(SqlError) as info:
        compile_query("small_orders", "SELECT foo(x) FROM orders", streams=STREAMS)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.status == 400 and err.code == "bad_sql"
    assert (err.line, err.column) == (1, 8)
    assert str(err).startswith("query 'small_orders', line 1, column 8: unknown function 'foo'")
    assert err.to_json()["error"]["code"] == "bad_sql"


@pytest.mark.parametrize(
    ("sql", "fragment", "line", "column"),
    [
        ("SELECT a FROM nope", "unknown stream 'nope'; known streams: clicks, orders", 1, 15),
        ("SELECT b FROM orders GROUP BY a", "column 'b' must appear in GROUP BY", 1, 8),
        ("SELECT a FROM orders\nORDER BY a", "ORDER BY is not supported", 2, 1),
        ("SELECT a FROM orders LIMIT 5", "LIMIT is not supported", 1, 22),
        ("SELECT DISTINCT a FROM orders", "DISTINCT is not supported", 1, 8),
        ("SELECT a FROM orders JOIN clicks ON a = b", "JOIN", 1, 22),
        ("SELECT a FROM orders WHERE count(*) > 1", "count() is only allowed in", 1, 28),
        ("SELECT\n  total(x) FROM orders", "aggregate function total() is not", 2, 3),
        ("SELECT x FROM (SELECT 1 FROM orders)", "FROM must name one stream", 1, 15),
        ("SELECT a FROM orders WHERE a IN (SELECT b FROM clicks)", "IN takes a list", 1, 28),
        ("SELECT row_number() OVER () FROM orders", "window functions", 1, 8),
        ("SELECT a, a FROM orders", "duplicate output column 'a'", 1, 11),
        ("SELECT a AS x, b AS x FROM orders", "duplicate output column 'x'", 1, 16),
        ("SELECT a, * FROM orders", "* is only allowed once, as the first item", 1, 11),
        ("SELECT a FROM orders o", "not an alias", 1, 15),
        ("SELECT a FROM orders; SELECT b FROM orders", "only one statement", 1, 21),
        ("UPDATE orders SET a = 1", "only SELECT is supported", 1, 1),
        ("SELECT a\nFROM orders WHERE (a +", "syntax error", 2, 22),
        ("SELECT 'abc FROM orders", "syntax error", 1, 8),
        ("SELECT a FROM orders WHERE a IS 5", "IS only supports", 1, 28),
        ("", "empty query", 1, 1),
        ("SELECT a", "missing FROM", 1, 9),
    ],
)
def test_unsupported_or_bad_sql_names_the_problem_and_its_position(
    sql: str, fragment: str, line: int, column: int
) -> None:
    err = sql_error(sql)
    assert fragment in err.reason
    assert (err.line, err.column) == (line, column), str(err)


def test_unsupported_clause_errors_say_what_is_supported() -> None:
    assert "supported: SELECT *" in sql_error("SELECT a FROM orders ORDER BY a").reason


def test_unknown_function_error_lists_the_functions() -> None:
    reason = sql_error("SELECT foo(1) FROM orders").reason
    assert "lower" in reason and "date_trunc" in reason


# ---------------------------------------------------------------- compile_condition


def test_compile_condition_filters_like_a_where_clause() -> None:
    cond = compile_condition("region = 'eu' AND amount >= 10")
    assert cond({"region": "eu", "amount": 10}) is True
    assert cond({"region": "eu"}) is False
    assert cond({"region": "us", "amount": 10}) is False


def test_compile_condition_accepts_user_functions() -> None:
    cond = compile_condition("is_even(n)", functions={"is_even": lambda n: n % 2 == 0})
    assert cond({"n": 4}) is True
    assert cond({"n": 3}) is False


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("region = ", "syntax error"),
        ("a = 1; DROP TABLE x", "syntax error"),
        ("a = 1 GROUP BY a", "syntax error"),
        ("nope(1)", "unknown function 'nope'"),
        ("   ", "empty condition"),
        ("'text'", "cannot use text 'text' as a condition"),
    ],
)
def test_compile_condition_rejects_bad_text_as_query_where(text: str, fragment: str) -> None:
    with pytest.raises(SqlError) as info:
        compile_condition(text)
    assert fragment in info.value.reason
    assert info.value.query == "where"
