"""Hostile SQL can only ever produce SqlError, and never reaches Python objects."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtis.sql import SqlError, compile_condition, compile_query

STREAMS = {"orders"}
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SQL_WORDS = st.sampled_from(
    [
        "SELECT",
        "FROM",
        "WHERE",
        "orders",
        "*",
        ",",
        "(",
        ")",
        "'",
        '"',
        "`",
        "[",
        "]",
        ";",
        "AND",
        "OR",
        "NOT",
        "IN",
        "LIKE",
        "ESCAPE",
        "CASE",
        "WHEN",
        "THEN",
        "END",
        "CAST",
        "AS",
        "INTEGER",
        "NULL",
        "1",
        "2.5",
        "'x'",
        "a",
        "a.b",
        "+",
        "-",
        "*",
        "/",
        "%",
        "||",
        "=",
        "<",
        "IS",
        "BETWEEN",
        "GROUP",
        "BY",
        "count",
        "lower",
        "(SELECT",
        "--",
        "/*",
        "*/",
        "?",
        ":p",
        "$1",
        "::",
        "UNION",
        "JOIN",
        "OVER",
        "__import__",
    ]
)


def compiles_or_sql_error(sql: str) -> None:
    try:
        query = compile_query("fuzz", sql, streams=STREAMS)
    except SqlError:
        return
    assert query.source == "orders"


@FUZZ
@given(st.text(max_size=200))
def test_random_text_only_ever_raises_sql_error(text: str) -> None:
    compiles_or_sql_error(text)
    with contextlib.suppress(SqlError):
        compile_condition(text)


@FUZZ
@given(st.lists(SQL_WORDS, max_size=30).map(" ".join))
def test_random_sql_token_soup_only_ever_raises_sql_error(text: str) -> None:
    compiles_or_sql_error(text)
    compiles_or_sql_error("SELECT " + text)
    compiles_or_sql_error("SELECT a FROM orders WHERE " + text)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT __import__('os') FROM orders",
        "SELECT eval('1') FROM orders",
        "SELECT exec('print(1)') FROM orders",
        "SELECT getattr(a, '__class__') FROM orders",
        "SELECT open('/etc/passwd') FROM orders",
        "SELECT compile('1', 'x', 'eval') FROM orders",
        "SELECT globals() FROM orders",
        "SELECT load_extension('x') FROM orders",
    ],
)
def test_python_builtins_are_unknown_functions(sql: str) -> None:
    with pytest.raises(SqlError, match="unknown function"):
        compile_query("evil", sql, streams=STREAMS)


@pytest.mark.parametrize(
    "path",
    [
        "__class__",
        "a.__class__",
        "a.__class__.__mro__",
        "__dict__",
        "a.__globals__",
        '"__builtins__"',
        "r.get",
        "a.keys",
    ],
)
def test_dunder_and_method_names_are_just_missing_fields(path: str) -> None:
    query = compile_query("q", f"SELECT {path} AS v FROM orders", streams=STREAMS)
    assert query.run({"a": {"b": 1}}) == {"v": None}


def test_a_dunder_named_key_in_the_event_is_read_as_data() -> None:
    query = compile_query("q", "SELECT a.__class__ AS v FROM orders", streams=STREAMS)
    assert query.run({"a": {"__class__": "just data"}}) == {"v": "just data"}


def test_paths_do_not_reach_into_strings_or_lists() -> None:
    query = compile_query("q", "SELECT s.upper AS u, l.append AS p FROM orders", streams=STREAMS)
    assert query.run({"s": "text", "l": [1]}) == {"u": None, "p": None}


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT a FROM orders; DROP TABLE orders", "only one statement"),
        ("SELECT a FROM orders WHERE 1; DROP TABLE orders", "only one statement"),
        ("DROP TABLE orders", "only SELECT is supported"),
        ("PRAGMA writable_schema = 1", "only SELECT is supported"),
        ("ATTACH DATABASE '/tmp/x.db' AS x", "only SELECT is supported"),
        ("DELETE FROM orders", "only SELECT is supported"),
        ("INSERT INTO orders VALUES (1)", "only SELECT is supported"),
        ("VACUUM", ""),
        ("SELECT a FROM orders UNION SELECT b FROM orders", "only SELECT is supported"),
        ("WITH x AS (SELECT 1) SELECT a FROM orders", "WITH is not supported"),
        ("SELECT a FROM sqlite_master", "unknown stream"),
        ("SELECT a FROM main.orders", "bare stream name"),
    ],
)
def test_statements_other_than_one_select_are_refused(sql: str, fragment: str) -> None:
    with pytest.raises(SqlError) as info:
        compile_query("evil", sql, streams=STREAMS)
    assert fragment in info.value.reason


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "(" * 5000 + "1" + ")" * 5000 + " FROM orders",
        "SELECT " + "+".join(["a"] * 3000) + " AS v FROM orders",
        "SELECT " + " || ".join(["'x'"] * 3000) + " AS v FROM orders",
        "SELECT a FROM orders WHERE " + " AND ".join(["a = 1"] * 3000),
        "SELECT " + "NOT " * 3000 + "a FROM orders",
        "SELECT " + "lower(" * 2000 + "a" + ")" * 2000 + " FROM orders",
        "SELECT " + "CASE WHEN a THEN " * 500 + "1" + " END" * 500 + " FROM orders",
        "SELECT " + "-" * 5000 + "1 FROM orders",
        "SELECT 1 FROM orders WHERE a IN (" + ", ".join(["1"] * 30000) + ")",
        "SELECT '" + "x" * 200_000 + "' FROM orders",
    ],
)
def test_huge_or_deep_expressions_raise_sql_error_not_recursion_error(sql: str) -> None:
    with pytest.raises(SqlError):
        compile_query("deep", sql, streams=STREAMS)


def test_deep_condition_text_raises_sql_error() -> None:
    with pytest.raises(SqlError):
        compile_condition("(" * 5000 + "a = 1" + ")" * 5000)


def test_moderately_nested_expressions_still_compile_and_run() -> None:
    sql = "SELECT " + "+".join(["a"] * 60) + " AS v FROM orders"
    assert compile_query("ok", sql, streams=STREAMS).run({"a": 1}) == {"v": 60}


def test_compiled_closures_never_see_builtins_through_user_text() -> None:
    query = compile_query("q", 'SELECT lower("__builtins__") AS v FROM orders', streams=STREAMS)
    assert query.run({}) == {"v": None}
    assert query.run({"__builtins__": "X"}) == {"v": "x"}


@pytest.mark.parametrize(
    "text",
    ["1; DROP TABLE orders", "region = 'eu' UNION SELECT 1", "__import__('os')", "(SELECT 1)"],
)
def test_hostile_subscriber_filters_raise_sql_error(text: str) -> None:
    with pytest.raises(SqlError):
        compile_condition(text)


def test_sql_error_never_leaks_python_exceptions_from_the_parser() -> None:
    samples: list[Any] = ["\x00", "SELECT \udcff FROM orders", "SELECT 'a' FROM orders\x00", "'"]
    for text in samples:
        compiles_or_sql_error(text)
