"""Window state (rtis.windows): events in, rows out, with a fake clock and no sleeps."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest

from rtis.sql import compile_query
from rtis.sql_values import EvalError
from rtis.windows import Emit, WindowOptions, WindowState

MIN = 60_000
T0 = 1_700_000_040_000  # a minute boundary (2023-11-14T22:14:00Z)


def state(sql: str, **options: Any) -> WindowState:
    query = compile_query("q", sql, streams=["orders"], options=WindowOptions(**options))
    return WindowState(query.state_plan, query.options)  # type: ignore[union-attr]


def feed(st: WindowState, events: list[tuple[int, dict[str, Any]]], now: float = 0.0) -> list[Any]:
    return [st.add(row, t, now) for t, row in events]


def rows(emits: list[Emit]) -> list[dict[str, Any]]:
    return [e.row for e in emits if e.keep]


SALES = (
    "SELECT region, count(*) AS n, count(amount) AS priced, sum(amount) AS total, "
    "avg(amount) AS mean, min(amount) AS low, max(amount) AS high, "
    "count(DISTINCT user) AS users FROM orders "
    "GROUP BY region, TUMBLE(ts, INTERVAL '1' MINUTE)"
)


def test_a_tumbling_window_emits_one_row_per_group_when_the_watermark_passes_its_end() -> None:
    st = state(SALES)
    feed(
        st,
        [
            (T0 + 1000, {"region": "eu", "amount": 10, "user": "a"}),
            (T0 + 2000, {"region": "us", "amount": 5, "user": "a"}),
            (T0 + 3000, {"region": "eu", "amount": None, "user": "b"}),
            (T0 + 4000, {"region": "eu", "amount": 2.5, "user": "a"}),
        ],
    )
    assert st.take(0.0) == []  # the window is open
    feed(st, [(T0 + MIN - 1, {"region": "us", "amount": 1, "user": "c"})])
    assert st.take(0.0) == []  # the watermark is just before the end
    feed(st, [(T0 + MIN, {"region": "eu", "amount": 1, "user": "z"})])
    out = st.take(0.0)
    assert rows(out) == [
        {
            "region": "eu",
            "window_start": "2023-11-14T22:14:00.000Z",
            "window_end": "2023-11-14T22:15:00.000Z",
            "n": 3,
            "priced": 2,
            "total": 12.5,
            "mean": 6.25,
            "low": 2.5,
            "high": 10,
            "users": 2,
        },
        {
            "region": "us",
            "window_start": "2023-11-14T22:14:00.000Z",
            "window_end": "2023-11-14T22:15:00.000Z",
            "n": 2,
            "priced": 2,
            "total": 6,
            "mean": 3.0,
            "low": 1,
            "high": 5,
            "users": 2,
        },
    ]
    assert all(e.final and e.time_ms == T0 for e in out)
    assert out[0].hidden == {"mean__sum": 12.5, "mean__count": 2}
    assert st.open_windows == 1  # only the next minute's "eu" group is left


def test_out_of_order_events_within_lateness_count_and_later_ones_are_late() -> None:
    st = state(SALES, lateness_ms=5000)
    feed(st, [(T0 + 1000, {"region": "eu", "amount": 1})])
    feed(st, [(T0 + MIN + 4000, {"region": "eu", "amount": 1})])  # watermark T0 + 59s
    assert feed(st, [(T0 + 30_000, {"region": "eu", "amount": 2})]) == [None]  # in time
    feed(st, [(T0 + MIN + 6000, {"region": "eu", "amount": 1})])  # watermark T0 + 61s
    assert rows(st.take(0.0))[0]["total"] == 3
    [late] = feed(st, [(T0 + 59_000, {"region": "eu", "amount": 100})])
    assert late is not None and late.updates == []
    assert "late event: event time 2023-11-14T22:14:59.000Z" in late.reason
    assert "closed window [2023-11-14T22:14:00.000Z, 2023-11-14T22:15:00.000Z)" in late.reason
    assert "lateness 5s" in late.reason
    assert st.late_events == 1
    assert st.take(0.0) == []


def test_an_idle_stream_closes_its_windows_by_the_wall_clock_time_elapsed() -> None:
    st = state(SALES, lateness_ms=2000, idle_timeout=5.0)
    # Old data (2023): the watermark moves by the time elapsed, never to "now".
    feed(st, [(T0 + 10_000, {"region": "eu", "amount": 1})], now=100.0)
    st.advance(104.0)  # idle for less than idle_timeout: nothing moves
    assert st.watermark_ms == T0 + 8000 and st.take(104.0) == []
    st.advance(110.0)  # idle 10 s: watermark = max - lateness + 10 s
    assert st.watermark_ms == T0 + 18_000 and st.take(110.0) == []
    st.advance(152.0)  # idle 52 s: T0 + 60 s, the window's end
    assert rows(st.take(152.0))[0]["n"] == 1
    assert st.open_windows == 0


def test_a_new_event_restarts_the_idle_clock_and_the_watermark_never_goes_back() -> None:
    st = state(SALES, idle_timeout=1.0)
    feed(st, [(T0 + 10_000, {"region": "eu"})], now=0.0)
    st.advance(30.0)
    assert st.watermark_ms == T0 + 40_000
    feed(st, [(T0 + 11_000, {"region": "eu"})], now=30.0)  # older than the watermark
    assert st.watermark_ms == T0 + 40_000
    st.advance(30.5)  # not idle long enough since that event
    assert st.watermark_ms == T0 + 40_000


def test_hop_windows_count_an_event_in_every_window_that_covers_it() -> None:
    st = state(
        "SELECT count(*) AS n FROM orders "
        "GROUP BY HOP(ts, INTERVAL '20' SECOND, INTERVAL '1' MINUTE)"
    )
    feed(st, [(T0 + 45_000, {}), (T0 + 50_000, {})])
    feed(st, [(T0 + 10 * MIN, {})])
    out = rows(st.take(0.0))
    assert [(r["window_start"][11:19], r["window_end"][11:19], r["n"]) for r in out] == [
        ("22:14:00", "22:15:00", 2),
        ("22:14:20", "22:15:20", 2),
        ("22:14:40", "22:15:40", 2),
    ]


def test_session_windows_merge_events_closer_than_the_gap_per_key() -> None:
    st = state(
        "SELECT user, count(*) AS clicks FROM orders "
        "GROUP BY user, SESSION(ts, INTERVAL '10' SECOND)"
    )
    feed(
        st,
        [
            (T0, {"user": "a"}),
            (T0 + 5000, {"user": "a"}),
            (T0 + 1000, {"user": "b"}),
            (T0 + 30_000, {"user": "a"}),  # a new session for a; b's closes (ends T0 + 11 s)
        ],
    )
    assert [(r["user"], r["clicks"], r["window_end"][17:23]) for r in rows(st.take(0.0))] == [
        ("b", 1, "11.000"),  # in order of their ends
        ("a", 2, "15.000"),
    ]
    feed(st, [(T0 + 22_000, {"user": "a"})])  # before the watermark, but joins a's open session
    feed(st, [(T0 + 60_000, {"user": "c"})])
    [a] = rows(st.take(0.0))
    assert (a["user"], a["clicks"], a["window_start"][17:23], a["window_end"][17:23]) == (
        "a",
        2,
        "22.000",
        "40.000",
    )


def test_two_sessions_joined_by_an_event_in_between_become_one() -> None:
    st = state(
        "SELECT count(*) AS n FROM orders GROUP BY SESSION(ts, INTERVAL '10' SECOND)",
        lateness_ms=60_000,
    )
    feed(st, [(T0, {}), (T0 + 15_000, {}), (T0 + 8000, {})])
    assert st.open_windows == 1
    feed(st, [(T0 + 10 * MIN, {})])
    [row] = rows(st.take(0.0))
    assert row["n"] == 3 and row["window_end"][17:23] == "25.000"


def test_a_live_table_without_window_emits_the_changed_keys_after_each_batch() -> None:
    st = state("SELECT region, count(*) AS n, sum(amount) AS total FROM orders GROUP BY region")
    feed(st, [(T0, {"region": "eu", "amount": 1}), (T0 + 1, {"region": "us", "amount": 2})])
    assert rows(st.take(0.0)) == [
        {"region": "eu", "n": 1, "total": 1},
        {"region": "us", "n": 1, "total": 2},
    ]
    feed(st, [(T0 + 2, {"region": "eu", "amount": 5})])
    [emit] = st.take(0.0)
    assert emit.row == {"region": "eu", "n": 2, "total": 6} and emit.ident == '["eu"]'
    assert emit.time_ms == T0 + 2  # the key's latest event time
    assert st.take(0.0) == []


def test_emit_changes_is_throttled_by_emit_interval_and_ends_with_the_final_row() -> None:
    st = state(SALES, emit="changes", emit_interval=1.0)
    feed(st, [(T0, {"region": "eu", "amount": 1})], now=0.0)
    assert [r["n"] for r in rows(st.take(0.0))] == [1]
    feed(st, [(T0 + 1, {"region": "eu", "amount": 1})], now=0.5)
    assert st.take(0.5) == []  # throttled
    st.advance(1.0)
    [update] = st.take(1.0)
    assert update.row["n"] == 2 and not update.final
    feed(st, [(T0 + 2, {"region": "eu", "amount": 1})], now=1.2)
    feed(st, [(T0 + MIN, {"region": "us", "amount": 1})], now=1.3)  # closes the window
    [final] = st.take(1.3)  # the final row is never throttled
    assert final.final and final.row["n"] == 3 and final.ident == update.ident


def test_having_filters_groups_and_may_name_output_aliases() -> None:
    st = state(
        "SELECT region, count(*) AS n FROM orders GROUP BY region, TUMBLE(ts, '1m') HAVING n > 1"
    )
    feed(st, [(T0, {"region": "eu"}), (T0, {"region": "eu"}), (T0, {"region": "us"})])
    feed(st, [(T0 + MIN, {"region": "x"})])
    assert [r["region"] for r in rows(st.take(0.0))] == ["eu"]


def test_an_event_that_cannot_be_evaluated_changes_nothing_but_the_watermark() -> None:
    st = state(SALES)
    feed(st, [(T0, {"region": "eu", "amount": 1, "user": "a"})])
    before = orjson.loads(st.snapshot())
    with pytest.raises(EvalError, match="sum"):
        st.add({"region": "eu", "amount": "lots", "user": "b"}, T0 + 5, 0.0)
    with pytest.raises(EvalError, match="cannot group by object"):
        st.add({"region": {"a": 1}}, T0 + 6, 0.0)
    after = orjson.loads(st.snapshot())
    assert after["windows"] == before["windows"]
    assert after["max"] == T0 + 6


def test_late_update_merges_the_event_into_the_stored_accumulators() -> None:
    st = state(SALES, late="update")
    feed(st, [(T0, {"region": "eu", "amount": 4, "user": "a"})])
    feed(st, [(T0 + MIN, {"region": "us", "amount": 1, "user": "a"})])
    [final] = st.take(0.0)
    assert final.acc is not None
    [late] = feed(st, [(T0 + 10, {"region": "eu", "amount": 2, "user": "b"})])
    assert late is not None
    [update] = late.updates
    assert update.ident == final.ident
    data, corrected = st.apply_late(final.acc, update)
    assert corrected is not None
    assert (corrected.row["n"], corrected.row["total"], corrected.row["users"]) == (2, 6, 2)
    assert corrected.row["mean"] == 3.0
    # A window that was never stored starts from the late event alone.
    _, fresh = st.apply_late(None, update)
    assert fresh is not None and fresh.row["n"] == 1
    assert orjson.loads(data)[0] == 2


def test_a_restored_snapshot_continues_exactly_like_an_uninterrupted_run() -> None:
    events = [
        (T0 + i * 7_000 + (i % 5) * 900, {"region": f"r{i % 7}", "amount": i, "user": i % 11})
        for i in range(60)
    ]
    straight = state(SALES, lateness_ms=3000, emit="changes", emit_interval=0.0)
    out_a: list[Any] = []
    for t, row in events:
        straight.add(row, t, 0.0)
        out_a += rows(straight.take(0.0))
    resumed = state(SALES, lateness_ms=3000, emit="changes", emit_interval=0.0)
    out_b: list[Any] = []
    for i, (t, row) in enumerate(events):
        if i % 9 == 4:  # "crash" after a checkpoint: a fresh state from the snapshot
            snap = resumed.snapshot()
            resumed = state(SALES, lateness_ms=3000, emit="changes", emit_interval=0.0)
            resumed.restore(snap, 0.0)
        resumed.add(row, t, 0.0)
        out_b += rows(resumed.take(0.0))
    assert out_a == out_b and len(out_a) > 60  # updates, then each window's final row


@pytest.mark.parametrize(
    "group_by",
    [
        "GROUP BY k, SESSION(ts, INTERVAL '5' SECOND)",
        "GROUP BY k, HOP(ts, INTERVAL '10' SECOND, INTERVAL '30' SECOND)",
        "GROUP BY k",
    ],
)
def test_snapshots_round_trip_for_sessions_hops_and_live_tables(group_by: str) -> None:
    sql = f"SELECT k, count(*) AS n, count(DISTINCT v) AS d FROM orders {group_by}"
    events = [(T0 + i * 1500 + (i // 10) * 20_000, {"k": i % 3, "v": i % 4}) for i in range(40)]
    a = state(sql)
    b = state(sql)
    out_a: list[Any] = []
    out_b: list[Any] = []
    for i, (t, row) in enumerate(events):
        a.add(row, t, 0.0)
        out_a += rows(a.take(0.0))
        if i % 7 == 3:
            snap = b.snapshot()
            b = state(sql)
            b.restore(snap, 0.0)
        b.add(row, t, 0.0)
        out_b += rows(b.take(0.0))
    assert out_a == out_b and out_a


def test_closed_windows_leave_memory_with_100000_distinct_keys() -> None:
    """100,000 distinct keys over 20 one-minute windows (5,000 new keys each): once a
    window closes its groups are gone, so the state holds one window's keys and the
    memory traced over the last windows stays flat instead of growing with the keys."""
    st = state("SELECT k, count(*) AS n, sum(v) AS s FROM orders GROUP BY k, TUMBLE(ts, '1m')")
    per_window, windows, traced_from = 5_000, 20, 16
    sizes: list[int] = []
    open_counts: list[int] = []
    emitted = 0
    try:
        for w in range(windows):
            if w == traced_from:  # tracing is slow: trace the last windows only
                tracemalloc.start()
            base = T0 + w * MIN
            for i in range(per_window):
                st.add({"k": w * per_window + i, "v": i}, base + i, 0.0)
            emitted += len(st.take(0.0))  # the previous window closed on this one's events
            open_counts.append(st.open_windows)
            if w >= traced_from:
                sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert emitted == (windows - 1) * per_window
    assert open_counts == [per_window] * windows  # only the current window is held
    assert len(st.snapshot()) < 200 * per_window  # the state to checkpoint is one window
    # Flat: after three more windows (15,000 more keys) memory has not grown.
    assert sizes[-1] < sizes[0] * 1.25 + 100_000, sizes
