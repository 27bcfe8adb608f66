"""Windowed aggregation throughput as a ratio of stateless-query throughput.

Both queries read the same events of one stream (1,000 distinct keys, event
time advancing 5 ms per event, so a one-minute tumbling window closes every
12,000 events) in the same process and the same run:

* stateless: ``SELECT k, v FROM events WHERE v >= 0`` (one stored output row
  per event);
* windowed: ``SELECT k, count(*), sum(v), avg(v), max(v) FROM events GROUP BY
  k, TUMBLE(event_time, INTERVAL '1' MINUTE)`` (one row per key per window).

Two figures each, events/s:

1. pipeline: a query runner catching up from the log of a real SQLite store
   (durability "normal"): read pages of 1,000 events, evaluate, and commit the
   outputs and the checkpoint (windowed: and the window state) per page.
2. compute: the compiled query alone over parsed rows in memory (the stateless
   ``run`` against :meth:`rtis.windows.WindowState.add`), no store.

Runs alternate (stateless, windowed, windowed, stateless, ...) so drift in the
machine's load hits both; the best run of each is reported, with the ratio
windowed / stateless. Usage: ``python bench/windows.py [--events N] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from rtis.pipeline import QueryRunner, WindowedRunner
from rtis.sql import compile_query
from rtis.store import Store, Txn
from rtis.windows import WindowOptions, WindowState

KEYS = 1000
T0 = 1_764_779_040_000  # a minute boundary, ms
STATELESS = "SELECT k, v FROM events WHERE v >= 0"
WINDOWED = (
    "SELECT k, count(*) AS n, sum(v) AS total, avg(v) AS mean, max(v) AS biggest "
    "FROM events GROUP BY k, TUMBLE(event_time, INTERVAL '1' MINUTE)"
)


def events(n: int) -> list[tuple[int, dict[str, Any]]]:
    return [(T0 + i * 5, {"k": f"key-{(i * 7919) % KEYS}", "v": i % 1000}) for i in range(n)]


def compile_both(name: str) -> tuple[Any, Any]:
    stateless = compile_query(f"{name}_s", STATELESS, streams=["events"])
    windowed = compile_query(
        f"{name}_w", WINDOWED, streams=["events"], options=WindowOptions(lateness_ms=1000)
    )
    return stateless, windowed


def compute_rates(evs: list[tuple[int, dict[str, Any]]], rounds: int) -> dict[str, float]:
    stateless, windowed = compile_both("c")
    best = {"stateless": 0.0, "windowed": 0.0}
    for r in range(rounds):
        for kind in ("stateless", "windowed") if r % 2 == 0 else ("windowed", "stateless"):
            t = time.perf_counter()
            if kind == "stateless":
                run = stateless.run
                for _, row in evs:
                    run(row)
            else:
                state = WindowState(windowed.state_plan, windowed.options)
                add = state.add
                for at, row in evs:
                    add(row, at, 0.0)
                state.take(0.0)
            best[kind] = max(best[kind], len(evs) / (time.perf_counter() - t))
    return best


async def pipeline_rates(evs: list[tuple[int, dict[str, Any]]], rounds: int) -> dict[str, float]:
    names = [(f"r{r}", kind) for r in range(rounds) for kind in ("s", "w")]
    with tempfile.TemporaryDirectory() as tmp:
        topics = [("events", "stream")] + [(f"{r}_{k}", "query") for r, k in names]
        async with Store.open(Path(tmp) / "bench.db", topics, durability="normal") as store:
            data = [(at, None, orjson.dumps(row)) for at, row in evs]
            for i in range(0, len(data), 10_000):
                chunk = data[i : i + 10_000]

                def fill(txn: Txn, chunk: list[Any] = chunk) -> None:
                    txn.append_many("events", chunk)

                await store.write(fill, size=len(chunk))
            best = {"stateless": 0.0, "windowed": 0.0}
            for r in range(rounds):
                order = ("s", "w") if r % 2 == 0 else ("w", "s")
                for k in order:
                    stateless, windowed = compile_both(f"r{r}")
                    runner: QueryRunner = (
                        QueryRunner(stateless, store)
                        if k == "s"
                        else WindowedRunner(windowed, store)
                    )
                    t = time.perf_counter()
                    await runner.start()
                    while runner.position < len(evs):
                        await asyncio.sleep(0.005)
                    elapsed = time.perf_counter() - t
                    await runner.stop()
                    kind = "stateless" if k == "s" else "windowed"
                    best[kind] = max(best[kind], len(evs) / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each (alternating)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    evs = events(args.events)
    compute = compute_rates(evs, args.rounds)
    pipeline = asyncio.run(pipeline_rates(evs, args.rounds))
    result = {
        "events": args.events,
        "keys": KEYS,
        "compute_events_per_s": compute,
        "compute_ratio": compute["windowed"] / compute["stateless"],
        "pipeline_events_per_s": pipeline,
        "pipeline_ratio": pipeline["windowed"] / pipeline["stateless"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.events} events, {KEYS} keys, best of {args.rounds} alternating runs each")
    for label, rates, ratio in (
        ("compute (query alone)", compute, result["compute_ratio"]),
        ("pipeline (log -> query -> store)", pipeline, result["pipeline_ratio"]),
    ):
        print(
            f"  {label:34s} stateless {rates['stateless']:>10,.0f}/s"
            f"   windowed {rates['windowed']:>10,.0f}/s   ratio {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
