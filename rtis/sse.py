"""Server-Sent Events: ``GET /sse?topic=a&topic=b[&since=N][&where=...]``.

The same messages as ``/ws``, for clients that cannot use WebSocket. Each SSE
event's ``data`` is exactly a ``/ws`` server frame (``subscribed`` or
``events``), so one parser serves both transports.

Every event carries an ``id`` that is a *cursor over all the connection's
topics*: ``orders:12,small_orders:7`` (topic names percent-encoded), the last
offset delivered on each topic once this event has been received. Events are
written in the order they were queued, so a client holding the id of an event
has everything before it; a browser's ``EventSource`` sends it back as
``Last-Event-ID`` when it reconnects, and the stream resumes every topic right
after it: nothing lost, nothing repeated. Topics of the URL missing from the
cursor start at ``since`` (or live).

Subscriptions, history catch-up and the gap-free switch to live are the hub's
(:func:`rtis.ws.catch_up`); this module is only a sink with a bounded queue
and a writer. A client that falls ``max_queued_messages`` behind is cut off
(its socket is aborted) and resumes from its last complete event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from urllib.parse import quote, unquote

from aiohttp import web

from .errors import BadRequest, NotFound
from .http_auth import GUARD
from .protocol import events_frame, reply
from .store import Store
from .ws import Filter, Hub, SendQueue, Subscription, catch_up, recovered

log = logging.getLogger("rtis.sse")

RETRY_MS = 1000  # how long an EventSource waits before reconnecting
MAX_CURSOR_LENGTH = 16 * 1024

# -- the cursor, as pure functions -----------------------------------------------


def format_cursor(cursor: dict[str, int]) -> str:
    """``{"a": 3, "b": 7}`` -> ``"a:3,b:7"``; names are percent-encoded."""
    return ",".join(f"{quote(topic, safe='')}:{offset}" for topic, offset in cursor.items())


def parse_cursor(text: str) -> dict[str, int]:
    """The inverse of :func:`format_cursor`; ValueError says what is wrong."""
    text = text.strip()
    if len(text) > MAX_CURSOR_LENGTH:
        raise ValueError(f"longer than {MAX_CURSOR_LENGTH} characters")
    cursor: dict[str, int] = {}
    if not text:
        return cursor
    for part in text.split(","):
        name, sep, offset = part.rpartition(":")
        if not sep or not name or not offset.isdigit():
            raise ValueError(f"{part!r} is not topic:offset")
        cursor[unquote(name)] = int(offset)
    return cursor


def sse_event(data: bytes, id: str | None = None, event: str | None = None) -> bytes:
    """One event in the ``text/event-stream`` format."""
    out = []
    if event is not None:
        out.append(b"event: %s\n" % event.encode())
    if id is not None:
        out.append(b"id: %s\n" % id.encode())
    # JSON from orjson has no line breaks; split anyway, the client joins with \n.
    for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        out.append(b"data: %s\n" % line)
    out.append(b"\n")
    return b"".join(out)


# -- the sink --------------------------------------------------------------------


class SseStream:
    """One SSE response's send side: a bounded queue of frames and the cursor."""

    def __init__(self, max_queued: int, on_too_slow: Callable[[], None]) -> None:
        self.max_queued = max_queued
        self._on_too_slow = on_too_slow
        # Each events item is tagged with its subscription's offset, for the cursor.
        self.out = SendQueue(max_queued)
        self.closing = False
        self.subs: dict[bytes, Subscription] = {}  # by topic JSON
        self.cursor: dict[str, int] = {}  # what the client has once it got what was written

    @property
    def wakeup(self) -> asyncio.Event:
        return self.out.wakeup

    def send_reply(self, frame: bytes) -> None:
        if not self.closing:
            self.out.put_reply(frame)

    def send_events(self, topic_json: bytes, chunk: bytes, count: int) -> None:
        if self.closing:
            return
        # The subscription's last_sent already accounts for this chunk (ws.Sink).
        if not self.out.put_events(topic_json, chunk, count, self.subs[topic_json].last_sent):
            log.info("SSE client too slow: more than %d messages waiting", self.max_queued)
            self.close()
            self._on_too_slow()

    async def send_history(self, topic_json: bytes, chunk: bytes, count: int) -> None:
        await self.out.wait_for_room()
        self.send_events(topic_json, chunk, count)

    def close(self) -> None:
        self.closing = True
        self.out.close()

    def next_event(self) -> bytes:
        """Pop the next reply, or coalesce waiting events of one topic into one event."""
        topic_json, chunks, count, offset = self.out.pop()
        if topic_json is None:
            return sse_event(chunks[0], format_cursor(self.cursor))
        self.out.sent(count)
        self.cursor[self.subs[topic_json].topic] = offset
        return sse_event(events_frame(topic_json, chunks), format_cursor(self.cursor))

    def pending(self) -> bool:
        return bool(self.out)


# -- the endpoint ----------------------------------------------------------------


class SseEndpoint:
    """The ``/sse`` handler."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        *,
        max_queued: int,
        heartbeat: float,
        compile_filter: Callable[[str], Filter],
        max_subscriptions: int = 100,
    ) -> None:
        self.store = store
        self.hub = hub
        self.max_queued = max_queued
        self.heartbeat = heartbeat
        self.compile_filter = compile_filter
        self.max_subscriptions = max_subscriptions
        self.streams: set[SseStream] = set()

    def _params(self, request: web.Request) -> tuple[list[str], dict[str, int | None], str | None]:
        topics = list(dict.fromkeys(request.query.getall("topic", [])))
        if not topics:
            raise BadRequest(
                "/sse needs at least one 'topic' query parameter, e.g. /sse?topic=orders",
                code="bad_parameter",
            )
        if len(topics) > self.max_subscriptions:
            raise BadRequest(
                f"{len(topics)} topics exceed the limit of {self.max_subscriptions} per connection",
                code="too_many_subscriptions",
            )
        known = self.store.topics()
        unknown = [t for t in topics if t not in known]
        if unknown:
            # With auth on, naming the other topics would tell a client what its
            # scopes may not let it see.
            secured = request.app[GUARD].auth is not None
            hint = "" if secured else f" (topics: {', '.join(sorted(known)) or 'none'})"
            raise NotFound(f"no topic {unknown[0]!r}{hint}", code="unknown_topic")
        since: int | None = None
        raw = request.query.get("since")
        if raw is not None and raw != "":
            if not raw.isdigit():
                raise BadRequest(
                    f"query parameter 'since' must be a non-negative integer offset, got {raw!r}",
                    code="bad_parameter",
                )
            since = int(raw)
        try:
            cursor = parse_cursor(request.headers.get("Last-Event-ID", ""))
        except ValueError as e:
            raise BadRequest(
                f"Last-Event-ID must be a cursor like 'orders:12,small_orders:7': {e}",
                code="bad_parameter",
            ) from None
        starts = {t: cursor.get(t, since) for t in topics}
        where = request.query.get("where") or None
        return topics, starts, where

    async def handle(self, request: web.Request) -> web.StreamResponse:
        topics, starts, where = self._params(request)
        filter: Filter | None = None
        if where is not None:
            try:
                filter = self.compile_filter(where)
            except ValueError as e:
                raise BadRequest(str(e), code="bad_where") from None
        firsts = {t: await self.store.first_offset(t) for t, s in starts.items() if s is not None}

        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a proxy in front must not buffer the stream
            }
        )
        await resp.prepare(request)

        def abort() -> None:
            # The writer may be stuck on a peer that does not read: drop the
            # socket. The client resumes from its last complete event.
            if request.transport is not None:
                request.transport.abort()

        stream = SseStream(self.max_queued, abort)
        self.streams.add(stream)
        resumes: list[tuple[Subscription, int]] = []
        # From here to the end of the loop, no await: each topic's head is read
        # in the same step that registers its subscription.
        for topic in topics:
            sub = Subscription(stream, topic, filter)
            stream.subs[sub.topic_json] = sub
            self.hub.add(sub)
            head = self.hub.heads.get(topic, 0)
            start = starts[topic]
            if start is None:
                sub.last_sent = head
                sub.live = True
                stream.cursor[topic] = head
                ok = True
            else:
                start = min(start, head)
                stream.cursor[topic] = start
                resumes.append((sub, start))
                ok = recovered(start, firsts.get(topic), head)
            stream.send_reply(reply("subscribed", topic=topic, offset=head, recovered=ok))
        tasks = [
            asyncio.create_task(self._catch_up(stream, sub, start), name="rtis-sse-catch-up")
            for sub, start in resumes
        ]
        try:
            await resp.write(b"retry: %d\n\n" % RETRY_MS)
            await self._write_loop(request, resp, stream)
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            stream.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sub in stream.subs.values():
                sub.live = False
                self.hub.remove(sub)
            self.streams.discard(stream)
        return resp

    async def _catch_up(self, stream: SseStream, sub: Subscription, since: int) -> None:
        try:
            await catch_up(sub, since, self.store, self.hub)
        except Exception:
            log.exception("SSE: resuming %s failed", sub.topic)
            stream.close()

    async def _write_loop(
        self, request: web.Request, resp: web.StreamResponse, stream: SseStream
    ) -> None:
        while not stream.closing:
            if not stream.pending():
                stream.wakeup.clear()
                try:
                    async with asyncio.timeout(self.heartbeat):
                        await stream.wakeup.wait()
                except TimeoutError:
                    # A comment line: keeps proxies from timing out, and finds
                    # a client that went away (the write fails).
                    await resp.write(b": keep-alive\n\n")
                    continue
            if request.transport is None or request.transport.is_closing():
                return
            while stream.pending() and not stream.closing:
                await resp.write(stream.next_event())

    async def close_all(self) -> None:
        """End every stream (server shutting down); clients reconnect and resume."""
        for stream in list(self.streams):
            stream.close()
