"""Ingest benchmark: rtis against bare baselines, over real HTTP on loopback.

    python bench/ingest.py [--quick] [--seconds N] [--json] [--generator auto|wrk|python]

1. Durable batched ingest (events/s): ``rtis serve`` (durability "full") takes
   POSTs of JSON arrays of 1000 small events from a few concurrent clients.
   Baseline: a bare ``executemany`` of the same rows into the same SQLite table
   with the same durability (WAL, synchronous=FULL), one transaction per
   1000-row batch. Target: rtis >= 50% of the baseline.
2. Single-event POSTs (requests/s, p50/p99 latency): the same rtis process
   takes one JSON object per request on many keep-alive connections.
   Baseline: a bare aiohttp handler that reads the body, parses it with orjson
   and answers 202. Target: rtis >= 75% of the baseline.

Every figure is a ratio against a baseline measured in the same run, on the
same machine: absolute numbers from a shared machine mean little. Baseline
and rtis alternate (A B B A) so that drift in the machine's load hits both.
The load generator is its own process: ``wrk`` when installed (a C client
that costs the machine less per request than the server under test), else
the Python generator in ``bench/_load.py``; the output names the one that ran.
Any non-2xx answer or socket error aborts the run with exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
LOAD = HERE / "_load.py"
BATCH_EVENTS = 1000
TARGET_BATCHED = 0.50
TARGET_SINGLE = 0.75
START_TIMEOUT = 20.0

CONFIG = """\
[server]
database = "rtis.db"
durability = "full"

[streams.events]
time_field = "ts"
"""

# wrk's own result line, written by its done() hook: counts, errors, latency (microseconds).
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


class BenchError(Exception):
    """The benchmark could not measure what it claims to: stop and say why."""


@dataclass
class Load:
    """One measured load run: 2xx responses per second and their latency."""

    generator: str
    ok: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


@dataclass
class Settings:
    seconds: float
    warmup: float
    rounds: int
    concurrency: int
    batch_concurrency: int
    generator: str  # "wrk" or "python"
    workdir: Path


# -- bodies ------------------------------------------------------------------------


def event(n: int, ts: float) -> dict[str, Any]:
    """One small event (~75 bytes as JSON)."""
    return {"id": n, "amount": 12.5 + n % 100, "region": ("eu", "us", "apac")[n % 3], "ts": ts}


def write_bodies(workdir: Path) -> tuple[Path, Path]:
    ts = round(time.time(), 3)
    single = workdir / "single.json"
    single.write_bytes(orjson.dumps(event(1, ts)))
    batch = workdir / "batch.json"
    batch.write_bytes(orjson.dumps([event(n, ts) for n in range(1, BATCH_EVENTS + 1)]))
    return single, batch


# -- processes ---------------------------------------------------------------------


@contextlib.contextmanager
def server(cmd: Sequence[str], name: str, workdir: Path) -> Iterator[str]:
    """Start a server that prints "... listening on http://HOST:PORT"; yield its base URL."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=log, start_new_session=True
        )
    try:
        yield _await_listening(proc, name, log_path)
    finally:
        _stop(proc)


def _await_listening(proc: subprocess.Popen[bytes], name: str, log_path: Path) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            seen += line
            match = re.search(rb"listening on (http://\S+)", line)
            if match:
                return match.group(1).decode()
            if not line and proc.poll() is not None:
                break
    raise BenchError(
        f"{name} did not start within {START_TIMEOUT:.0f}s (exit status {proc.poll()}).\n"
        f"stdout: {seen.decode(errors='replace')}\n"
        f"stderr: {log_path.read_text(errors='replace')[-2000:]}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _run(cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{cmd[0]} did not finish within {timeout:.0f}s: {' '.join(cmd)}"
        ) from None
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(cmd)} failed with exit status {done.returncode}:\n"
            f"{done.stderr.strip()[-2000:]}\n{done.stdout.strip()[-2000:]}"
        )
    return done.stdout


# -- load generators -----------------------------------------------------------------


def load(url: str, body: Path, concurrency: int, s: Settings) -> Load:
    """Warm up, then measure ``s.seconds`` of POSTs of ``body`` to ``url``."""
    if s.generator == "wrk":
        return _wrk(url, body, concurrency, s)
    out = _run(
        [
            sys.executable,
            str(LOAD),
            "client",
            f"--url={url}",
            f"--body={body}",
            f"--concurrency={concurrency}",
            f"--warmup={s.warmup}",
            f"--seconds={s.seconds}",
        ],
        timeout=s.warmup + s.seconds + 60,
    )
    r = json.loads(out.strip().splitlines()[-1])
    return Load("python", r["ok"], r["seconds"], r["p50_ms"], r["p99_ms"])


def _wrk(url: str, body: Path, concurrency: int, s: Settings) -> Load:
    script = s.workdir / "post.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": str(body)}

    def wrk(seconds: float) -> dict[str, Any]:
        # wrk takes whole seconds only.
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, math.ceil(seconds))}s"]
        cmd += ["--timeout", "10s", "-s", str(script), url]
        out = _run(cmd, timeout=seconds + 60, env=env)
        match = re.search(r"^BENCH_JSON (\{.*\})$", out, re.MULTILINE)
        if match is None:
            raise BenchError(f"no result line in wrk's output:\n{out}")
        r: dict[str, Any] = json.loads(match.group(1))
        errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
        if errors:
            raise BenchError(f"wrk saw errors POSTing to {url}: {errors}\n{out}")
        return r

    if s.warmup > 0:
        wrk(s.warmup)
    r = wrk(s.seconds)
    return Load("wrk", r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1e3, r["p99_us"] / 1e3)


def sqlite_baseline(body: Path, s: Settings, n: int) -> Load:
    """Rows/s of a bare executemany into a fresh database, one transaction per batch."""
    db = s.workdir / f"baseline-{n}.db"
    out = _run(
        [
            sys.executable,
            str(LOAD),
            "sqlite",
            f"--db={db}",
            f"--body={body}",
            f"--warmup={s.warmup}",
            f"--seconds={s.seconds}",
        ],
        timeout=s.warmup + s.seconds + 60,
    )
    for path in s.workdir.glob(f"baseline-{n}.db*"):
        path.unlink()
    r = json.loads(out.strip().splitlines()[-1])
    return Load("sqlite", r["rows"], r["seconds"], math.nan, math.nan)


# -- the benchmark -------------------------------------------------------------------


def _abba(rounds: int) -> list[str]:
    """Baseline/rtis order: A B B A ... so drift in the machine's load hits both alike."""
    order: list[str] = []
    for i in range(rounds):
        order += ["baseline", "rtis"] if i % 2 == 0 else ["rtis", "baseline"]
    return order


def _mean(runs: list[Load]) -> float:
    return sum(r.rate for r in runs) / len(runs)


def _median(values: list[float]) -> float:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(s: Settings) -> dict[str, Any]:
    single, batch = write_bodies(s.workdir)
    (s.workdir / "config.toml").write_text(CONFIG)
    rtis_cmd = [sys.executable, "-m", "rtis.cli", "serve", "--port", "0"]
    rtis_cmd += ["--config", str(s.workdir / "config.toml"), "--log-level", "warning"]
    bare_cmd = [sys.executable, str(LOAD), "bare-server"]
    results: dict[str, Any] = {
        "generator": s.generator,
        "seconds": s.seconds,
        "warmup": s.warmup,
        "rounds": s.rounds,
        "cpus": os.cpu_count(),
    }
    with (
        server(rtis_cmd, "rtis", s.workdir) as rtis_url,
        server(bare_cmd, "bare", s.workdir) as bare_url,
    ):
        rtis_events = f"{rtis_url}/events/events"
        bare_events = f"{bare_url}/events/events"

        # 1. durable batched ingest
        runs: dict[str, list[Load]] = {"rtis": [], "baseline": []}
        for i, side in enumerate(_abba(s.rounds)):
            _progress(f"batched ingest: {side} ({i + 1}/{2 * s.rounds})")
            if side == "rtis":
                r = load(rtis_events, batch, s.batch_concurrency, s)
                runs["rtis"].append(
                    Load(r.generator, r.ok * BATCH_EVENTS, r.seconds, r.p50_ms, r.p99_ms)
                )
            else:
                runs["baseline"].append(sqlite_baseline(batch, s, i))
        rtis_rate, base_rate = _mean(runs["rtis"]), _mean(runs["baseline"])
        results["batched"] = {
            "unit": "events/s",
            "events_per_request": BATCH_EVENTS,
            "concurrency": s.batch_concurrency,
            "rtis": round(rtis_rate),
            "baseline": round(base_rate),
            "ratio": round(rtis_rate / base_rate, 3),
            "target": TARGET_BATCHED,
            "rtis_p50_ms": round(_median([r.p50_ms for r in runs["rtis"]]), 2),
            "rtis_p99_ms": round(_median([r.p99_ms for r in runs["rtis"]]), 2),
            "rtis_runs": [round(r.rate) for r in runs["rtis"]],
            "baseline_runs": [round(r.rate) for r in runs["baseline"]],
        }

        # 2. single-event POSTs
        runs = {"rtis": [], "baseline": []}
        for i, side in enumerate(_abba(s.rounds)):
            _progress(f"single-event POSTs: {side} ({i + 1}/{2 * s.rounds})")
            url = rtis_events if side == "rtis" else bare_events
            runs[side].append(load(url, single, s.concurrency, s))
        rtis_rate, base_rate = _mean(runs["rtis"]), _mean(runs["baseline"])
        results["single"] = {
            "unit": "requests/s",
            "concurrency": s.concurrency,
            "rtis": round(rtis_rate),
            "baseline": round(base_rate),
            "ratio": round(rtis_rate / base_rate, 3),
            "target": TARGET_SINGLE,
            "rtis_p50_ms": round(_median([r.p50_ms for r in runs["rtis"]]), 2),
            "rtis_p99_ms": round(_median([r.p99_ms for r in runs["rtis"]]), 2),
            "baseline_p50_ms": round(_median([r.p50_ms for r in runs["baseline"]]), 2),
            "baseline_p99_ms": round(_median([r.p99_ms for r in runs["baseline"]]), 2),
            "rtis_runs": [round(r.rate) for r in runs["rtis"]],
            "baseline_runs": [round(r.rate) for r in runs["baseline"]],
        }
        results["stored_events"] = _stored(rtis_url)
    return results


def _stored(base_url: str) -> int:
    """rtis's last offset on the stream: proof that the acknowledged events were stored."""
    with urllib.request.urlopen(f"{base_url}/api/topics", timeout=10) as resp:
        topics = json.load(resp)["topics"]
    return int(next(t["last_offset"] for t in topics if t["name"] == "events"))


def table(r: dict[str, Any]) -> str:
    b, s = r["batched"], r["single"]

    def verdict(x: dict[str, Any]) -> str:
        return "ok" if x["ratio"] >= x["target"] else "BELOW TARGET"

    rows = [
        ("benchmark", "rtis", "baseline", "ratio", "target", ""),
        (
            f"batched ingest, events/s (x{b['events_per_request']}, c={b['concurrency']})",
            f"{b['rtis']:,}",
            f"{b['baseline']:,}",
            f"{b['ratio']:.0%}",
            f">= {b['target']:.0%}",
            verdict(b),
        ),
        (
            f"single POSTs, requests/s (c={s['concurrency']})",
            f"{s['rtis']:,}",
            f"{s['baseline']:,}",
            f"{s['ratio']:.0%}",
            f">= {s['target']:.0%}",
            verdict(s),
        ),
        ("single POSTs, p50 latency ms", f"{s['rtis_p50_ms']:.2f}", f"{s['baseline_p50_ms']:.2f}"),
        ("single POSTs, p99 latency ms", f"{s['rtis_p99_ms']:.2f}", f"{s['baseline_p99_ms']:.2f}"),
    ]
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(6)]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    baseline_names = (
        "baselines: batched = bare executemany into SQLite (WAL, synchronous=FULL, "
        "1 txn per 1000 rows); single = bare aiohttp handler (read + orjson.loads + 202)"
    )
    lines += [
        "",
        baseline_names,
        f"load generator: {r['generator']}; {r['rounds']} round(s) of {r['seconds']:g}s "
        f"per side after {r['warmup']:g}s warm-up; rtis durability=full; "
        f"{r['stored_events']:,} events stored",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark rtis ingest against bare SQLite and bare aiohttp baselines."
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds in all (smoke test)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 5)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator: auto = wrk if installed, else the Python one",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="connections, single POSTs")
    parser.add_argument(
        "--batch-concurrency", type=int, default=4, help="connections, batched ingest"
    )
    parser.add_argument("--rounds", type=int, help="A/B rounds per benchmark (default 2)")
    args = parser.parse_args(argv)

    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    elif generator == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk); use --generator python")
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)
    if generator == "wrk":
        seconds = float(max(1, math.ceil(seconds)))  # wrk runs whole seconds
    warmup = (1.0 if generator == "wrk" else 0.5) if args.quick else 1.0
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)

    workdir = Path(tempfile.mkdtemp(prefix="rtis-bench-"))
    try:
        results = run(
            Settings(
                seconds=seconds,
                warmup=warmup,
                rounds=rounds,
                concurrency=args.concurrency,
                batch_concurrency=args.batch_concurrency,
                generator=generator,
                workdir=workdir,
            )
        )
    except BenchError as e:
        print(f"bench/ingest.py: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
