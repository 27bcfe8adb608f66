"""Retention purges old history and dead letters in small batches; offsets never restart."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from rtis.config import config_from_dict
from rtis.retention import Retention, purge_dead_letters, purge_messages, rules
from rtis.server import STORE, create_app
from rtis.store import SCHEMA, Store

from .conftest import ClientFactory, make_config

JSON = {"Content-Type": "application/json"}


def rows(db: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def offsets(db: Path, topic: str) -> list[int]:
    return [
        r[0]
        for r in rows(
            db,
            "SELECT m.offset FROM messages m JOIN topics t ON t.id = m.topic_id"
            f" WHERE t.name = '{topic}' ORDER BY m.offset",
        )
    ]


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- the purge steps, on a bare SQLite connection --------------------------------------


def log_db(times: list[int]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO topics (id, name, kind) VALUES (1, 't', 'stream')")
    conn.executemany(
        "INSERT INTO messages (topic_id, offset, time_ms, data) VALUES (1, ?, ?, '{}')",
        list(enumerate(times, 1)),
    )
    return conn


def remaining(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT offset FROM messages ORDER BY offset")]


def test_purge_deletes_the_expired_front_of_the_log_and_stops_at_the_first_young_message() -> None:
    conn = log_db([10, 20, 30, 99, 15, 40])
    assert purge_messages(conn, 1, cutoff_ms=50, max_offset=100) == (3, False)
    # offset 5 (time 15) is old but stays behind 4 (time 99): history stays contiguous
    assert remaining(conn) == [4, 5, 6]


def test_purge_takes_at_most_a_batch_and_says_when_more_is_due() -> None:
    conn = log_db([1] * 25)
    assert purge_messages(conn, 1, cutoff_ms=50, max_offset=100, limit=10) == (10, True)
    assert purge_messages(conn, 1, cutoff_ms=50, max_offset=100, limit=10) == (10, True)
    assert purge_messages(conn, 1, cutoff_ms=50, max_offset=100, limit=10) == (5, False)
    assert remaining(conn) == []


def test_purge_never_passes_max_offset_and_takes_result_rows_along() -> None:
    conn = log_db([1, 1, 1, 1])
    conn.execute('CREATE TABLE "q" (offset INTEGER PRIMARY KEY, time_ms INTEGER)')
    conn.executemany('INSERT INTO "q" VALUES (?, 1)', [(i,) for i in range(1, 5)])
    assert purge_messages(conn, 1, cutoff_ms=50, max_offset=2, table='"q"') == (2, False)
    assert remaining(conn) == [3, 4]
    assert [r[0] for r in conn.execute('SELECT offset FROM "q"')] == [3, 4]


def test_dead_letters_are_purged_oldest_first() -> None:
    conn = log_db([])
    conn.executemany(
        "INSERT INTO dead_letters (time_ms, stream, reason, data) VALUES (?, 's', 'r', '{}')",
        [(5,), (6,), (70,), (8,)],
    )
    assert purge_dead_letters(conn, cutoff_ms=50) == (2, False)
    assert [r[0] for r in conn.execute("SELECT time_ms FROM dead_letters")] == [70, 8]


def test_rules_come_from_stream_query_and_dead_letter_retention() -> None:
    config = config_from_dict(
        {
            "server": {"dead_letter_retention": "7d"},
            "streams": {"a": {"retention": "1h"}, "b": {}},
            "queries": {"q": {"sql": "SELECT * FROM a", "retention": "2m"}},
        }
    )
    assert [(r.topic, r.seconds, r.table) for r in rules(config)] == [
        ("a", 3600.0, None),
        ("q", 120.0, '"q"'),
        (None, 7 * 86400.0, None),
    ]


async def test_a_stream_is_purged_only_up_to_what_its_queries_have_processed(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "r.db", streams={"s": {"retention": "1s"}})
    async with Store.open(tmp_path / "r.db", [("s", "stream")]) as store:
        from rtis.ingest import Prepared

        await store.append("s", [Prepared(0, None, b"{}") for _ in range(10)])
        purger = Retention(store, config, safe_offset=lambda topic: 4, batch=3)
        assert await purger.purge() == {"s": 4}
        assert await store.first_offset("s") == 5
        assert store.last_offset("s") == 10


# -- in a running server ---------------------------------------------------------------


async def post(client: TestClient[Any, Any], stream: str, events: list[Any]) -> dict[str, Any]:
    resp = await client.post(f"/events/{stream}", data=orjson.dumps(events), headers=JSON)
    assert resp.status == 202, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def test_old_events_are_purged_and_offsets_continue_across_a_restart(
    aiohttp_client: Any, db_path: Path
) -> None:
    sections: dict[str, Any] = {
        "server": {"retention_interval": "20ms"},
        "streams": {"orders": {"time_field": "ts", "retention": "1h"}},
    }
    client = await aiohttp_client(create_app(make_config(db_path, **sections)))
    now = time.time()
    await post(client, "orders", [{"ts": now - 7200, "n": i} for i in range(5)])
    await eventually(lambda: offsets(db_path, "orders") == [])
    metrics = await (await client.get("/metrics")).text()
    assert 'rtis_retention_purged_total{table="messages"} 5.0' in metrics
    await client.close()
    # nothing is left, yet a restart goes on from topics.last_offset
    client = await aiohttp_client(create_app(make_config(db_path, **sections)))
    assert (await post(client, "orders", [{"ts": now}, {"ts": now}]))["first_offset"] == 6
    topics = await (await client.get("/api/topics")).json()
    [orders] = [t for t in topics["topics"] if t["name"] == "orders"]
    assert orders["first_offset"] == 6 and orders["last_offset"] == 7
    # an old event behind young ones waits for them: history stays contiguous
    await post(client, "orders", [{"ts": now - 7200}])
    await asyncio.sleep(0.2)
    assert offsets(db_path, "orders") == [6, 7, 8]


async def test_query_history_and_result_rows_are_purged_with_query_retention(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(
        server={"retention_interval": "20ms"},
        streams={"s": {"time_field": "ts"}},
        queries={"q": {"sql": "SELECT n FROM s", "retention": "1h"}},
    )
    now = time.time()
    await post(client, "s", [{"ts": now - 7200, "n": 1}, {"ts": now - 7200, "n": 2}])
    await post(client, "s", [{"ts": now, "n": 3}])
    await eventually(lambda: offsets(db_path, "q") == [3])
    assert rows(db_path, 'SELECT offset, n FROM "q"') == [(3, 3)]
    assert offsets(db_path, "s") == [1, 2, 3]  # the stream has no retention


async def test_dead_letters_older_than_dead_letter_retention_are_purged(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(
        server={"retention_interval": "20ms", "dead_letter_retention": "300ms"},
        streams={"s": {"on_invalid": "dead_letter", "schema": {"required": ["id"]}}},
    )
    await post(client, "s", [{"id": 1}, {"nope": 1}])
    assert len(rows(db_path, "SELECT * FROM dead_letters")) == 1
    await eventually(lambda: rows(db_path, "SELECT count(*) FROM dead_letters") == [(0,)])
    assert offsets(db_path, "s") == [1]


def file_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


@pytest.mark.timeout(90)
async def test_soak_under_steady_load_the_database_stops_growing(
    start: ClientFactory, db_path: Path
) -> None:
    """Steady ingest for a few seconds with a retention of 1 s: once purging has
    caught up, the row count and the file size stay flat while ingest goes on."""
    client = await start(
        server={"retention_interval": "100ms", "durability": "normal"},
        streams={"events": {"retention": "1s"}},
    )
    store = client.app[STORE]
    body = orjson.dumps([{"pad": "x" * 200, "n": i} for i in range(200)])
    stop = asyncio.Event()
    accepted = 0

    async def load() -> None:
        nonlocal accepted
        while not stop.is_set():
            resp = await client.post("/events/events", data=body, headers=JSON)
            assert resp.status == 202
            accepted += (await resp.json())["accepted"]
            await asyncio.sleep(0.005)  # steady, not flat out: leave the loop some air

    async def retained() -> int:
        async with store.reader() as conn, conn.execute("SELECT count(*) FROM messages") as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    loader = asyncio.create_task(load())
    samples: list[tuple[float, int, int]] = []  # (seconds, rows, bytes)
    t0 = time.monotonic()
    try:
        while (elapsed := time.monotonic() - t0) < 6.0:
            await asyncio.sleep(0.25)
            samples.append((elapsed, await retained(), file_size(db_path)))
    finally:
        stop.set()
        await loader
    warm = [s for s in samples if s[0] < 3.0]
    steady = [s for s in samples if s[0] >= 3.0]
    rows_warm, bytes_warm = max(s[1] for s in warm), max(s[2] for s in warm)
    rows_steady, bytes_steady = max(s[1] for s in steady), max(s[2] for s in steady)
    # far more was ingested than is kept, and the kept part does not creep up
    assert accepted > 3 * rows_steady, (accepted, samples)
    assert rows_steady <= 1.5 * rows_warm, samples
    assert bytes_steady <= 1.25 * bytes_warm, samples
