"""``rtis demo``: the farm-supply example, live, with a synthetic harvest generator.

Runs the server on ``examples/farm-supply/config.toml`` (a ``harvests`` stream,
a stateless ``ready_for_collection`` query, and a per-region per-minute
``harvests_per_minute`` summary) and, in the same process, a task that posts
made-up harvest reports to it over HTTP, as the farmers' apps would. The
database lives in a temporary directory unless ``--db`` names a file.

The harvest generator is a pure function of a random generator and a clock,
so tests drive it without a server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("rtis.demo")

# examples/farm-supply at the repo root, packaged through the rtis/examples symlink
EXAMPLE = Path(__file__).resolve().parent / "examples" / "farm-supply" / "config.toml"

FARMERS = [
    "Ada Mwangi", "Bruno Silva", "Chen Wei", "Dara Okafor", "Eli Novak", "Fatima Haddad",
    "Gus Lindqvist", "Hana Sato", "Ivo Petrov", "Jo Achterberg", "Kofi Mensah", "Lena Brandt",
]  # fmt: skip
CROPS = {  # crop -> typical kg per report
    "potatoes": (200, 1500),
    "carrots": (80, 600),
    "apples": (100, 900),
    "strawberries": (20, 150),
    "wheat": (1000, 6000),
    "cabbage": (60, 500),
    "onions": (100, 800),
}
REGIONS = ["North", "South", "East", "West", "Highlands"]
# When the crop can be collected, relative to the report (seconds).
READY_IN = [-7200, -1800, 0, 0, 900, 1800, 3 * 3600, 24 * 3600]
INVALID_EVERY = 40  # about one report in this many has a typo, to show the dead letters


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def harvest(rng: random.Random, n: int, now: float) -> dict[str, Any]:
    """The ``n``-th synthetic harvest report, made at ``now`` (epoch seconds)."""
    crop = rng.choice(list(CROPS))
    low, high = CROPS[crop]
    farmer = FARMERS[rng.randrange(len(FARMERS))]
    event: dict[str, Any] = {
        "id": f"h-{int(now)}-{n}",
        "farmer": farmer,
        "crop": crop,
        "kg": round(rng.uniform(low, high), 1),
        "region": rng.choice(REGIONS),
        "ready_at": rfc3339(now + rng.choice(READY_IN)),
        "ts": round(now, 3),
    }
    if rng.randrange(INVALID_EVERY) == 0:
        event["kg"] = -event["kg"]  # a typo the schema refuses
    return event


async def generate(url: str, rate: float, rng: random.Random | None = None) -> None:
    """Post harvests to ``url`` at about ``rate`` per second until cancelled."""
    rng = rng or random.Random()
    n = 0
    async with aiohttp.ClientSession() as session:
        while True:
            # Reports come in small bursts, like several farmers' apps syncing.
            now = _now()
            batch = [harvest(rng, n + i, now) for i in range(3)]
            n += len(batch)
            try:
                async with session.post(
                    f"{url}/events/harvests",
                    data=orjson.dumps(batch),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    if resp.status != 202:
                        log.warning("generator: %s %s", resp.status, await resp.text())
            except aiohttp.ClientError as e:
                log.warning("generator: %s; retrying", e)
            await asyncio.sleep(rng.expovariate(rate / len(batch)))


def _now() -> float:
    return datetime.now(UTC).timestamp()


def add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the farm-supply example with generated harvests",
        description="Run rtis on examples/farm-supply/config.toml with a generator posting "
        "synthetic harvest reports, and print the dashboard URL. Farmers report harvests; "
        "the back office watches them per region, live. Ctrl-C stops it.",
    )
    demo.add_argument("--config", "-c", help=f"the example config (default: {EXAMPLE})")
    demo.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free)")
    demo.add_argument(
        "--db", help="keep the database in this file (default: a temporary directory)"
    )
    demo.add_argument(
        "--rate", type=float, default=5.0, help="harvest reports per second (default 5)"
    )
    demo.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])


def run_demo(args: argparse.Namespace) -> int:
    from .cli import EXIT_CONFIG, EXIT_RUNTIME, _run
    from .config import load_config, replace_server
    from .errors import ConfigError, RtisError
    from .pipeline import compile_queries

    path = Path(args.config) if args.config else EXAMPLE
    if not path.is_file():
        print(
            f"rtis demo: {path} not found; run it from a source checkout, or pass --config",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.rate <= 0:
        print("rtis demo: --rate must be positive", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(str(path))
        compile_queries(config)
    except ConfigError as e:
        print(f"rtis demo: configuration error in {path}:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    tmp: str | None = None
    if args.db:
        db = Path(args.db).resolve()
    else:
        tmp = tempfile.mkdtemp(prefix="rtis-demo-")
        db = Path(tmp) / "farm-supply.db"
    config = replace(replace_server(config, port=args.port, database=str(db)), path=None)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def companion(url: str) -> None:
        print(f"rtis demo: dashboard at {url}/", flush=True)
        print(f"rtis demo: database {db}; posting ~{args.rate:g} harvests/s", flush=True)
        print("rtis demo: press Ctrl-C to stop", flush=True)
        await generate(url, args.rate)

    try:
        asyncio.run(_run(config, companion))
    except RtisError as e:
        print(f"rtis demo: {e.message}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as e:
        print(f"rtis demo: cannot listen on port {args.port}: {e.strerror or e}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
