"""Aggregate queries in the running app: stored rows, live messages, late events,
idle windows (fake clock), restarts and the rows API with per= re-aggregation."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from rtis.pipeline import WindowedRunner
from rtis.server import PIPELINE

from .conftest import ClientFactory, dead_letters, stored
from .test_pipeline import settle
from .test_ws import post, recv

ORDERS = {"orders": {"dedupe_key": "id", "time_field": "ts"}}
T0 = 1_700_000_040  # epoch seconds, a minute boundary: 2023-11-14T22:14:00Z

SALES = """
SELECT region, count(*) AS orders, sum(amount) AS total, avg(amount) AS mean,
       max(amount) AS biggest
FROM orders
GROUP BY region, TUMBLE(ts, INTERVAL '1' MINUTE)
"""


def queries(sql: str = SALES, **settings: Any) -> dict[str, Any]:
    return {"sales": {"sql": sql, **settings}}


def table(db: Path, name: str = "sales") -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(f'SELECT * FROM "{name}" ORDER BY time_ms, _key').fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]


def runner(client: TestClient[Any, Any]) -> WindowedRunner:
    r = client.app[PIPELINE].runners[0]
    assert isinstance(r, WindowedRunner)
    return r


def orders(first_id: int, *items: tuple[float, str, float]) -> list[dict[str, Any]]:
    return [
        {"id": first_id + i, "ts": T0 + t, "region": region, "amount": amount}
        for i, (t, region, amount) in enumerate(items)
    ]


async def test_a_closed_window_is_stored_with_real_columns_and_published_at_its_start(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=queries())
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "sales"})
    await recv(ws)
    await post(client, orders(1, (1, "eu", 10), (2, "us", 5), (30, "eu", 20.5)), "orders")
    await settle(client)
    assert table(db_path) == []  # the window is still open
    await post(client, orders(4, (61, "eu", 1)), "orders")  # the watermark passes its end
    await settle(client)
    rows = table(db_path)
    assert [{k: v for k, v in r.items() if k not in ("offset", "_key")} for r in rows] == [
        {
            "time_ms": T0 * 1000,
            "region": "eu",
            "window_start": "2023-11-14T22:14:00.000Z",
            "window_end": "2023-11-14T22:15:00.000Z",
            "orders": 2,
            "total": 30.5,
            "mean": 15.25,
            "biggest": 20.5,
            "revision": 0,
            "mean__sum": 30.5,
            "mean__count": 2,
        },
        {
            "time_ms": T0 * 1000,
            "region": "us",
            "window_start": "2023-11-14T22:14:00.000Z",
            "window_end": "2023-11-14T22:15:00.000Z",
            "orders": 1,
            "total": 5,
            "mean": 5.0,
            "biggest": 5,
            "revision": 0,
            "mean__sum": 5,
            "mean__count": 1,
        },
    ]
    frame = await recv(ws)
    assert [e["data"]["region"] for e in frame["events"]] == ["eu", "us"]
    assert frame["events"][0]["time"] == "2023-11-14T22:14:00.000Z"  # time = window_start
    assert "mean__sum" not in frame["events"][0]["data"]
    body = await (await client.get("/api/queries/sales/rows?region=us")).json()
    assert [(r["region"], r["orders"], r["window_end"]) for r in body["rows"]] == [
        ("us", 1, "2023-11-14T22:15:00.000Z")
    ]
    assert "mean__sum" not in body["rows"][0] and "_key" not in body["rows"][0]


async def test_an_idle_stream_closes_its_window_without_new_events(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=queries(idle_timeout="5s", lateness="2s"))
    r = runner(client)
    clock = [1000.0]
    r.clock = lambda: clock[0]
    await post(client, orders(1, (50, "eu", 1)), "orders")
    await settle(client)
    clock[0] += 5.0  # idle: the watermark is T0 + 48 s + 5 s, short of the end
    await r.tick()
    assert table(db_path) == []
    clock[0] += 7.0  # T0 + 48 s + 12 s = the window's end
    await r.tick()
    assert [row["orders"] for row in table(db_path)] == [1]


async def test_a_late_event_is_counted_and_dead_lettered_with_its_reason(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=queries(lateness="5s"))
    await post(client, orders(1, (10, "eu", 1), (66, "eu", 1), (20, "eu", 7)), "orders")
    await settle(client)
    assert [row["total"] for row in table(db_path)] == [1]  # 20 s came after the close
    assert runner(client).stats.late == 1
    [(_, query, reason, data)] = dead_letters(db_path)
    assert query == "sales" and data["id"] == 3
    assert reason.startswith("late event: event time 2023-11-14T22:14:20.000Z")


async def test_late_update_corrects_the_stored_row_and_publishes_a_revision(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=queries(late="update"))
    await post(client, orders(1, (10, "eu", 4), (61, "us", 1)), "orders")
    await settle(client)
    await post(client, orders(3, (20, "eu", 2)), "orders")
    await settle(client)
    await post(client, orders(4, (30, "eu", 6)), "orders")
    await settle(client)
    [eu] = [row for row in table(db_path) if row["region"] == "eu"]
    assert (eu["orders"], eu["total"], eu["mean"], eu["revision"]) == (3, 12, 4.0, 2)
    messages = [d for _, d in stored(db_path, "sales")]
    assert [(m["orders"], m.get("revision")) for m in messages] == [(1, None), (2, 1), (3, 2)]
    assert dead_letters(db_path) == []
    assert runner(client).stats.late == 2


async def test_a_restart_mid_window_resumes_the_window_state_from_the_checkpoint(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=queries())
    await post(client, orders(1, (1, "eu", 1), (2, "eu", 2)), "orders")
    await settle(client)
    await client.close()
    client = await start(streams=ORDERS, queries=queries())
    await post(client, orders(3, (3, "eu", 4), (70, "eu", 8)), "orders")
    await settle(client)
    [row] = table(db_path)
    assert (row["orders"], row["total"]) == (3, 7)


async def test_a_live_table_keeps_one_updated_row_per_key(
    start: ClientFactory, db_path: Path
) -> None:
    sql = "SELECT region, count(*) AS orders, sum(amount) AS total FROM orders GROUP BY region"
    client = await start(streams=ORDERS, queries=queries(sql))
    await post(client, orders(1, (1, "eu", 1), (2, "us", 2)), "orders")
    await settle(client)
    await post(client, orders(3, (3, "eu", 4)), "orders")
    await settle(client)
    rows = table(db_path)
    assert [(r["region"], r["orders"], r["total"]) for r in rows] == [("us", 1, 2), ("eu", 2, 5)]
    body = await (await client.get("/api/queries/sales/rows")).json()
    assert [r["region"] for r in body["rows"]] == ["us", "eu"]
    assert "revision" not in body["rows"][0]


async def test_rows_per_hour_merge_averages_from_sums_and_counts(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=queries())
    await post(
        client,
        orders(1, (1, "eu", 1), (2, "eu", 2), (3, "eu", 3), (61, "eu", 10), (3700, "us", 1)),
        "orders",
    )
    await post(client, orders(10, (7300, "x", 0)), "orders")  # closes everything before
    await settle(client)
    body = await (await client.get("/api/queries/sales/rows?per=hour&region=eu")).json()
    [eu] = body["rows"]
    # Windows: (1 + 2 + 3) / 3 = 2 and 10 / 1 = 10; the average of averages would be 6.
    assert eu["mean"] == 4.0
    assert (eu["orders"], eu["total"], eu["biggest"]) == (4, 16, 10)
    assert (eu["window_start"], eu["window_end"]) == (
        "2023-11-14T22:00:00.000Z",
        "2023-11-14T23:00:00.000Z",
    )
    day = await (await client.get("/api/queries/sales/rows?per=day&tz=Asia/Tokyo")).json()
    assert [(r["region"], r["window_start"]) for r in day["rows"]] == [
        ("eu", "2023-11-14T15:00:00.000Z"),  # midnight in Tokyo (UTC+9)
        ("us", "2023-11-14T15:00:00.000Z"),
    ]
    early = await (await client.get(f"/api/queries/sales/rows?per=hour&to={T0 + 60}")).json()
    assert [r["orders"] for r in early["rows"]] == [3]


async def test_rows_that_cannot_be_re_aggregated_answer_400_saying_why(
    start: ClientFactory,
) -> None:
    sql = (
        "SELECT region, count(DISTINCT amount) AS amounts FROM orders "
        "GROUP BY region, TUMBLE(ts, INTERVAL '1' MINUTE)"
    )
    client = await start(
        streams=ORDERS,
        queries={
            "sales": {"sql": sql},
            "hops": {"sql": "SELECT count(*) AS n FROM orders GROUP BY HOP(ts, '1m', '5m')"},
            "plain": {"sql": "SELECT id FROM orders"},
        },
    )
    for url, fragment in [
        ("/api/queries/sales/rows?per=hour", "distinct counts of separate windows"),
        ("/api/queries/hops/rows?per=hour", "HOP windows, which overlap"),
        ("/api/queries/sales/rows?per=week", "per must be one of minute, hour, day"),
        ("/api/queries/sales/rows?per=day&tz=Mars/Olympus", "unknown time zone"),
        ("/api/queries/sales/rows?tz=UTC", "add per="),
        ("/api/queries/sales/rows?colour=red", "unknown column 'colour'"),
        ("/api/queries/plain/rows?per=hour", "has no GROUP BY"),
    ]:
        resp = await client.get(url)
        assert resp.status == 400, url
        body = await resp.json()
        assert fragment in body["error"]["message"], (url, body)
