"""/sse: the /ws messages as Server-Sent Events, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from rtis.sse import SseStream, format_cursor, parse_cursor, sse_event

from .conftest import ClientFactory
from .test_ws import post


@dataclass
class Event:
    id: str | None
    data: dict[str, Any]


class SseReader:
    """A minimal EventSource: parses ``text/event-stream`` from an aiohttp response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.last_id: str | None = None

    async def next(self, timeout: float = 5.0) -> Event:
        data: list[str] = []
        event_id: str | None = None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data:
                        if event_id is not None:
                            self.last_id = event_id
                        return Event(event_id, orjson.loads("\n".join(data)))
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "data":
                    data.append(value)
                elif field == "id":
                    event_id = value

    async def offsets_until(
        self, want: dict[str, int], timeout: float = 10.0
    ) -> dict[str, list[int]]:
        """Collect event offsets per topic until each topic reaches ``want[topic]``."""
        got: dict[str, list[int]] = {t: [] for t in want}
        deadline = time.monotonic() + timeout
        while any((got[t] or [0])[-1] < n for t, n in want.items()):
            ev = await self.next(max(0.1, deadline - time.monotonic()))
            if ev.data["op"] == "events":
                got.setdefault(ev.data["topic"], []).extend(e["offset"] for e in ev.data["events"])
        return got


async def open_sse(
    client: TestClient[Any, Any], query: str, last_event_id: str | None = None
) -> SseReader:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    resp = await client.get(f"/sse?{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return SseReader(resp)


TWO_STREAMS = {"orders": {}, "payments": {}}


def test_cursor_round_trips_topic_names_with_separators() -> None:
    cursor = {"orders": 12, "a,b:c%": 0, "ünï": 7}
    assert parse_cursor(format_cursor(cursor)) == cursor
    assert format_cursor({"orders": 12, "small_orders": 7}) == "orders:12,small_orders:7"
    for bad in ("orders", "orders:x", ":3", "orders:-1"):
        with pytest.raises(ValueError):
            parse_cursor(bad)


def test_an_event_with_line_breaks_in_data_stays_one_event() -> None:
    assert sse_event(b'{"a":\n1}', "t:1") == b'id: t:1\ndata: {"a":\ndata: 1}\n\n'


async def test_live_events_arrive_in_ws_frame_form_with_a_cursor_id(start: ClientFactory) -> None:
    client = await start()
    sse = await open_sse(client, "topic=events")
    first = await sse.next()
    assert first.data == {"op": "subscribed", "topic": "events", "offset": 0, "recovered": True}
    assert first.id == "events:0"
    await post(client, [{"a": 1}, {"a": 2}])
    ev = await sse.next()
    assert ev.data["op"] == "events" and ev.data["topic"] == "events"
    assert [e["offset"] for e in ev.data["events"]] == [1, 2]
    assert ev.data["events"][0]["data"] == {"a": 1}
    assert ev.id == "events:2"


async def test_several_topics_share_one_connection_and_one_cursor(start: ClientFactory) -> None:
    client = await start(streams=TWO_STREAMS)
    await post(client, [{"n": i} for i in range(3)], "orders")
    await post(client, [{"n": i} for i in range(2)], "payments")
    sse = await open_sse(client, "topic=orders&topic=payments&since=0")
    got = await sse.offsets_until({"orders": 3, "payments": 2})
    assert got == {"orders": [1, 2, 3], "payments": [1, 2]}
    assert parse_cursor(sse.last_id or "") == {"orders": 3, "payments": 2}
    await post(client, [{"n": 9}], "payments")
    assert await sse.offsets_until({"payments": 3}) == {"payments": [3]}
    assert sse.last_id == "orders:3,payments:3"


async def test_last_event_id_resumes_every_topic_without_loss_or_repeat(
    start: ClientFactory,
) -> None:
    client = await start(streams=TWO_STREAMS)
    await post(client, [{"n": i} for i in range(4)], "orders")
    sse = await open_sse(client, "topic=orders&topic=payments&since=0")
    await sse.offsets_until({"orders": 4})
    cursor = sse.last_id
    assert cursor is not None and parse_cursor(cursor) == {"orders": 4, "payments": 0}
    sse.resp.close()
    # Missed while disconnected, on both topics.
    await post(client, [{"n": i} for i in range(4, 7)], "orders")
    await post(client, [{"n": i} for i in range(2)], "payments")
    # An EventSource reconnects to the same URL (since=0 included) with the header.
    sse = await open_sse(client, "topic=orders&topic=payments&since=0", last_event_id=cursor)
    got = await sse.offsets_until({"orders": 7, "payments": 2})
    assert got == {"orders": [5, 6, 7], "payments": [1, 2]}


async def test_reconnecting_while_events_flow_delivers_each_offset_exactly_once(
    start: ClientFactory,
) -> None:
    client = await start(streams=TWO_STREAMS)
    total = 300
    received: dict[str, list[int]] = {"orders": [], "payments": []}

    async def producer() -> None:
        for i in range(0, total, 10):
            await post(client, [{"n": n} for n in range(i, i + 10)], "orders")
            await post(client, [{"n": n} for n in range(i, i + 5)], "payments")
            await asyncio.sleep(0.002)

    task = asyncio.create_task(producer())
    last_id: str | None = None
    try:
        for _ in range(8):  # several short-lived connections, each resuming the last
            sse = await open_sse(client, "topic=orders&topic=payments&since=0", last_id)
            for _ in range(5):
                ev = await sse.next()
                if ev.data["op"] == "events":
                    received[ev.data["topic"]].extend(e["offset"] for e in ev.data["events"])
            last_id = sse.last_id
            sse.resp.close()
        await task
        sse = await open_sse(client, "topic=orders&topic=payments&since=0", last_id)
        rest = await sse.offsets_until({"orders": total, "payments": total // 2})
        for topic, offsets in rest.items():
            received[topic].extend(offsets)
    finally:
        task.cancel()
    assert received["orders"] == list(range(1, total + 1))
    assert received["payments"] == list(range(1, total // 2 + 1))


async def test_topics_missing_from_the_cursor_start_at_since(start: ClientFactory) -> None:
    client = await start(streams=TWO_STREAMS)
    await post(client, [{"n": i} for i in range(3)], "orders")
    await post(client, [{"n": i} for i in range(3)], "payments")
    sse = await open_sse(client, "topic=orders&topic=payments&since=1", last_event_id="orders:2")
    got = await sse.offsets_until({"orders": 3, "payments": 3})
    assert got == {"orders": [3], "payments": [2, 3]}


async def test_where_filters_every_topic_and_the_cursor_still_resumes(
    start: ClientFactory,
) -> None:
    client = await start()
    await post(client, [{"n": i} for i in range(6)])
    sse = await open_sse(client, "topic=events&since=0&where=n%20%25%202%20%3D%201")
    got = await sse.offsets_until({"events": 6})
    assert got == {"events": [2, 4, 6]}
    cursor = sse.last_id
    sse.resp.close()
    await post(client, [{"n": i} for i in range(6, 10)])
    sse = await open_sse(client, "topic=events&where=n%20%25%202%20%3D%201", cursor)
    assert await sse.offsets_until({"events": 10}) == {"events": [8, 10]}


async def test_a_stalled_reader_is_cut_off_and_others_still_get_everything(
    start: ClientFactory,
) -> None:
    client = await start(server={"max_queued_messages": 200})
    from rtis.server import HUB

    hub = client.app[HUB]
    # A raw client with a tiny receive buffer that never reads after the headers.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.write(b"GET /sse?topic=events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert b" 200 " in await reader.readuntil(b"\r\n\r\n")
    healthy = await open_sse(client, "topic=events")
    await healthy.next()
    assert hub.subscriber_count("events") == 2
    pad = "x" * 20_000  # enough to fill the kernel buffers of a loopback socket
    received: list[int] = []
    for _ in range(40):
        last = (await post(client, [{"pad": pad}] * 25))["last_offset"]
        received += (await healthy.offsets_until({"events": last}))["events"]
    assert received == list(range(1, 1001))
    deadline = time.monotonic() + 5
    while hub.subscriber_count("events") > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert hub.subscriber_count("events") == 1
    writer.transport.abort()


async def test_bad_requests_get_the_error_shape(start: ClientFactory) -> None:
    client = await start()
    cases = [
        ("/sse", 400, "bad_parameter"),
        ("/sse?topic=nope", 404, "unknown_topic"),
        ("/sse?topic=events&since=-1", 400, "bad_parameter"),
        ("/sse?topic=events&where=n%20%3D%3D%3D", 400, "bad_where"),
    ]
    for url, status, code in cases:
        resp = await client.get(url)
        assert resp.status == status, url
        assert (await resp.json())["error"]["code"] == code
    resp = await client.get("/sse?topic=events", headers={"Last-Event-ID": "garbage"})
    assert resp.status == 400
    assert "Last-Event-ID" in (await resp.json())["error"]["message"]


async def test_the_stream_ends_on_shutdown_and_unregisters(start: ClientFactory) -> None:
    client = await start()
    sse = await open_sse(client, "topic=events")
    await sse.next()
    from rtis.server import HUB, SSE

    app = client.server.app
    assert app is not None
    assert app[HUB].subscriber_count("events") == 1
    await app[SSE].close_all()
    with pytest.raises(EOFError):
        await sse.next()
    for _ in range(100):
        if app[HUB].subscriber_count("events") == 0:
            break
        await asyncio.sleep(0.01)
    assert app[HUB].subscriber_count("events") == 0


def test_the_queue_is_bounded_and_closes_once_over() -> None:
    cut: list[bool] = []

    async def run() -> None:
        stream = SseStream(max_queued=5, on_too_slow=lambda: cut.append(True))
        from rtis.ws import Subscription

        sub = Subscription(stream, "t", None)
        stream.subs[sub.topic_json] = sub
        stream.cursor["t"] = 0
        for n in range(1, 5):
            sub.last_sent = n
            stream.send_events(sub.topic_json, b'{"offset":%d}' % n, 1)
        assert not cut
        out = stream.next_event()  # four chunks of one topic coalesce into one event
        assert out.startswith(b"id: t:4\n") and out.count(b'"offset"') == 4
        for n in range(5, 12):
            sub.last_sent = n
            stream.send_events(sub.topic_json, b'{"offset":%d}' % n, 1)
        assert cut == [True] and stream.closing and not stream.pending()

    asyncio.run(run())
