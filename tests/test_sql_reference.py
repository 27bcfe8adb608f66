"""Our compiled expressions agree with SQLite's own answer for the same row.

Hypothesis generates rows (NULLs, ints, floats, text, booleans, missing fields)
and well-typed expressions, renders them as SQL text, and compares the value we
compute (and the WHERE decision) with ``SELECT <expr> FROM t`` in sqlite3 over a
one-row table holding the same row. Ill-typed mixes, where SQLite silently
coerces and we deliberately raise EvalError, are checked separately.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtis.sql import EvalError, compile_condition, compile_query

FIELDS = ("i1", "i2", "f1", "s1", "s2", "b1")
MAX_DEPTH = 3
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE t ({', '.join(FIELDS)})")  # no affinity: values stay as given
    yield conn
    conn.close()


def sqlite_value(db: sqlite3.Connection, expr: str, row: dict[str, Any]) -> Any:
    db.execute("DELETE FROM t")
    db.execute(
        f"INSERT INTO t VALUES ({', '.join('?' * len(FIELDS))})", [row.get(f) for f in FIELDS]
    )
    return db.execute(f"SELECT {expr} FROM t").fetchone()[0]


def sqlite_where(db: sqlite3.Connection, expr: str) -> bool:
    return db.execute(f"SELECT count(*) FROM t WHERE {expr}").fetchone()[0] == 1


def our_value(expr: str, row: dict[str, Any]) -> Any:
    out = compile_query("ref", f"SELECT {expr} AS v FROM t", streams={"t"}).run(row)
    assert out is not None
    return out["v"]


def same(ours: Any, theirs: Any) -> bool:
    if ours is None or theirs is None:
        return ours is None and theirs is None
    if isinstance(theirs, str) or isinstance(ours, str):
        return ours == theirs
    if isinstance(ours, float) or isinstance(theirs, float):
        # SQLite's REAL and ours must agree in kind as well as value
        if not (isinstance(ours, float) and isinstance(theirs, float)):
            return False
        return math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-9)
    return bool(ours == theirs)  # int, or our bool against SQLite's 0/1


# ---------------------------------------------------------------- strategies

ALPHABET = st.sampled_from(list("abcAB _%-'xé\nZ9"))
SHORT_TEXT = st.text(ALPHABET, max_size=6)
SMALL_INT = st.integers(min_value=-1000, max_value=1000)
SMALL_FLOAT = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False).map(lambda f: round(f, 3))


def _field(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    missing: st.SearchStrategy[Any] = st.just(...)
    return st.one_of(missing, st.none(), strategy, strategy)


ROWS = st.fixed_dictionaries(
    {
        "i1": _field(SMALL_INT),
        "i2": _field(st.integers(min_value=-5, max_value=5)),
        "f1": _field(SMALL_FLOAT),
        "s1": _field(SHORT_TEXT),
        "s2": _field(SHORT_TEXT),
        "b1": _field(st.booleans()),
    }
).map(lambda d: {k: v for k, v in d.items() if v is not ...})


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_number(value: float) -> str:
    text = repr(value)
    return f"({text})" if text.startswith("-") else text


def num(depth: int) -> st.SearchStrategy[str]:
    leaves = st.one_of(
        st.sampled_from(["i1", "i2", "f1", "b1", "NULL"]),
        SMALL_INT.map(sql_number),
        SMALL_FLOAT.map(sql_number),
    )
    if depth <= 0:
        return leaves
    n, t, c = num(depth - 1), text(depth - 1), cond(depth - 1)
    ops = st.sampled_from(["+", "-", "*", "/", "%"])
    return st.one_of(
        leaves,
        st.tuples(n, ops, n).map(lambda x: f"({x[0]} {x[1]} {x[2]})"),
        n.map(lambda a: f"(- {a})"),
        st.tuples(st.sampled_from(["abs", "round", "floor", "ceil"]), n).map(
            lambda x: f"{x[0]}({x[1]})"
        ),
        st.tuples(n, st.integers(0, 3)).map(lambda x: f"round({x[0]}, {x[1]})"),
        st.tuples(n, n).map(lambda x: f"coalesce({x[0]}, {x[1]})"),
        st.tuples(n, n).map(lambda x: f"ifnull({x[0]}, {x[1]})"),
        st.tuples(n, n).map(lambda x: f"nullif({x[0]}, {x[1]})"),
        t.map(lambda a: f"length({a})"),
        st.tuples(c, n, n).map(lambda x: f"(CASE WHEN {x[0]} THEN {x[1]} ELSE {x[2]} END)"),
        st.tuples(n, n, n, n).map(
            lambda x: f"(CASE {x[0]} WHEN {x[1]} THEN {x[2]} ELSE {x[3]} END)"
        ),
        st.tuples(n, st.sampled_from(["INTEGER", "REAL"])).map(lambda x: f"CAST({x[0]} AS {x[1]})"),
        st.integers(-99, 99).map(lambda i: f"CAST('{i}' AS INTEGER)"),
        SMALL_FLOAT.map(lambda f: f"CAST('{f!r}' AS REAL)"),
    )


def text(depth: int) -> st.SearchStrategy[str]:
    leaves = st.one_of(st.sampled_from(["s1", "s2", "NULL"]), SHORT_TEXT.map(sql_text))
    if depth <= 0:
        return leaves
    n, t, c = num(depth - 1), text(depth - 1), cond(depth - 1)
    small = st.integers(-6, 6)
    return st.one_of(
        leaves,
        st.tuples(t, t).map(lambda x: f"({x[0]} || {x[1]})"),
        st.tuples(t, n).map(lambda x: f"({x[0]} || {x[1]})"),
        st.tuples(st.sampled_from(["lower", "upper", "trim", "ltrim", "rtrim"]), t).map(
            lambda x: f"{x[0]}({x[1]})"
        ),
        st.tuples(t, t).map(lambda x: f"trim({x[0]}, {x[1]})"),
        st.tuples(t, small).map(lambda x: f"substr({x[0]}, {x[1]})"),
        st.tuples(t, small, small).map(lambda x: f"substr({x[0]}, {x[1]}, {x[2]})"),
        st.tuples(t, t, t).map(lambda x: f"replace({x[0]}, {x[1]}, {x[2]})"),
        st.tuples(t, t).map(lambda x: f"coalesce({x[0]}, {x[1]})"),
        n.map(lambda a: f"CAST({a} AS TEXT)"),
        st.tuples(c, t, t).map(lambda x: f"(CASE WHEN {x[0]} THEN {x[1]} ELSE {x[2]} END)"),
    )


def cond(depth: int) -> st.SearchStrategy[str]:
    n, t = num(max(depth - 1, 0)), text(max(depth - 1, 0))
    cmp = st.sampled_from(["=", "==", "!=", "<>", "<", "<=", ">", ">="])
    pattern = st.text(st.sampled_from(list("ab%_A'é")), max_size=5).map(sql_text)
    leaves = st.one_of(
        st.sampled_from(["b1", "TRUE", "FALSE"]),
        st.tuples(n, cmp, n).map(lambda x: f"({x[0]} {x[1]} {x[2]})"),
        st.tuples(t, cmp, t).map(lambda x: f"({x[0]} {x[1]} {x[2]})"),
        st.tuples(t, st.sampled_from(["LIKE", "NOT LIKE"]), pattern).map(
            lambda x: f"({x[0]} {x[1]} {x[2]})"
        ),
        st.tuples(t, pattern).map(lambda x: f"({x[0]} LIKE {x[1]} ESCAPE 'a')"),
        st.tuples(n, st.sampled_from(["IS NULL", "IS NOT NULL"])).map(lambda x: f"({x[0]} {x[1]})"),
        st.tuples(t, st.sampled_from(["IS NULL", "IS NOT NULL"])).map(lambda x: f"({x[0]} {x[1]})"),
        st.tuples(n, st.sampled_from(["IN", "NOT IN"]), st.lists(n, min_size=1, max_size=4)).map(
            lambda x: f"({x[0]} {x[1]} ({', '.join(x[2])}))"
        ),
        st.tuples(t, st.sampled_from(["IN", "NOT IN"]), st.lists(t, min_size=1, max_size=4)).map(
            lambda x: f"({x[0]} {x[1]} ({', '.join(x[2])}))"
        ),
        st.tuples(n, st.sampled_from(["BETWEEN", "NOT BETWEEN"]), n, n).map(
            lambda x: f"({x[0]} {x[1]} {x[2]} AND {x[3]})"
        ),
        st.tuples(t, st.sampled_from(["BETWEEN", "NOT BETWEEN"]), t, t).map(
            lambda x: f"({x[0]} {x[1]} {x[2]} AND {x[3]})"
        ),
    )
    if depth <= 0:
        return leaves
    c = cond(depth - 1)
    return st.one_of(
        leaves,
        st.tuples(c, st.sampled_from(["AND", "OR"]), c).map(lambda x: f"({x[0]} {x[1]} {x[2]})"),
        c.map(lambda a: f"(NOT {a})"),
        n.map(lambda a: f"(NOT {a})"),
    )


EXPRESSIONS = st.one_of(num(MAX_DEPTH), text(MAX_DEPTH), cond(MAX_DEPTH))


# ---------------------------------------------------------------- properties


@SETTINGS
@given(expr=EXPRESSIONS, row=ROWS)
def test_selected_value_matches_sqlite(
    db: sqlite3.Connection, expr: str, row: dict[str, Any]
) -> None:
    theirs = sqlite_value(db, expr, row)
    ours = our_value(expr, row)
    assert same(ours, theirs), f"{expr} over {row}: ours {ours!r}, SQLite {theirs!r}"


@SETTINGS
@given(expr=st.one_of(cond(MAX_DEPTH), num(MAX_DEPTH - 1)), row=ROWS)
def test_where_decision_matches_sqlite(
    db: sqlite3.Connection, expr: str, row: dict[str, Any]
) -> None:
    sqlite_value(db, "1", row)  # loads the row
    theirs = sqlite_where(db, expr)
    assert compile_condition(expr)(row) is theirs, f"WHERE {expr} over {row}"
    query = compile_query("ref", f"SELECT * FROM t WHERE {expr}", streams={"t"})
    assert (query.run(row) is not None) is theirs


# ---------------------------------------------------------------- deliberate differences

NON_NUMERIC_TEXT = st.text(st.sampled_from(list("abc -")), min_size=1, max_size=5)


@SETTINGS
@given(
    number=st.one_of(SMALL_INT, SMALL_FLOAT),
    word=NON_NUMERIC_TEXT,
    op=st.sampled_from(["+", "-", "*", "/", "%", "=", "!=", "<", ">=", "IN"]),
    text_first=st.booleans(),
)
def test_text_mixed_with_numbers_raises_where_sqlite_coerces(
    db: sqlite3.Connection, number: float, word: str, op: str, text_first: bool
) -> None:
    row = {"s1": word, "f1": number}
    left, right = ("s1", "f1") if text_first else ("f1", "s1")
    expr = f"{left} IN ({right})" if op == "IN" else f"{left} {op} {right}"
    sqlite_value(db, expr, row)  # SQLite answers something (a coerced value)
    with pytest.raises(EvalError, match="cannot"):
        our_value(expr, row)


@SETTINGS
@given(word=NON_NUMERIC_TEXT.filter(lambda w: w.strip(" ") != ""))
def test_text_used_as_a_condition_raises_where_sqlite_reads_it_as_false(
    db: sqlite3.Connection, word: str
) -> None:
    assert sqlite_value(db, f"NOT {sql_text(word)}", {}) == 1
    with pytest.raises(EvalError, match="as a condition"):
        compile_condition("s1 OR FALSE")({"s1": word})


@pytest.mark.parametrize(
    "expr",
    [
        "1 + 2 * 3 - 4 / 2 % 3",
        "'a' || 'b' || 12 = 'ab12'",
        "1 = 2 < 3",
        "NOT 1 = 2",
        "NOT 1 AND 0 OR 1",
        "1 OR 0 AND 0",
        "- 2 * 3",
        "2 BETWEEN 1 AND 3 = 1",
        "'x' || 2 = 'x2'",
        "1 < 2 = 2 > 1",
        "3 IN (1, 2, 3) AND 'a' LIKE 'A'",
        "CASE WHEN 1 THEN 2 END + 1",
    ],
)
def test_operator_precedence_matches_sqlite(db: sqlite3.Connection, expr: str) -> None:
    try:
        ours = our_value(expr, {})
    except EvalError:
        pytest.fail(f"{expr} raised; SQLite gives {sqlite_value(db, expr, {})!r}")
    assert same(ours, sqlite_value(db, expr, {})), expr
