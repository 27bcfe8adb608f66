"""Claims about processes, tested with real ``rtis serve`` processes."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .procs import Server

CONFIG = """
[server]
database = "data.db"

[streams.orders]
dedupe_key = "id"
"""


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


async def read_all(session: aiohttp.ClientSession, url: str, topic: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        async with session.get(f"{url}/api/topics/{topic}/messages?since={since}&limit=10000") as r:
            body = await r.json()
        if not body["events"]:
            return events
        events.extend(body["events"])
        since = body["events"][-1]["offset"]


async def test_every_acknowledged_event_survives_kill_9_at_its_offset(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    server = Server(["--config", str(cfg)], tmp_path)
    acked: dict[int, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as session:

        async def producer(worker: int) -> None:
            for batch in range(30):
                events = [{"id": f"{worker}-{batch}-{i}", "w": worker} for i in range(20)]
                async with session.post(
                    f"{server.url}/events/orders",
                    data=orjson.dumps(events),
                    headers={"Content-Type": "application/json"},
                ) as r:
                    assert r.status == 202
                    result = await r.json()
                for k, ev in enumerate(events):
                    acked[result["first_offset"] + k] = ev

        await asyncio.gather(*(producer(w) for w in range(8)))
        server.kill9()  # right after the last acknowledgement
        assert len(acked) == 8 * 30 * 20

        restarted = Server(["--config", str(cfg)], tmp_path)
        try:
            stored = await read_all(session, restarted.url, "orders")
            by_offset = {e["offset"]: e["data"] for e in stored}
            assert by_offset == acked
            assert sorted(by_offset) == list(range(1, len(acked) + 1))
            # Offsets continue after the restart, and dedupe keys were kept.
            again = [acked[1], {"id": "new"}]
            async with session.post(
                f"{restarted.url}/events/orders",
                data=orjson.dumps(again),
                headers={"Content-Type": "application/json"},
            ) as r:
                assert await r.json() == {
                    "accepted": 1,
                    "duplicates": 1,
                    "first_offset": len(acked) + 1,
                    "last_offset": len(acked) + 1,
                }
        finally:
            assert restarted.stop() == 0


async def test_sigterm_commits_in_flight_requests_and_closes_websockets_with_1001(
    tmp_path: Path,
) -> None:
    cfg = write_config(tmp_path)
    server = Server(["--config", str(cfg)], tmp_path)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{server.url}/ws")
        await ws.send_json({"op": "subscribe", "topic": "orders"})
        assert (await ws.receive_json(timeout=5))["op"] == "subscribed"

        async def post(i: int) -> int | None:
            """The last offset acknowledged, or None if refused while shutting down."""
            async with session.post(
                f"{server.url}/events/orders",
                data=orjson.dumps([{"id": f"{i}-{k}"} for k in range(50)]),
                headers={"Content-Type": "application/json"},
            ) as r:
                if r.status == 503:  # arrived after the store began closing: retry later
                    return None
                assert r.status == 202, await r.text()
                body = await r.json()
                return int(body["last_offset"])

        async def read_until_closed() -> None:
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return

        reader = asyncio.create_task(read_until_closed())
        posts = [asyncio.create_task(post(i)) for i in range(40)]
        # Signal as soon as the first acknowledgement arrives, with the rest in flight.
        await asyncio.wait(posts, return_when=asyncio.FIRST_COMPLETED)
        server.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*posts, return_exceptions=True)
        for r in results:  # no request failed in any other way than refusal
            assert r is None or isinstance(r, int | aiohttp.ClientConnectionError), r
        acked = [r for r in results if isinstance(r, int)]
        await reader
        assert ws.close_code == 1001
        assert server.stop() == 0
        assert acked, "at least the requests sent before the signal were acknowledged"

        restarted = Server(["--config", str(cfg)], tmp_path)
        try:
            stored = await read_all(session, restarted.url, "orders")
            assert len(stored) >= max(acked)
            assert [e["offset"] for e in stored] == list(range(1, len(stored) + 1))
        finally:
            restarted.stop()


async def test_serve_without_config_uses_the_embedded_default(tmp_path: Path) -> None:
    server = Server([], tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/events/events", json={"hello": "world"}) as r:
                assert r.status == 202
            async with session.get(f"{server.url}/health") as r:
                assert await r.json() == {"status": "ok"}
    finally:
        assert server.stop(signal.SIGINT) == 0
    assert (tmp_path / "rtis.db").exists()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtis.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_lists_every_config_error_with_its_key_path_and_exits_non_zero(
    tmp_path: Path,
) -> None:
    cfg = write_config(
        tmp_path,
        """
[server]
port = "80"
colour = "blue"

[streams.orders]
on_invalid = "ignore"
schema = { type = "no-such-type" }
""",
    )
    result = run_cli("check", "--config", str(cfg), cwd=tmp_path)
    assert result.returncode == 2
    err = result.stderr
    assert "server.port: expected a non-negative integer, got string '80'" in err
    assert "server.colour: unknown key" in err
    assert "streams.orders.on_invalid: expected one of 'reject', 'dead_letter'" in err
    assert "streams.orders.schema: invalid JSON Schema" in err
    served = run_cli("serve", "--config", str(cfg), "--port", "0", cwd=tmp_path)
    assert served.returncode == 2
    assert "server.colour: unknown key" in served.stderr


def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    result = run_cli("check", "--config", str(cfg), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "stream orders" in result.stdout


def test_serving_beyond_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert not (tmp_path / "rtis.db").exists()


QUERY_CONFIG = """
[server]
database = "data.db"
durability = "normal"

[streams.orders]
dedupe_key = "id"

[queries.small_orders]
sql = '''
SELECT id, slow(amount) * 2 AS doubled, upper(region) AS region
FROM orders WHERE amount % 3 <> 0
'''

[functions]
slow = "tests.userfuncs:slow"
"""


async def _post_orders(session: aiohttp.ClientSession, url: str, lo: int, hi: int) -> None:
    for start in range(lo, hi, 100):
        events = [
            {"id": i, "amount": i, "region": "eu" if i % 2 else "us"}
            for i in range(start, min(hi, start + 100))
        ]
        async with session.post(
            f"{url}/events/orders",
            data=orjson.dumps(events),
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 202


async def _wait_for_outputs(
    session: aiohttp.ClientSession, url: str, n: int
) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        events = await read_all(session, url, "small_orders")
        if len(events) >= n or asyncio.get_running_loop().time() > deadline:
            return events
        await asyncio.sleep(0.05)


async def test_query_outputs_after_kill_9_and_restart_equal_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    total = 3000
    expected_n = sum(1 for i in range(total) if i % 3)
    async with aiohttp.ClientSession() as session:
        straight = tmp_path / "straight"
        straight.mkdir()
        cfg = write_config(straight, QUERY_CONFIG)
        server = Server(["--config", str(cfg)], straight)
        await _post_orders(session, server.url, 0, total)
        reference = await _wait_for_outputs(session, server.url, expected_n)
        server.stop()

        crashed = tmp_path / "crashed"
        crashed.mkdir()
        cfg = write_config(crashed, QUERY_CONFIG)
        server = Server(["--config", str(cfg)], crashed)
        await _post_orders(session, server.url, 0, total // 2)
        server.kill9()
        # The slow query was mid-way through its input when the process died.
        conn = sqlite3.connect(crashed / "data.db")
        [(checkpoint,)] = conn.execute("SELECT offset FROM checkpoints").fetchall()
        conn.close()
        assert checkpoint < total // 2
        server = Server(["--config", str(cfg)], crashed)
        await _post_orders(session, server.url, total // 2, total)
        resumed = await _wait_for_outputs(session, server.url, expected_n)
        server.stop()

    assert len(reference) == expected_n
    strip = [(e["offset"], e["data"]) for e in reference]
    assert [(e["offset"], e["data"]) for e in resumed] == strip
    conn_a = sqlite3.connect(straight / "data.db")
    conn_b = sqlite3.connect(crashed / "data.db")
    try:
        q = "SELECT offset, id, doubled, region FROM small_orders ORDER BY offset"
        assert conn_a.execute(q).fetchall() == conn_b.execute(q).fetchall()
    finally:
        conn_a.close()
        conn_b.close()


WINDOW_CONFIG = """
[server]
database = "data.db"
durability = "normal"

[streams.orders]
dedupe_key = "id"
time_field = "ts"

[queries.sales]
sql = '''
SELECT region, count(*) AS orders, sum(slow(amount)) AS total, avg(amount) AS mean,
       count(DISTINCT amount % 7) AS kinds
FROM orders GROUP BY region, TUMBLE(ts, INTERVAL '1' MINUTE)
'''
lateness = "3s"
idle_timeout = "1h"

[functions]
slow = "tests.userfuncs:slow"
"""
W0 = 1_700_000_040.0  # a minute boundary


def _window_orders(lo: int, hi: int) -> list[dict[str, Any]]:
    # 0.1 s apart, up to 1.8 s out of order (within lateness), three regions
    return [
        {
            "id": i,
            "ts": W0 + i * 0.1 - (i % 7) * 0.3,
            "region": ["eu", "us", "asia"][i % 3],
            "amount": i,
        }
        for i in range(lo, hi)
    ]


async def _post_window_orders(session: aiohttp.ClientSession, url: str, events: list[Any]) -> None:
    for k in range(0, len(events), 100):
        async with session.post(
            f"{url}/events/orders",
            data=orjson.dumps(events[k : k + 100]),
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 202


async def _window_rows(session: aiohttp.ClientSession, url: str, n: int) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        async with session.get(f"{url}/api/queries/sales/rows?limit=10000") as r:
            rows: list[dict[str, Any]] = (await r.json())["rows"]
        if len(rows) >= n or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_window_rows_after_kill_9_mid_window_equal_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    total = 1500  # 2.5 minutes of orders
    events = _window_orders(0, total)
    sentinel = [{"id": "end", "ts": W0 + 3600, "region": "zz", "amount": 0}]  # closes all
    expected = len({(int((e["ts"] - W0) // 60), e["region"]) for e in events})
    async with aiohttp.ClientSession() as session:
        straight = tmp_path / "straight"
        straight.mkdir()
        server = Server(["--config", str(write_config(straight, WINDOW_CONFIG))], straight)
        await _post_window_orders(session, server.url, events + sentinel)
        reference = await _window_rows(session, server.url, expected)
        server.stop()

        crashed = tmp_path / "crashed"
        crashed.mkdir()
        cfg = write_config(crashed, WINDOW_CONFIG)
        server = Server(["--config", str(cfg)], crashed)
        await _post_window_orders(session, server.url, events[: total // 2 + 50])
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # wait until part of the input is checkpointed with its window state
            conn = sqlite3.connect(crashed / "data.db")
            [(checkpoint, state)] = conn.execute("SELECT offset, state FROM checkpoints").fetchall()
            conn.close()
            if checkpoint > 0 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)
        server.kill9()
        # Killed with windows open in the committed state (and, depending on the
        # machine's speed, part of the input not yet processed).
        assert checkpoint > 0
        assert orjson.loads(state)["windows"], "killed with windows open"
        server = Server(["--config", str(cfg)], crashed)
        await _post_window_orders(session, server.url, events[total // 2 + 50 :] + sentinel)
        resumed = await _window_rows(session, server.url, expected)
        server.stop()

    assert len(reference) == expected
    assert resumed == reference  # same rows, same offsets, same revisions
    q = "SELECT * FROM sales ORDER BY offset"
    conn_a = sqlite3.connect(straight / "data.db")
    conn_b = sqlite3.connect(crashed / "data.db")
    try:
        assert conn_a.execute(q).fetchall() == conn_b.execute(q).fetchall()
    finally:
        conn_a.close()
        conn_b.close()
