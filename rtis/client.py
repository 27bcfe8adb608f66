"""``rtis send`` and ``rtis tail``: drive a running rtis from a shell.

``send`` POSTs JSON objects given as arguments, or NDJSON read from stdin in
batches, and prints each acknowledgement; an error answer is printed as the
server's one-line message and makes the exit status non-zero. ``tail``
subscribes to a topic over ``/ws`` and prints each message as one JSON line;
when the connection drops it reconnects with exponential backoff and jitter
and resumes right after the last offset it printed, so nothing is missed or
repeated.

The decisions (how lines become batches, how an error answer reads, what a
frame means for the tail's position, how long to wait before reconnecting)
are plain functions and classes; the I/O around them is thin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_BATCH = 1000
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_RETRY_AFTER = 10.0
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Errors after which reconnecting cannot help.
FATAL_CODES = frozenset(
    {
        "unknown_topic",
        "bad_where",
        "forbidden",
        "unauthenticated",
        "bad_message",
        "too_many_subscriptions",
    }
)
FATAL_CLOSES = frozenset({4400, 4401, 4403, 1008, 1009})


class ClientError(Exception):
    """A failure to report as one line (and an exit status)."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


# -- shared ------------------------------------------------------------------------


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("RTIS_URL", DEFAULT_URL),
        help=f"the server's base URL (default: $RTIS_URL or {DEFAULT_URL})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("RTIS_TOKEN"),
        help="API key or JWT, sent as 'Authorization: Bearer ...' (default: $RTIS_TOKEN)",
    )


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def describe_error(status: int, body: bytes) -> str:
    """The server's error answer as one line (plus one line per detail)."""
    try:
        err = orjson.loads(body)["error"]
        lines = [f"{status} {err['code']}: {err['message']}"]
        for d in err.get("details") or []:
            where = " ".join(
                str(x) for x in (f"[{d['index']}]" if "index" in d else None, d.get("path")) if x
            )
            lines.append(f"  {where}: {d.get('message', '')}".rstrip())
        return "\n".join(lines)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = body.decode(errors="replace").strip()[:300]
        return f"{status}: {text}" if text else str(status)


# -- send --------------------------------------------------------------------------


def add_send_parser(sub: Any) -> None:
    p = sub.add_parser(
        "send",
        help="publish events to a stream of a running server",
        description="Publish events to STREAM. Each argument is a JSON object (or an array "
        "of objects); with '-', NDJSON (one object per line) is read from stdin and sent in "
        "batches. Prints the server's acknowledgement of each request, e.g. "
        '{"accepted":2,"duplicates":0,"first_offset":11,"last_offset":12}. '
        "Exits non-zero with the server's error message on a 4xx/5xx answer.",
    )
    p.add_argument("stream", metavar="STREAM", help="the stream to publish to")
    p.add_argument(
        "events", metavar="JSON", nargs="*", help="events as JSON objects, or - for stdin"
    )
    common_args(p)
    p.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"events per request when reading stdin (default {DEFAULT_BATCH})",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=5,
        help="times to retry a request answered 429 or 503, after its Retry-After (default 5)",
    )
    p.set_defaults(run=run_send)


def events_from_args(values: list[str]) -> list[Any]:
    """Parse each argument as JSON; an array contributes its items."""
    events: list[Any] = []
    for i, text in enumerate(values, 1):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise ClientError(f"argument {i} is not JSON: {e}", EXIT_USAGE) from None
        if isinstance(value, list):
            events.extend(value)
        else:
            events.append(value)
    return events


@dataclass
class Batch:
    body: bytes  # NDJSON
    first_line: int  # stdin line number of its first event
    lines: list[int]  # stdin line number of each event


def ndjson_batches(
    lines: Iterable[bytes], batch: int = DEFAULT_BATCH, max_bytes: int = MAX_BATCH_BYTES
) -> Iterator[Batch]:
    """Group NDJSON lines into request bodies of at most ``batch`` events and
    about ``max_bytes``; blank lines are skipped, a line that is not JSON stops
    everything with its line number (batches before it were already yielded)."""
    parts: list[bytes] = []
    numbers: list[int] = []
    size = 0
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise ClientError(f"stdin line {n} is not JSON: {e}", EXIT_USAGE) from None
        if parts and (len(parts) >= batch or size + len(line) > max_bytes):
            yield Batch(b"\n".join(parts) + b"\n", numbers[0], numbers)
            parts, numbers, size = [], [], 0
        parts.append(line)
        numbers.append(n)
        size += len(line) + 1
    if parts:
        yield Batch(b"\n".join(parts) + b"\n", numbers[0], numbers)


def post_events(
    url: str,
    stream: str,
    body: bytes,
    content_type: str,
    token: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
) -> bytes:
    """POST one body; return the acknowledgement. Retries 429/503 after Retry-After."""
    target = f"{url.rstrip('/')}/events/{urllib.parse.quote(stream, safe='')}"
    headers = {"Content-Type": content_type, **auth_headers(token)}
    attempt = 0
    while True:
        request = urllib.request.Request(target, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as e:
            answer = e.read()
            if e.code in (429, 503) and attempt < retries:
                attempt += 1
                time.sleep(retry_after(e.headers.get("Retry-After"), attempt))
                continue
            raise ClientError(describe_error(e.code, answer)) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ClientError(f"cannot reach {url}: {reason}") from None


def retry_after(header: str | None, attempt: int) -> float:
    """Seconds to wait before retrying: the server's Retry-After, else backoff."""
    try:
        if header is not None:
            return min(MAX_RETRY_AFTER, max(0.0, float(header)))
    except ValueError:
        pass
    return float(min(MAX_RETRY_AFTER, 0.1 * 2**attempt))


def run_send(args: argparse.Namespace, stdin: IO[bytes] | None = None) -> int:
    out = sys.stdout
    try:
        if args.events == ["-"]:
            source = stdin if stdin is not None else sys.stdin.buffer
            for batch in ndjson_batches(source, max(1, args.batch)):
                try:
                    ack = post_events(
                        args.url,
                        args.stream,
                        batch.body,
                        "application/x-ndjson",
                        args.token,
                        args.retries,
                    )
                except ClientError as e:
                    last = batch.lines[-1]
                    e.message = f"stdin lines {batch.first_line}-{last}: {e.message}"
                    raise
                out.write(ack.decode() + "\n")
                out.flush()
            return EXIT_OK
        if not args.events:
            raise ClientError(
                "give events as JSON arguments, e.g. rtis send orders '{\"id\": 1}', "
                "or - to read NDJSON from stdin",
                EXIT_USAGE,
            )
        if "-" in args.events:
            raise ClientError("- (stdin) cannot be mixed with JSON arguments", EXIT_USAGE)
        events = events_from_args(args.events)
        ack = post_events(
            args.url,
            args.stream,
            orjson.dumps(events),
            "application/json",
            args.token,
            args.retries,
        )
        out.write(ack.decode() + "\n")
        return EXIT_OK
    except ClientError as e:
        print(f"rtis send: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# -- tail --------------------------------------------------------------------------


def add_tail_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tail",
        help="print a topic's messages as they arrive (NDJSON)",
        description="Subscribe to TOPIC over /ws and print each message as one JSON line "
        '({"offset": .., "time": .., "data": {..}}). With --since N it first prints every '
        "retained message after offset N. If the connection drops it reconnects with "
        "backoff and resumes after the last offset printed.",
    )
    p.add_argument("topic", metavar="TOPIC", help="a stream or query name")
    common_args(p)
    p.add_argument(
        "--since", type=int, help="start after this offset (0 = all retained); default: live"
    )
    p.add_argument("--where", help="SQL condition on each message's data, e.g. \"region = 'eu'\"")
    p.add_argument(
        "--count", type=int, help="exit after printing this many messages (default: never)"
    )
    p.set_defaults(run=run_tail)


def ws_url(base: str) -> str:
    """``http://host:port`` -> ``ws://host:port/ws`` (https -> wss)."""
    parts = urllib.parse.urlsplit(base)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ClientError(f"--url must start with http:// or https://, got {base!r}", EXIT_USAGE)
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


class Backoff:
    """Exponential backoff with full jitter: 0.1 s, 0.2 s, ... up to ``cap``."""

    def __init__(
        self, base: float = 0.1, cap: float = 5.0, rand: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rand = rand or random.Random()

    def next(self) -> float:
        ceiling: float = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt += 1
        return ceiling / 2 + self._rand.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class TailState:
    """Where a tail stands: the last offset printed, which is where it resumes."""

    def __init__(self, topic: str, since: int | None, where: str | None) -> None:
        self.topic = topic
        self.last: int | None = since
        self.where = where
        self.printed = 0

    def subscribe_frame(self) -> bytes:
        frame: dict[str, Any] = {"op": "subscribe", "topic": self.topic, "id": 1}
        if self.last is not None:
            frame["since"] = self.last
        if self.where is not None:
            frame["where"] = self.where
        return orjson.dumps(frame)

    def handle(self, frame: dict[str, Any]) -> tuple[list[bytes], str | None]:
        """Lines to print, and a warning for stderr, for one server frame.
        Raises ClientError for errors that reconnecting cannot fix."""
        op = frame.get("op")
        if op == "events" and frame.get("topic") == self.topic:
            lines = []
            for event in frame.get("events", ()):
                offset = event.get("offset")
                if isinstance(offset, int) and self.last is not None and offset <= self.last:
                    continue  # already printed before a reconnect
                lines.append(orjson.dumps(event))
                if isinstance(offset, int):
                    self.last = offset
            return lines, None
        if op == "subscribed":
            warning = None
            if self.last is None:
                self.last = int(frame.get("offset") or 0)  # live from here; resume from here
            elif frame.get("recovered") is False:
                warning = (
                    f"messages after offset {self.last} of {self.topic!r} are no longer "
                    "retained; continuing with the oldest retained one"
                )
            return [], warning
        if op == "error":
            code = str(frame.get("code"))
            message = f"{code}: {frame.get('message', '')}"
            if code in FATAL_CODES or code.startswith("forbidden"):
                raise ClientError(message)
            return [], message
        return [], None


async def tail(
    url: str,
    topic: str,
    since: int | None = None,
    where: str | None = None,
    token: str | None = None,
    count: int | None = None,
    out: IO[bytes] | None = None,
    err: IO[str] | None = None,
    backoff: Backoff | None = None,
) -> int:
    """Print ``topic``'s messages to ``out`` until ``count`` were printed (or forever)."""
    import aiohttp

    out = out if out is not None else sys.stdout.buffer
    err = err if err is not None else sys.stderr
    target = ws_url(url)
    state = TailState(topic, since, where)
    backoff = backoff or Backoff()
    if count is not None and count <= 0:
        return EXIT_OK
    async with aiohttp.ClientSession(headers=auth_headers(token)) as session:
        while True:
            reason = "connection closed"
            try:
                async with session.ws_connect(target, heartbeat=20.0) as ws:
                    await ws.send_bytes(state.subscribe_frame())
                    async for msg in ws:
                        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            break
                        lines, warning = state.handle(orjson.loads(msg.data))
                        if warning:
                            print(f"rtis tail: {warning}", file=err, flush=True)
                        if lines:
                            backoff.reset()
                            if count is not None:
                                lines = lines[: count - state.printed]
                            out.write(b"\n".join(lines) + b"\n")
                            out.flush()
                            state.printed += len(lines)
                            if count is not None and state.printed >= count:
                                return EXIT_OK
                    code = ws.close_code
                    if code in FATAL_CLOSES:
                        raise ClientError(f"the server closed the connection ({code})")
                    reason = f"connection closed ({code})" if code else reason
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                if isinstance(e, aiohttp.WSServerHandshakeError) and e.status in (401, 403, 404):
                    raise ClientError(f"{e.status} on {target}: {e.message}") from None
                reason = f"cannot connect: {e}"
            delay = backoff.next()
            where_from = f"after offset {state.last}" if state.last is not None else "live"
            print(
                f"rtis tail: {reason}; reconnecting in {delay:.1f}s, resuming {where_from}",
                file=err,
                flush=True,
            )
            await asyncio.sleep(delay)


def run_tail(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(
            tail(args.url, args.topic, args.since, args.where, args.token, args.count)
        )
    except ClientError as e:
        print(f"rtis tail: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. piped into head
        with contextlib.suppress(Exception):
            sys.stdout.close()
        return EXIT_OK
