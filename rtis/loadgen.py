"""``rtis bench``: a load generator against a running rtis.

``concurrency`` keep-alive connections POST batches of small events to one
stream, either as fast as the server acknowledges them or paced to ``rate``
events/s; ``subscribers`` WebSocket clients subscribe to the stream's topic
and measure end-to-end latency (POST sent -> message received). A live
progress line goes to stderr; the summary (events/s, latency p50/p95/p99)
goes to stdout, as text or ``--json``. The run is bounded: ``duration``
seconds of load, then at most ``DRAIN_TIMEOUT`` seconds for subscribers to
receive what was acknowledged.

With a rate, each request has a scheduled start time and its latency is
counted from that time, not from when it was actually sent, so a server
that stalls shows up in the percentiles (no coordinated omission). The
sizes, percentiles, pacing and the progress line are plain functions; the
asyncio code only pumps. The same ideas as ``bench/_load.py``, shaped for
someone at a terminal rather than for ratio benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import orjson

from .client import ClientError, auth_headers, common_args, describe_error, ws_url

DRAIN_TIMEOUT = 5.0
PROGRESS_INTERVAL = 0.5
EXIT_OK = 0
EXIT_ERROR = 1


@dataclass(frozen=True)
class Options:
    url: str = "http://127.0.0.1:8080"
    stream: str = "events"
    rate: float = 0.0  # events/s; 0 = as fast as acknowledged
    batch: int = 100
    concurrency: int = 8
    duration: float = 10.0
    subscribers: int = 0
    token: str | None = None
    template: dict[str, Any] = field(default_factory=dict)


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of sorted values; NaN if empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Pacer:
    """Hands out request start times: every ``batch / rate`` seconds from
    ``start``, or "now" when there is no rate."""

    def __init__(self, start: float, rate: float, batch: int) -> None:
        self.start = start
        self.interval = batch / rate if rate > 0 else 0.0
        self.issued = 0

    def next_slot(self, now: float) -> float:
        if self.interval == 0.0:
            return now
        slot = self.start + self.issued * self.interval
        self.issued += 1
        return slot


@dataclass
class Tally:
    """What happened so far."""

    requests_ok: int = 0
    events_ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    latencies: list[float] = field(default_factory=list)  # seconds, POST -> 202
    e2e: list[float] = field(default_factory=list)  # seconds, POST sent -> message received
    delivered: int = 0  # messages received by all subscribers
    last_offset: int = 0

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.first_error is None:
            self.first_error = message

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def progress_line(elapsed: float, duration: float, tally: Tally, recent_rate: float) -> str:
    lat = sorted(tally.latencies[-2000:])
    p99 = percentile(lat, 0.99) * 1000
    parts = [
        f"[{min(elapsed, duration):5.1f}s/{duration:g}s]",
        f"{tally.events_ok:,} events acked",
        f"{recent_rate:,.0f} ev/s",
        f"p99 {p99:.1f} ms" if lat else "p99 -",
        f"errors {tally.error_count}",
    ]
    if tally.delivered:
        parts.append(f"delivered {tally.delivered:,}")
    return "  ".join(parts)


def summarize(options: Options, tally: Tally, seconds: float) -> dict[str, Any]:
    lat = sorted(tally.latencies)
    e2e = sorted(tally.e2e)

    def ms(values: list[float], q: float) -> float | None:
        v = percentile(values, q)
        return None if math.isnan(v) else round(v * 1000, 3)

    opts = asdict(options)
    opts.pop("token")
    return {
        "options": opts,
        "seconds": round(seconds, 3),
        "requests": tally.requests_ok,
        "events": tally.events_ok,
        "events_per_second": round(tally.events_ok / seconds, 1) if seconds > 0 else 0.0,
        "errors": dict(tally.errors),
        "first_error": tally.first_error,
        "latency_ms": {"p50": ms(lat, 0.5), "p95": ms(lat, 0.95), "p99": ms(lat, 0.99)},
        "delivered": tally.delivered,
        "delivered_per_second": round(tally.delivered / seconds, 1) if seconds > 0 else 0.0,
        "end_to_end_ms": {"p50": ms(e2e, 0.5), "p95": ms(e2e, 0.95), "p99": ms(e2e, 0.99)},
    }


def format_summary(s: dict[str, Any]) -> str:
    o = s["options"]
    rate = f"{o['rate']:g} events/s" if o["rate"] else "as fast as acknowledged"
    lat = s["latency_ms"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    lines = [
        f"rtis bench: {s['seconds']:g} s against {o['url']} stream {o['stream']!r}: "
        f"batch {o['batch']}, concurrency {o['concurrency']}, {rate}",
        f"  acknowledged  {s['events']:,} events in {s['requests']:,} requests: "
        f"{s['events_per_second']:,.0f} events/s",
        f"  latency       p50 {fmt(lat['p50'])}  p95 {fmt(lat['p95'])}  p99 {fmt(lat['p99'])}"
        "  (POST to 202)",
    ]
    if o["subscribers"]:
        e2e = s["end_to_end_ms"]
        lines.append(
            f"  delivered     {s['delivered']:,} messages to {o['subscribers']} subscribers: "
            f"{s['delivered_per_second']:,.0f}/s"
        )
        lines.append(
            f"  end to end    p50 {fmt(e2e['p50'])}  p95 {fmt(e2e['p95'])}  p99 {fmt(e2e['p99'])}"
            "  (POST sent to WebSocket receipt)"
        )
    errors = s["errors"]
    if errors:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(errors.items()))
        lines.append(f"  errors        {kinds}; first: {s['first_error']}")
    else:
        lines.append("  errors        none")
    return "\n".join(lines)


def make_body(options: Options, seq: int, sent: float) -> bytes:
    """One request body: ``batch`` small events, each stamped with its send time."""
    base = options.template
    events = [{**base, "seq": seq + i, "bench_sent": sent} for i in range(options.batch)]
    return orjson.dumps(events)


# -- the asyncio pump ----------------------------------------------------------------


async def run(
    options: Options,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Run the load; return the summary. Raises ClientError if the server is unreachable."""
    import aiohttp

    tally = Tally()
    target = f"{options.url.rstrip('/')}/events/{options.stream}"
    headers = {"Content-Type": "application/json", **auth_headers(options.token)}
    connector = aiohttp.TCPConnector(limit=options.concurrency + options.subscribers + 1)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            async with session.get(f"{options.url.rstrip('/')}/health") as resp:
                await resp.read()
        except (aiohttp.ClientError, OSError) as e:
            raise ClientError(f"cannot reach {options.url}: {e}") from None
        subscribers = [
            await _subscribe(session, options, tally, i == 0) for i in range(options.subscribers)
        ]
        sub_tasks = [asyncio.create_task(s) for s in subscribers]
        start = clock()
        end = start + options.duration
        pacer = Pacer(start, options.rate, options.batch)
        seq = 0

        async def worker() -> None:
            nonlocal seq
            while True:
                slot = pacer.next_slot(clock())
                if slot >= end:
                    return
                if slot > clock():
                    await asyncio.sleep(slot - clock())
                body = make_body(options, seq, time.time())
                seq += options.batch
                try:
                    async with session.post(target, data=body, headers=headers) as resp:
                        answer = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    tally.error(type(e).__name__, str(e) or type(e).__name__)
                    await asyncio.sleep(0.05)
                    continue
                done = clock()
                if 200 <= status < 300:
                    tally.requests_ok += 1
                    ack = orjson.loads(answer)
                    tally.events_ok += int(ack.get("accepted", 0))
                    tally.last_offset = max(tally.last_offset, ack.get("last_offset") or 0)
                    tally.latencies.append(done - slot)
                else:
                    tally.error(str(status), describe_error(status, answer))
                    if status in (429, 503):
                        await asyncio.sleep(0.05)

        async def report() -> None:
            last_events, last_time = 0, start
            while True:
                await asyncio.sleep(PROGRESS_INTERVAL)
                now = clock()
                rate = (tally.events_ok - last_events) / max(1e-9, now - last_time)
                last_events, last_time = tally.events_ok, now
                if progress is not None:
                    progress(progress_line(now - start, options.duration, tally, rate))

        reporter = asyncio.create_task(report())
        try:
            await asyncio.gather(*(worker() for _ in range(options.concurrency)))
            seconds = clock() - start
            await _drain(tally, options, sub_tasks)
        finally:
            reporter.cancel()
            for t in sub_tasks:
                t.cancel()
            for t in (reporter, *sub_tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    return summarize(options, tally, seconds)


async def _drain(tally: Tally, options: Options, sub_tasks: list[asyncio.Task[None]]) -> None:
    """Give subscribers up to DRAIN_TIMEOUT to receive what was acknowledged."""
    if not sub_tasks:
        return
    want = tally.events_ok * options.subscribers
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while tally.delivered < want and time.monotonic() < deadline:
        if all(t.done() for t in sub_tasks):
            return
        await asyncio.sleep(0.05)


async def _subscribe(session: Any, options: Options, tally: Tally, measure: bool) -> Any:
    """Connect and subscribe one WebSocket client; return its receive loop."""
    ws = await session.ws_connect(ws_url(options.url), headers=auth_headers(options.token))
    await ws.send_bytes(orjson.dumps({"op": "subscribe", "topic": options.stream}))
    reply = orjson.loads((await ws.receive(timeout=10)).data)
    if reply.get("op") != "subscribed":
        await ws.close()
        raise ClientError(f"cannot subscribe to {options.stream!r}: {reply.get('message', reply)}")

    async def receive() -> None:
        try:
            async for msg in ws:
                data = msg.data
                if measure:
                    now = time.time()
                    frame = orjson.loads(data)
                    events = frame.get("events") or ()
                    for e in events:
                        sent = e.get("data", {}).get("bench_sent")
                        if isinstance(sent, float):
                            tally.e2e.append(now - sent)
                    tally.delivered += len(events)
                else:  # counting is enough here: no need to parse every frame
                    tally.delivered += (
                        data.count(b'"offset":')
                        if isinstance(data, bytes)
                        else (data.count('"offset":'))
                    )
        finally:
            await ws.close()

    return receive()


# -- command line --------------------------------------------------------------------


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="load-test a running server: events/s and latency percentiles",
        description="POST batches of small events to STREAM of a running server for "
        "--duration seconds (optionally paced to --rate events/s) from --concurrency "
        "connections, with --subscribers WebSocket clients receiving them. Shows a live "
        "progress line on stderr, then prints events/s and latency p50/p95/p99 (POST to 202, "
        "and POST to WebSocket receipt when there are subscribers).",
    )
    common_args(p)
    p.add_argument("--stream", default="events", help="stream to publish to (default: events)")
    p.add_argument(
        "--rate", type=float, default=0.0, help="events per second (default 0: as fast as acked)"
    )
    p.add_argument("--batch", type=int, default=100, help="events per request (default 100)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent requests (default 8)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    p.add_argument("--subscribers", type=int, default=0, help="WebSocket subscribers (default 0)")
    p.add_argument(
        "--template",
        default="{}",
        help="JSON object merged into every event, for streams with a schema",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(run=run_bench)


def options_from_args(args: argparse.Namespace) -> Options:
    for name in ("batch", "concurrency"):
        if getattr(args, name) < 1:
            raise ClientError(f"--{name} must be at least 1", 2)
    if args.subscribers < 0 or args.rate < 0 or args.duration <= 0:
        raise ClientError("--subscribers and --rate must be >= 0, --duration > 0", 2)
    try:
        template = orjson.loads(args.template)
    except orjson.JSONDecodeError as e:
        raise ClientError(f"--template is not JSON: {e}", 2) from None
    if not isinstance(template, dict):
        raise ClientError("--template must be a JSON object", 2)
    return Options(
        url=args.url,
        stream=args.stream,
        rate=args.rate,
        batch=args.batch,
        concurrency=args.concurrency,
        duration=args.duration,
        subscribers=args.subscribers,
        token=args.token,
        template=template,
    )


def _progress_writer(err: IO[str]) -> Callable[[str], None]:
    tty = err.isatty()
    last = [0.0]

    def write(line: str) -> None:
        if tty:
            err.write("\r\x1b[2K" + line)
            err.flush()
        elif time.monotonic() - last[0] >= 1.0:  # a log, not an animation
            last[0] = time.monotonic()
            err.write(line + "\n")
            err.flush()

    return write


def run_bench(args: argparse.Namespace) -> int:
    err = sys.stderr
    try:
        options = options_from_args(args)
        progress = None if args.quiet else _progress_writer(err)
        summary = asyncio.run(run(options, progress))
    except ClientError as e:
        print(f"rtis bench: {e.message}", file=err)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    if progress is not None and err.isatty():
        err.write("\n")
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        print(format_summary(summary))
    return EXIT_OK if summary["requests"] else EXIT_ERROR
