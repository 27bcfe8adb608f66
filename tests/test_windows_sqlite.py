"""Property: tumbling-window results equal SQLite's GROUP BY over the same events."""

from __future__ import annotations

import math
import random
import sqlite3
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rtis.sql import compile_query
from rtis.windows import WindowOptions, WindowState

SIZE = 10_000  # a 10 s tumbling window
SQL = (
    "SELECT k, count(*) AS n, count(v) AS c, sum(v) AS s, avg(v) AS a, min(v) AS lo, "
    "max(v) AS hi, count(DISTINCT v) AS d FROM events "
    "GROUP BY k, TUMBLE(event_time, INTERVAL '10' SECOND)"
)
REFERENCE = f"""
SELECT k, (t / {SIZE}) * {SIZE} AS start, count(*), count(v), sum(v), avg(v), min(v), max(v),
       count(DISTINCT v)
FROM e GROUP BY k, t / {SIZE}
"""

values = st.one_of(st.none(), st.integers(-1000, 1000), st.floats(-1e6, 1e6, width=32))
events = st.lists(
    st.tuples(
        st.integers(0, 120_000),  # event time, ms
        st.sampled_from(["a", "b", "c", None]),
        values,
    ),
    max_size=120,
)


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return bool(a == b)


@settings(max_examples=100, deadline=None)
@given(events=events, seed=st.integers(0, 2**32 - 1))
def test_tumbling_windows_equal_sqlite_group_by_over_the_same_events(
    events: list[tuple[int, str | None, Any]], seed: int
) -> None:
    query = compile_query(
        "q", SQL, streams=["events"], options=WindowOptions(lateness_ms=200_000, idle_timeout=1.0)
    )
    state = WindowState(query.state_plan, query.options)  # type: ignore[union-attr]
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)  # out of order, but all within lateness
    emitted = []
    for t, k, v in shuffled:
        assert state.add({"k": k, "v": v}, t, 0.0) is None
        emitted += state.take(0.0)
    state.advance(1000.0)  # the stream goes quiet: every window closes
    emitted += state.take(1000.0)
    assert state.open_windows == 0
    ours = sorted(
        (
            (
                e.row["k"] or "",
                e.start_ms,
                e.row["n"],
                e.row["c"],
                e.row["s"],
                e.row["a"],
                e.row["lo"],
                e.row["hi"],
                e.row["d"],
            )
            for e in emitted
        ),
        key=lambda r: (r[0], r[1]),
    )

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE e (t INTEGER, k TEXT, v)")
    db.executemany("INSERT INTO e VALUES (?, ?, ?)", events)
    theirs = sorted(
        ((r[0] or "", *r[1:]) for r in db.execute(REFERENCE)), key=lambda r: (r[0], r[1])
    )
    db.close()
    assert len(ours) == len(theirs)
    for mine, ref in zip(ours, theirs, strict=True):
        assert all(close(a, b) for a, b in zip(mine, ref, strict=True)), (mine, ref)
