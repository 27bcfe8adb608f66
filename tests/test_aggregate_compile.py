"""Compiling aggregate queries: what is accepted, and errors with line and column."""

from __future__ import annotations

from typing import Any

import pytest

from rtis.sql import SqlError, compile_query
from rtis.sql_aggregate import AggregateQuery
from rtis.windows import WindowOptions

STREAMS = ["orders", "clicks"]
TIME_FIELDS: dict[str, str | None] = {"orders": "ts", "clicks": None}


def compile_agg(sql: str, **options: Any) -> AggregateQuery:
    q = compile_query(
        "q", sql, streams=STREAMS, time_fields=TIME_FIELDS, options=WindowOptions(**options)
    )
    assert isinstance(q, AggregateQuery)
    return q


def error(sql: str, **options: Any) -> SqlError:
    with pytest.raises(SqlError) as info:
        compile_agg(sql, **options)
    return info.value


def test_windows_and_durations_are_read_from_the_group_by() -> None:
    q = compile_agg("SELECT count(*) AS n FROM orders GROUP BY TUMBLE(ts, INTERVAL '90' SECOND)")
    assert (q.window.kind, q.window.size_ms) == ("tumble", 90_000)
    q = compile_agg(
        "SELECT count(*) AS n FROM orders GROUP BY HOP(ts, '30s', INTERVAL '2 minutes')"
    )
    assert (q.window.kind, q.window.slide_ms, q.window.size_ms) == ("hop", 30_000, 120_000)
    q = compile_agg("SELECT u, count(*) AS n FROM clicks GROUP BY u, SESSION(event_time, '5m')")
    assert (q.window.kind, q.window.gap_ms) == ("session", 300_000)
    assert q.columns == ("u", "window_start", "window_end", "n")


def test_output_columns_are_keys_window_bounds_and_metrics_in_select_order() -> None:
    q = compile_agg(
        "SELECT lower(region) AS r, sum(amount) / count(*) AS per_order, window_end, "
        "avg(amount) AS mean, count(DISTINCT id) AS ids "
        "FROM orders GROUP BY r, TUMBLE(ts, '1m')"
    )
    assert [(c.name, c.role, c.aggregate) for c in q.outputs] == [
        ("r", "group", None),
        ("per_order", "expr", None),
        ("window_start", "window_start", None),  # added beside the selected window_end
        ("window_end", "window_end", None),
        ("mean", "metric", "avg"),
        ("ids", "metric", "count_distinct"),
    ]
    assert q.hidden_columns == ("mean__sum", "mean__count")
    # sum(amount) and count(*) are computed once each, whatever uses them
    assert [a.kind for a in q.state_plan.aggregates] == [
        "sum",
        "count_star",
        "avg",
        "count_distinct",
    ]


def test_the_plan_says_window_watermark_emit_and_late_policy() -> None:
    plan = compile_agg(
        "SELECT region, max(amount) AS top FROM orders GROUP BY region, TUMBLE(ts, '1h')",
        lateness_ms=5000,
        emit="changes",
        late="update",
    ).plan
    assert "windowed aggregation" in plan
    assert "TUMBLE 1h" in plan and "lateness 5s" in plan
    assert "changes: updated rows at most every 1s" in plan
    assert "late     update" in plan
    assert "stateless" not in plan


@pytest.mark.parametrize(
    ("sql", "fragment", "line", "column"),
    [
        ("SELECT amount FROM orders GROUP BY region", "column 'amount' must appear", 1, 8),
        (
            "SELECT count(*) FROM orders\nGROUP BY TUMBLE(created, '1m')",
            "'created' is not the event time of 'orders'; windows use the stream's event "
            "time: write TUMBLE(ts, ...)",
            2,
            17,
        ),
        (
            "SELECT count(*) FROM clicks GROUP BY TUMBLE(ts, '1m')",
            "has no time_field, so its event time is the arrival time",
            1,
            45,
        ),
        (
            "SELECT count(*) FROM orders GROUP BY TUMBLE(ts, '1 month')",
            "expected a duration",
            1,
            49,
        ),
        ("SELECT count(*) FROM orders GROUP BY TUMBLE(ts)", "takes 2 arguments", 1, 38),
        ("SELECT count(*) FROM orders GROUP BY HOP(ts, '2m', '1m')", "must not exceed", 1, 38),
        (
            "SELECT count(*) FROM orders GROUP BY TUMBLE(ts, '1m'), SESSION(ts, '1m')",
            "only one window",
            1,
            56,
        ),
        ("SELECT sum(DISTINCT amount) FROM orders", "only supported in count(DISTINCT", 1, 8),
        ("SELECT total(amount) FROM orders", "total() is not supported", 1, 8),
        ("SELECT max(a, b) FROM orders", "of several values is not supported", 1, 8),
        ("SELECT sum(count(*)) FROM orders", "cannot be nested", 1, 12),
        ("SELECT count(*) FROM orders GROUP BY 1", "column position", 1, 38),
        ("SELECT * FROM orders GROUP BY region", "SELECT * cannot be used with GROUP BY", 1, 8),
        ("SELECT region FROM orders GROUP BY sum(amount)", "not allowed in GROUP BY", 1, 36),
        ("SELECT TUMBLE(ts, '1m') FROM orders GROUP BY region", "belongs in GROUP BY", 1, 8),
        ("SELECT window_start, count(*) FROM orders", "needs a window", 1, 8),
        ("SELECT count(*) AS revision FROM orders", "clashes with a column rtis stores", 1, 8),
        ("SELECT a FROM orders WHERE sum(a) > 1 GROUP BY a", "only allowed in", 1, 28),
        (
            "SELECT u, count(*) FROM orders GROUP BY u, SESSION(ts, '1m')",
            'late = "update" is not supported with SESSION',
            1,
            44,
        ),
    ],
)
def test_unsupported_aggregate_sql_names_the_problem_and_its_position(
    sql: str, fragment: str, line: int, column: int
) -> None:
    err = error(sql, late="update" if "SESSION" in sql and "u," in sql else "drop")
    assert fragment in err.reason, err.reason
    assert (err.line, err.column) == (line, column), str(err)


def test_having_may_use_aggregates_not_selected_and_output_aliases() -> None:
    q = compile_agg(
        "SELECT region, count(*) AS n FROM orders GROUP BY region HAVING n > 1 AND max(x) < 5"
    )
    assert [a.kind for a in q.state_plan.aggregates] == ["count_star", "max"]
    row, keep = q.state_plan.output(("eu",), [2, 4], None, None)
    assert row == {"region": "eu", "n": 2} and keep is True
    assert q.state_plan.output(("eu",), [2, 7], None, None)[1] is False
