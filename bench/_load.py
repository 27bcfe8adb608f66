"""Helper processes for ``bench/ingest.py``; each runs in its own process.

``python bench/_load.py client --url U --body FILE --concurrency C --warmup W --seconds S``
    The Python load generator: C keep-alive connections POST the body in a loop
    for W seconds of warm-up, then S measured seconds. Prints one JSON line
    ``{"ok": n, "seconds": s, "p50_ms": .., "p99_ms": .., "generator": "python"}``
    counting only 2xx responses completed inside the window. Any non-2xx
    answer or connection error stops it with exit status 1 and says why.

``python bench/_load.py bare-server``
    The single-POST baseline: an aiohttp server whose handler only reads the
    body, parses it with orjson and answers 202. Prints
    ``bare listening on http://127.0.0.1:PORT`` and serves until SIGTERM/SIGINT.

``python bench/_load.py sqlite --db PATH --body FILE --warmup W --seconds S``
    The batched-ingest baseline: a bare ``executemany`` of the body's events
    into rtis's own ``messages`` table (same schema, WAL, synchronous=FULL),
    one transaction per body. Prints ``{"rows": n, "seconds": s}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

# -- load generator ------------------------------------------------------------------


class LoadError(Exception):
    """A request failed: the benchmark's figures would be meaningless."""


async def _client(
    url: str, body: bytes, concurrency: int, warmup: float, seconds: float
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    ok = 0
    now = time.perf_counter
    t0 = now() + warmup
    t1 = t0 + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        while True:
            start = now()
            if start >= t1:
                return
            async with session.post(url, data=body, headers=headers) as resp:
                reply = await resp.read()
                status = resp.status
            end = now()
            if not 200 <= status < 300:
                raise LoadError(f"HTTP {status} from {url}: {reply[:300]!r}")
            if t0 <= end <= t1:
                ok += 1
                if start >= t0:
                    latencies.append(end - start)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        asyncio.TaskGroup() as tg,
    ):
        for _ in range(concurrency):
            tg.create_task(worker(session))
    latencies.sort()
    return {
        "generator": "python",
        "ok": ok,
        "seconds": seconds,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _run_client(args: argparse.Namespace) -> int:
    body = Path(args.body).read_bytes()
    try:
        result = asyncio.run(_client(args.url, body, args.concurrency, args.warmup, args.seconds))
    except (ExceptionGroup, LoadError, aiohttp.ClientError, OSError, TimeoutError) as e:
        errors = e.exceptions if isinstance(e, ExceptionGroup) else (e,)
        for err in errors[:5]:
            print(f"load generator: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


# -- bare aiohttp baseline -------------------------------------------------------------

BARE_REPLY = b'{"accepted":1,"duplicates":0,"first_offset":1,"last_offset":1}'


async def _bare_post(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(status=202, body=BARE_REPLY, content_type="application/json")


async def _bare_serve() -> None:
    # Same server knobs as rtis serve: no access log, same body cap, no auto-decompress.
    app = web.Application(client_max_size=10 * 1024 * 1024, handler_args={"auto_decompress": False})
    app.router.add_post("/events/{stream}", _bare_post)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"bare listening on http://127.0.0.1:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# -- bare SQLite baseline --------------------------------------------------------------


def _run_sqlite(args: argparse.Namespace) -> int:
    from rtis.store import SCHEMA  # the very table rtis writes to

    events = orjson.loads(Path(args.body).read_bytes())
    # The same rows rtis stores: (topic_id, offset, time_ms, key, the event as JSON text).
    rows = [(int(e["ts"] * 1000), orjson.dumps(e).decode()) for e in events]
    conn = sqlite3.connect(args.db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {args.synchronous}")
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO topics (id, name, kind) VALUES (1, 'events', 'stream')")
    insert = "INSERT INTO messages (topic_id, offset, time_ms, key, data) VALUES (?, ?, ?, ?, ?)"
    offset = 0
    counted = 0
    now = time.perf_counter
    t0 = now() + args.warmup
    t1 = t0 + args.seconds
    while True:
        batch = [(1, offset + i, t, None, d) for i, (t, d) in enumerate(rows, 1)]
        offset += len(batch)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, batch)
        conn.execute("COMMIT")
        end = now()
        if end > t1:
            break
        if end >= t0:
            counted += len(batch)
    conn.close()
    print(json.dumps({"rows": counted, "seconds": args.seconds}), flush=True)
    return 0


# -- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    client = sub.add_parser("client", help="the Python load generator")
    client.add_argument("--url", required=True)
    client.add_argument("--body", required=True, help="file holding the request body")
    client.add_argument("--concurrency", type=int, default=32)
    client.add_argument("--warmup", type=float, default=1.0)
    client.add_argument("--seconds", type=float, default=5.0)
    sub.add_parser("bare-server", help="the bare aiohttp baseline server")
    lite = sub.add_parser("sqlite", help="the bare executemany baseline")
    lite.add_argument("--db", required=True)
    lite.add_argument("--body", required=True, help="file holding one JSON array of events")
    lite.add_argument("--warmup", type=float, default=1.0)
    lite.add_argument("--seconds", type=float, default=5.0)
    lite.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = parser.parse_args(argv)
    if args.command == "client":
        return _run_client(args)
    if args.command == "bare-server":
        asyncio.run(_bare_serve())
        return 0
    return _run_sqlite(args)


if __name__ == "__main__":
    sys.exit(main())
