"""The WebSocket hub: subscriptions, per-connection send queues, and the ``/ws`` pump.

Publishing (:meth:`Hub.publish`) is synchronous and never waits for a client:
a batch of committed messages is serialised once per topic, then handed to
each subscriber's connection with a non-blocking put. Each connection has one
sender task that takes everything waiting and coalesces it into as few
``events`` frames as possible. A connection whose queue passes
``max_queued_messages`` is closed with 4408 (it resumes with ``since``), so a
stalled client costs the others nothing.

Resuming with ``since``: the subscription is registered first but not yet
live; history is read from the store until the subscription has sent
everything up to the hub's last *published* offset of the topic, and then -
with no ``await`` between the check and the switch - it goes live. Every
published message is already committed, so nothing falls in between, and
live messages at or below the last offset sent are skipped, so nothing is
repeated. No live buffer is needed, so catching up costs bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from .auth import Principal, Unauthenticated
from .errors import RtisError
from .http_auth import PRINCIPAL, Guard
from .protocol import (
    CLOSE_BAD_MESSAGE,
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_RATE_LIMITED,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHENTICATED,
    Auth,
    Command,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    error_frame,
    events_frame,
    parse_command,
    reply,
)
from .store import Committed, Message, Store

log = logging.getLogger("rtis.ws")

HISTORY_PAGE = 1000
MAX_FRAME_BYTES = 1 << 20  # coalesce up to about this much into one frame
CLOSE_TIMEOUT = 2.0
RATE_WINDOW = 10  # seconds over which topic rates are averaged

Filter = Callable[[dict[str, Any]], bool]


class SendTotals:
    """What every connection of a hub has sent, for metrics (plain counters)."""

    __slots__ = ("frames", "messages", "slow_closes")

    def __init__(self) -> None:
        self.frames = 0
        self.messages = 0
        self.slow_closes = 0  # closed with 4408


class SendQueue:
    """One client's bounded queue of outgoing frames, shared by ``/ws`` and ``/sse``.

    Items are replies (sent alone) and chunks of serialised messages of a topic;
    :meth:`pop` coalesces consecutive chunks of one topic into one frame. A put
    never blocks: :meth:`put_events` refuses (returns False) once more than
    ``max_queued`` messages would be waiting, and the caller cuts the client
    off. History is queued with :meth:`wait_for_room` first, which waits until
    the queue is at most half full.
    """

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        # (topic JSON, or None for a reply; chunk; message count; the sink's tag)
        self._items: deque[tuple[bytes | None, bytes, int, int]] = deque()
        self.queued = 0  # messages waiting (popped but not yet sent included)
        self.wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.closed = False

    def __bool__(self) -> bool:
        return bool(self._items)

    def put_reply(self, frame: bytes) -> None:
        if not self.closed:
            self._items.append((None, frame, 0, 0))
            self.wakeup.set()

    def put_events(self, topic_json: bytes, chunk: bytes, count: int, tag: int = 0) -> bool:
        if self.closed:
            return True
        if self.queued + count > self.max_queued:
            return False
        self._items.append((topic_json, chunk, count, tag))
        self.queued += count
        if self.queued * 2 > self.max_queued:
            self._room.clear()
        self.wakeup.set()
        return True

    async def wait_for_room(self) -> None:
        while not self._room.is_set() and not self.closed:
            await self._room.wait()

    def pop(self) -> tuple[bytes | None, list[bytes], int, int]:
        """The next reply ``(None, [frame], 0, 0)``, or ``(topic_json, chunks,
        count, last tag)`` for consecutive chunks of one topic, up to about
        MAX_FRAME_BYTES. Call :meth:`sent` with ``count`` once it is out."""
        topic_json, chunk, count, tag = self._items.popleft()
        chunks = [chunk]
        if topic_json is None:
            return None, chunks, 0, 0
        size = len(chunk)
        items = self._items
        while items and items[0][0] == topic_json and size < MAX_FRAME_BYTES:
            _, c, n, tag = items.popleft()
            chunks.append(c)
            size += len(c)
            count += n
        return topic_json, chunks, count, tag

    def sent(self, count: int) -> None:
        self.queued -= count
        if self.queued * 2 <= self.max_queued:
            self._room.set()

    def close(self) -> None:
        """Drop what is waiting and wake every waiter; later puts are ignored."""
        self.closed = True
        self._items.clear()
        self._room.set()
        self.wakeup.set()


class Connection:
    """One client connection's send side: a bounded queue and a sender task."""

    def __init__(
        self, ws: web.WebSocketResponse, max_queued: int, totals: SendTotals | None = None
    ) -> None:
        self.ws = ws
        self.max_queued = max_queued
        self.out = SendQueue(max_queued)
        self.closing = False
        self.subscriptions: dict[str, Subscription] = {}
        self.frames_sent = 0
        self.messages_sent = 0
        self.totals = totals if totals is not None else SendTotals()
        self.handler_task = asyncio.current_task()
        self._close_task: asyncio.Task[None] | None = None
        self.close_code: int | None = None  # the code we closed with, if we closed
        self.principal: Principal | None = None  # who is connected, once authenticated
        self.auth_timer: asyncio.TimerHandle | None = None  # auth deadline or token expiry
        self._sender = asyncio.create_task(self._send_loop(), name="rtis-ws-sender")

    # -- enqueueing (never blocks) ---------------------------------------------

    def send_reply(self, frame: bytes) -> None:
        if not self.closing:
            self.out.put_reply(frame)

    def send_events(self, topic_json: bytes, chunk: bytes, count: int) -> None:
        """Queue ``count`` messages; close the connection (4408) if it is too far behind."""
        if not self.closing and not self.out.put_events(topic_json, chunk, count):
            self.close_soon(
                CLOSE_TOO_SLOW,
                f"too slow: more than {self.max_queued} messages waiting; resume with since",
            )

    async def send_history(self, topic_json: bytes, chunk: bytes, count: int) -> None:
        """Queue history, first waiting until the queue is at most half full."""
        await self.out.wait_for_room()
        self.send_events(topic_json, chunk, count)

    @property
    def queued(self) -> int:
        return self.out.queued

    # -- the sender task ---------------------------------------------------------

    async def _send_loop(self) -> None:
        ws = self.ws
        out = self.out
        totals = self.totals
        try:
            while True:
                await out.wakeup.wait()
                out.wakeup.clear()
                while out:
                    topic_json, chunks, count, _ = out.pop()
                    frame = chunks[0] if topic_json is None else events_frame(topic_json, chunks)
                    await ws.send_frame(frame, WSMsgType.TEXT)
                    self.frames_sent += 1
                    self.messages_sent += count
                    totals.frames += 1
                    totals.messages += count
                    if count:
                        out.sent(count)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # the peer went away or the socket broke
            log.warning("WebSocket send failed: %r", e)
            self.close_soon(1011, "send failed")
        finally:
            self.closing = True
            out.close()

    # -- closing -----------------------------------------------------------------

    def close_soon(self, code: int, message: str) -> None:
        """Close without waiting: used from publish, which must never block."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        if code == CLOSE_TOO_SLOW:
            self.totals.slow_closes += 1
        self.out.close()
        self._close_task = asyncio.get_running_loop().create_task(self.close(code, message))

    async def close(self, code: int, message: str) -> None:
        """Send a close frame (best effort), end the handler, and make sure the
        socket goes away even if the peer never reads again."""
        self.closing = True
        if self.close_code is None:
            self.close_code = code
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=code, message=message.encode()[:120])
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        except asyncio.CancelledError:
            # aiohttp's close() turns a cancelled drain into CancelledError; only
            # propagate it if this task itself is being cancelled.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        # The close frame sits behind whatever the peer has not read; a peer
        # that never reads again is dropped after CLOSE_TIMEOUT.
        writer = self.ws._writer
        transport = writer.transport if writer is not None else None
        if transport is not None:
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)
        # aiohttp's receive() does not wake up when the socket is stuck: end
        # the handler so that its ``finally`` unregisters the subscriptions.
        task = self.handler_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()

    async def drain_and_stop(self) -> None:
        """Stop the sender task (the socket is closing)."""
        self.closing = True
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender


class Sink(Protocol):
    """Where a Subscription delivers: a WebSocket :class:`Connection`, or an SSE
    stream (``sse.py``). When either method is called, the subscription's
    ``last_sent`` is already the last offset the chunk accounts for."""

    closing: bool

    def send_events(self, topic_json: bytes, chunk: bytes, count: int) -> None: ...

    async def send_history(self, topic_json: bytes, chunk: bytes, count: int) -> None: ...


class Subscription:
    """One connection's subscription to one topic."""

    __slots__ = ("conn", "filter", "last_sent", "live", "topic", "topic_json")

    def __init__(self, conn: Sink, topic: str, filter: Filter | None) -> None:
        self.conn = conn
        self.topic = topic
        self.topic_json = orjson.dumps(topic)
        self.filter = filter
        self.live = False
        self.last_sent = 0

    def deliver(self, messages: list[Message], chunk: bytes) -> None:
        """Hand live messages to the connection (called by publish, never blocks)."""
        if not self.live:
            return
        if messages[0].offset <= self.last_sent:
            messages = [m for m in messages if m.offset > self.last_sent]
            if not messages:
                return
            chunk = b",".join(m.to_json() for m in messages)
        if self.filter is not None:
            selected = select(messages, self.filter)
            self.last_sent = messages[-1].offset
            if not selected:
                return
            if len(selected) != len(messages):
                chunk = b",".join(m.to_json() for m in selected)
            messages = selected
        self.last_sent = messages[-1].offset
        self.conn.send_events(self.topic_json, chunk, len(messages))


def select(messages: list[Message], where: Filter) -> list[Message]:
    """The messages whose data satisfies ``where``; errors count as not matching."""
    out = []
    for m in messages:
        try:
            if where(m.parsed()):
                out.append(m)
        except Exception:
            continue
    return out


class Hub:
    """Topic -> subscriptions, and the last published offset of each topic."""

    def __init__(self, heads: dict[str, int]) -> None:
        self.heads = dict(heads)  # last published offset per topic
        self._subs: dict[str, set[Subscription]] = {}
        self.connections: set[Connection] = set()
        self.messages_published = 0
        self.totals = SendTotals()  # of every connection, for metrics
        self._rates: dict[str, deque[list[int]]] = {}  # topic -> [second, count] buckets

    def rate(self, topic: str, window: int = RATE_WINDOW) -> float:
        """Messages per second published on ``topic`` over the last ``window`` seconds."""
        buckets = self._rates.get(topic)
        if not buckets:
            return 0.0
        since = int(time.monotonic()) - window
        return sum(n for sec, n in buckets if sec >= since) / window

    def _count(self, topic: str, n: int) -> None:
        now = int(time.monotonic())
        buckets = self._rates.get(topic)
        if buckets is None:
            buckets = self._rates[topic] = deque()
        if buckets and buckets[-1][0] == now:
            buckets[-1][1] += n
        else:
            buckets.append([now, n])
            while buckets[0][0] < now - RATE_WINDOW:
                buckets.popleft()

    def add(self, sub: Subscription) -> None:
        self._subs.setdefault(sub.topic, set()).add(sub)

    def remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.topic]

    def subscriber_count(self, topic: str | None = None) -> int:
        if topic is not None:
            return len(self._subs.get(topic, ()))
        return sum(len(s) for s in self._subs.values())

    def publish(self, batches: Iterable[Committed]) -> None:
        """Broadcast committed messages: serialise once per topic, never wait."""
        for batch in batches:
            messages = batch.messages
            if not messages:
                continue
            self.heads[batch.topic] = messages[-1].offset
            self.messages_published += len(messages)
            self._count(batch.topic, len(messages))
            subs = self._subs.get(batch.topic)
            if not subs:
                continue
            chunk = b",".join(m.to_json() for m in messages)
            for sub in list(subs):
                sub.deliver(messages, chunk)


def _expire(conn: Connection, principal: Principal | None, message: str) -> None:
    """Close with 4401 unless the connection has authenticated anew since."""
    if conn.principal is principal:
        conn.close_soon(CLOSE_UNAUTHENTICATED, message)


async def catch_up(sub: Subscription, since: int, store: Store, hub: Hub) -> None:
    """Send retained messages after ``since``, then switch ``sub`` to live."""
    sub.last_sent = since
    conn = sub.conn
    while not conn.closing:
        head = hub.heads.get(sub.topic, 0)
        if sub.last_sent >= head:
            sub.live = True  # no await since the check: nothing published in between
            return
        # May read past ``head`` (committed, not yet published): the live
        # path then skips those offsets, as they are <= last_sent.
        messages = await store.read_messages(sub.topic, sub.last_sent, HISTORY_PAGE)
        if not messages:
            sub.last_sent = head  # purged by retention meanwhile
            continue
        selected = messages
        if sub.filter is not None:
            selected = select(messages, sub.filter)
        sub.last_sent = messages[-1].offset  # before sending: see Sink
        if selected:
            chunk = b",".join(m.to_json() for m in selected)
            await conn.send_history(sub.topic_json, chunk, len(selected))


def recovered(since: int, first: int | None, last: int) -> bool:
    """Whether every message after ``since`` is still retained."""
    if since >= last:
        return True
    if first is None:
        return False
    return first <= since + 1


class _WebSocket(web.WebSocketResponse):
    """Says why when a client's frame is too big (aiohttp closes with 1009, no reason)."""

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message:
            message = b"frame exceeds max_frame_bytes = %d" % self._max_msg_size
        return await super().close(code=code, message=message, drain=drain)


class WebSocketEndpoint:
    """The ``/ws`` handler: reads client frames and drives subscriptions."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        *,
        max_queued: int,
        heartbeat: float,
        compile_filter: Callable[[str], Filter],
        max_subscriptions: int = 100,
        max_frame_bytes: int = 64 * 1024,
        max_connections: int = 10_000,
        guard: Guard | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.max_queued = max_queued
        self.heartbeat = heartbeat
        self.compile_filter = compile_filter
        self.max_subscriptions = max_subscriptions
        self.max_frame_bytes = max_frame_bytes
        self.max_connections = max_connections
        self.guard = guard
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if len(self.hub.connections) >= self.max_connections:
            raise RtisError(
                f"too many WebSocket connections: max_connections = {self.max_connections}",
                status=503,
                code="too_many_connections",
                retry_after=1,
            )
        ws = _WebSocket(
            heartbeat=self.heartbeat,
            compress=False,  # frames are shared by many subscribers; deflate would be per client
            max_msg_size=self.max_frame_bytes,
        )
        await ws.prepare(request)
        conn = Connection(ws, self.max_queued, self.hub.totals)
        self.hub.connections.add(conn)
        self._start_auth(conn, request.get(PRINCIPAL))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT or msg.type == WSMsgType.BINARY:
                    try:
                        self._handle_command(conn, self._admit(conn, parse_command(msg.data)))
                    except ProtocolError as e:
                        conn.send_reply(error_frame(e.code, e.message, e.id))
                        await self._flush_then_close(conn, e.close_code, e.message)
                        break
                    except Exception:
                        log.exception("internal error on a WebSocket connection")
                        conn.send_reply(error_frame("internal_error", "internal error"))
                        await self._flush_then_close(conn, 1011, "internal error")
                        break
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            if conn.auth_timer is not None:
                conn.auth_timer.cancel()
            self.hub.connections.discard(conn)
            for sub in conn.subscriptions.values():
                self.hub.remove(sub)
            conn.subscriptions.clear()
            await conn.drain_and_stop()
        return ws

    async def _flush_then_close(self, conn: Connection, code: int, message: str) -> None:
        for _ in range(20):
            if not conn.out:
                break
            await asyncio.sleep(0.005)
        await conn.close(code, message)

    # -- auth: the decisions are auth.py's; this applies them to a connection ----

    def _start_auth(self, conn: Connection, principal: Principal | None) -> None:
        """Authenticated on the upgrade, or given ``ws_auth_timeout`` to send ``auth``."""
        guard = self.guard
        if guard is None or guard.auth is None:
            return
        if principal is not None:
            self._authenticated(conn, principal)
            return
        timeout = guard.ws_auth_timeout
        conn.auth_timer = asyncio.get_running_loop().call_later(
            timeout, _expire, conn, None, f"no auth message within {timeout:g} s"
        )

    def _authenticated(self, conn: Connection, principal: Principal) -> None:
        conn.principal = principal
        if conn.auth_timer is not None:
            conn.auth_timer.cancel()
            conn.auth_timer = None
        if principal.valid_until is not None:
            conn.auth_timer = asyncio.get_running_loop().call_later(
                max(0.0, principal.valid_until - time.time()),
                _expire,
                conn,
                principal,
                "the token has expired; send a new auth message before it does",
            )

    def _admit(self, conn: Connection, cmd: Command) -> Command:
        """Rate limit, authentication and scope of one client command."""
        guard = self.guard
        if guard is None or guard.auth is None:
            return cmd
        principal = conn.principal
        if principal is not None:
            status = guard.limiter.charge(principal)
            if status is not None and not status.allowed:
                raise ProtocolError(
                    f"{principal.id} sent more than {principal.rate:g} frames/s "
                    f"(burst {principal.burst})",
                    CLOSE_RATE_LIMITED,
                    code="rate_limited",
                    id=cmd.id,
                )
        if isinstance(cmd, Auth):
            try:
                principal = guard.auth.authenticate(cmd.token)
            except Unauthenticated as e:
                raise ProtocolError(
                    e.message, CLOSE_UNAUTHENTICATED, code="unauthenticated", id=cmd.id
                ) from None
            for topic in conn.subscriptions:  # a new token must still cover what is held
                self._require(principal, topic, cmd.id)
            self._authenticated(conn, principal)
        elif principal is None:
            raise ProtocolError(
                'authenticate first: send {"op": "auth", "token": "..."} '
                "or an Authorization header on the upgrade",
                CLOSE_UNAUTHENTICATED,
                code="unauthenticated",
                id=cmd.id,
            )
        elif isinstance(cmd, Subscribe):
            self._require(principal, cmd.topic, cmd.id)
        return cmd

    @staticmethod
    def _require(principal: Principal, topic: str, id: Any) -> None:
        if not principal.allows(f"subscribe:{topic}"):
            raise ProtocolError(
                f"{principal.id} lacks the scope 'subscribe:{topic}'",
                CLOSE_FORBIDDEN,
                code="forbidden",
                id=id,
            )

    def _handle_command(self, conn: Connection, cmd: Any) -> None:
        if isinstance(cmd, Ping):
            conn.send_reply(reply("pong", cmd.id))
        elif isinstance(cmd, Subscribe):
            self._subscribe(conn, cmd)
        elif isinstance(cmd, Unsubscribe):
            sub = conn.subscriptions.pop(cmd.topic, None)
            if sub is None:
                conn.send_reply(
                    error_frame("not_subscribed", f"not subscribed to {cmd.topic!r}", cmd.id)
                )
                return
            sub.live = False
            self.hub.remove(sub)
            conn.send_reply(reply("unsubscribed", cmd.id, topic=cmd.topic))
        elif isinstance(cmd, Auth):
            conn.send_reply(reply("authenticated", cmd.id))
        else:  # pragma: no cover - parse_command returns only the above
            raise ProtocolError("unknown command", CLOSE_BAD_MESSAGE)

    def _subscribe(self, conn: Connection, cmd: Subscribe) -> None:
        topics = self.store.topics()
        if cmd.topic not in topics:
            secured = self.guard is not None and self.guard.auth is not None
            hint = "" if secured else f" (topics: {', '.join(sorted(topics)) or 'none'})"
            conn.send_reply(error_frame("unknown_topic", f"no topic {cmd.topic!r}{hint}", cmd.id))
            return
        if cmd.topic in conn.subscriptions:
            conn.send_reply(
                error_frame("already_subscribed", f"already subscribed to {cmd.topic!r}", cmd.id)
            )
            return
        if len(conn.subscriptions) >= self.max_subscriptions:
            conn.send_reply(
                error_frame(
                    "too_many_subscriptions",
                    f"a connection may hold at most {self.max_subscriptions} subscriptions",
                    cmd.id,
                )
            )
            return
        filter: Filter | None = None
        if cmd.where is not None:
            try:
                filter = self.compile_filter(cmd.where)
            except ValueError as e:
                conn.send_reply(error_frame("bad_where", str(e), cmd.id))
                return
        sub = Subscription(conn, cmd.topic, filter)
        conn.subscriptions[cmd.topic] = sub
        self.hub.add(sub)
        head = self.hub.heads.get(cmd.topic, 0)
        if cmd.since is None:
            sub.last_sent = head
            sub.live = True
            conn.send_reply(
                reply("subscribed", cmd.id, topic=cmd.topic, offset=head, recovered=True)
            )
            return
        task = asyncio.get_running_loop().create_task(self._resume(conn, sub, cmd, head))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resume(self, conn: Connection, sub: Subscription, cmd: Subscribe, head: int) -> None:
        try:
            since = min(cmd.since or 0, head) if cmd.since is not None else head
            first = await self.store.first_offset(cmd.topic)
            conn.send_reply(
                reply(
                    "subscribed",
                    cmd.id,
                    topic=cmd.topic,
                    offset=head,
                    recovered=recovered(since, first, head),
                )
            )
            await catch_up(sub, since, self.store, self.hub)
        except Exception as e:
            log.exception("resuming %s failed", cmd.topic)
            conn.send_reply(error_frame("resume_failed", f"could not read history: {e}", cmd.id))

    async def close_all(self) -> None:
        """Close every connection with 1001 (server shutting down)."""
        for task in list(self._tasks):
            task.cancel()
        conns = list(self.hub.connections)
        await asyncio.gather(
            *(c.close(CLOSE_GOING_AWAY, "server shutting down") for c in conns),
            return_exceptions=True,
        )


__all__ = ["CLOSE_GOING_AWAY", "Hub", "WSCloseCode", "WebSocketEndpoint"]
