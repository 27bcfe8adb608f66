"""Continuous stateless queries: run after commit, stored, published, checkpointed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from rtis.server import PIPELINE, STORE

from .conftest import ClientFactory, dead_letters, stored
from .test_ws import post, recv, recv_offsets

ORDERS = {"orders": {"dedupe_key": "id"}}
SMALL = {
    "small_orders": {
        "sql": "SELECT id, amount, lower(trim(region)) AS region FROM orders WHERE amount < 500"
    }
}


async def settle(client: TestClient[Any, Any], timeout: float = 10.0) -> None:
    """Wait until every query has processed everything committed."""
    pipeline = client.app[PIPELINE]
    deadline = time.monotonic() + timeout
    while any(r.behind for r in pipeline.runners):
        assert time.monotonic() < deadline, "queries did not catch up"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)


def table(db: Path, name: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f'SELECT * FROM "{name}" ORDER BY offset').fetchall()
    finally:
        conn.close()


async def test_a_query_filters_and_transforms_into_a_table_with_real_columns(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=SMALL)
    await post(
        client,
        [
            {"id": 1, "amount": 20, "region": " EU "},
            {"id": 2, "amount": 900, "region": "us"},
            {"id": 3, "amount": 499.5, "region": "Us"},
            {"id": 4, "amount": None, "region": "eu"},  # NULL in WHERE is false
        ],
        "orders",
    )
    await settle(client)
    rows = table(db_path, "small_orders")
    assert [r[0] for r in rows] == [1, 2]  # the query topic's offsets
    assert [r[2:] for r in rows] == [(1, 20, "eu"), (3, 499.5, "us")]
    assert [d for _, d in stored(db_path, "small_orders")] == [
        {"id": 1, "amount": 20, "region": "eu"},
        {"id": 3, "amount": 499.5, "region": "us"},
    ]
    resp = await client.get("/api/queries/small_orders/rows?region=us")
    body = await resp.json()
    assert [r["id"] for r in body["rows"]] == [3]


async def test_query_outputs_are_published_live_after_commit(start: ClientFactory) -> None:
    client = await start(streams=ORDERS, queries=SMALL)
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "small_orders"})
    await recv(ws)
    await post(client, [{"id": i, "amount": 100 * i, "region": "EU"} for i in range(10)], "orders")
    offsets = await recv_offsets(ws, 5)
    assert offsets == [1, 2, 3, 4, 5]


async def test_a_runtime_error_dead_letters_the_event_and_the_query_continues(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=SMALL)
    await post(
        client,
        [
            {"id": 1, "amount": 5, "region": "eu"},
            {"id": 2, "amount": "lots", "region": "eu"},  # text < number: a type error
            {"id": 3, "amount": 6, "region": 7},  # trim of a number: a type error
            {"id": 4, "amount": 7, "region": "eu"},
        ],
        "orders",
    )
    await settle(client)
    assert [r[2] for r in table(db_path, "small_orders")] == [1, 4]
    letters = dead_letters(db_path)
    assert [(s, q, d["id"]) for s, q, _, d in letters] == [
        ("orders", "small_orders", 2),
        ("orders", "small_orders", 3),
    ]
    assert client.app[PIPELINE].runners[0].stats.errors == 2
    resp = await client.get("/api/dead-letters?query=small_orders")
    body = await resp.json()
    assert [d["data"]["id"] for d in body["dead_letters"]] == [3, 2]
    assert "amount" in body["dead_letters"][1]["reason"]


async def test_a_query_that_falls_behind_catches_up_from_the_log_without_slowing_ingest(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=SMALL)
    runner = client.app[PIPELINE].runners[0]
    runner.max_queued = 50  # a tiny queue: it will overflow
    store = client.app[STORE]
    gate = asyncio.Event()
    real_process = runner._process

    async def slow_process(messages: Any) -> None:
        await gate.wait()
        await real_process(messages)

    runner._process = slow_process  # type: ignore[method-assign]
    for k in range(20):
        events = [{"id": 20 * k + i, "amount": 1, "region": "eu"} for i in range(20)]
        await post(client, events, "orders")  # acknowledged while the query is stuck
    assert store.last_offset("orders") == 400
    assert runner.position == 0
    gate.set()
    await settle(client)
    assert runner.stats.catch_ups >= 2
    rows = table(db_path, "small_orders")
    assert [r[2] for r in rows] == list(range(400))  # nothing skipped, nothing twice


async def test_a_restarted_app_resumes_each_query_from_its_checkpoint(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=SMALL)
    await post(client, [{"id": i, "amount": i} for i in range(5)], "orders")
    await settle(client)
    await client.close()
    client = await start(streams=ORDERS, queries=SMALL)
    await post(client, [{"id": i, "amount": i} for i in range(5, 8)], "orders")
    await settle(client)
    rows = table(db_path, "small_orders")
    assert [(r[0], r[2]) for r in rows] == [(i + 1, i) for i in range(8)]


async def test_a_query_whose_sql_changed_is_recomputed_from_the_retained_log(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS, queries=SMALL)
    await post(client, [{"id": i, "amount": 100 * i, "region": "EU"} for i in range(8)], "orders")
    await settle(client)
    assert len(table(db_path, "small_orders")) == 5
    await client.close()
    changed = {
        "small_orders": {"sql": "SELECT id, amount * 2 AS double FROM orders WHERE amount < 300"}
    }
    client = await start(streams=ORDERS, queries=changed)
    await settle(client)
    rows = table(db_path, "small_orders")
    assert [r[2:] for r in rows] == [(0, 0), (1, 200), (2, 400)]
    # The topic's offsets keep counting up: the new outputs follow the old ones.
    assert [r[0] for r in rows] == [6, 7, 8]
    assert [o for o, _ in stored(db_path, "small_orders")] == [6, 7, 8]


async def test_select_star_keeps_the_whole_event_and_extra_columns(
    start: ClientFactory, db_path: Path
) -> None:
    queries = {"tagged": {"sql": "SELECT *, amount > 100 AS big FROM orders"}}
    client = await start(streams=ORDERS, queries=queries)
    await post(client, [{"id": 1, "amount": 150, "meta": {"a": [1, 2]}}], "orders")
    await settle(client)
    [(_offset, _time, data, big)] = table(db_path, "tagged")
    assert orjson.loads(data) == {"id": 1, "amount": 150, "meta": {"a": [1, 2]}, "big": True}
    assert big == 1


async def test_user_functions_from_config_are_callable_and_their_failures_dead_letter(
    start: ClientFactory, db_path: Path
) -> None:
    queries = {"scored": {"sql": "SELECT id, score(amount) AS s FROM orders"}}
    client = await start(
        streams=ORDERS,
        queries=queries,
        functions={"score": "tests.userfuncs:score"},
    )
    await post(client, [{"id": 1, "amount": 4}, {"id": 2, "amount": -1}], "orders")
    await settle(client)
    assert [r[2:] for r in table(db_path, "scored")] == [(1, 16)]
    [(_, query, reason, data)] = dead_letters(db_path)
    assert query == "scored" and data["id"] == 2 and "score" in reason
