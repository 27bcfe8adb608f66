"""The /ws protocol: subscribe, resume with since, live fan-out, errors, slow clients."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestClient

from .conftest import ClientFactory

JSON = {"Content-Type": "application/json"}


async def post(
    client: TestClient[Any, Any], events: list[dict[str, Any]], stream: str = "events"
) -> dict[str, Any]:
    resp = await client.post(f"/events/{stream}", data=orjson.dumps(events), headers=JSON)
    assert resp.status == 202, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def recv_offsets(
    ws: aiohttp.ClientWebSocketResponse, until: int, timeout: float = 10.0
) -> list[int]:
    """Collect event offsets from frames until offset ``until`` arrives."""
    offsets: list[int] = []
    deadline = time.monotonic() + timeout
    while not offsets or offsets[-1] < until:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        if frame["op"] == "events":
            offsets.extend(e["offset"] for e in frame["events"])
    return offsets


async def test_live_subscriber_receives_committed_events_in_message_form(
    start: ClientFactory,
) -> None:
    client = await start()
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "events", "id": 7})
    sub = await recv(ws)
    assert sub == {"op": "subscribed", "topic": "events", "offset": 0, "recovered": True, "id": 7}
    await post(client, [{"a": 1}, {"a": 2}])
    frame = await recv(ws)
    assert frame["op"] == "events" and frame["topic"] == "events"
    assert [e["offset"] for e in frame["events"]] == [1, 2]
    assert frame["events"][0]["data"] == {"a": 1}
    assert frame["events"][0]["time"].endswith("Z") and len(frame["events"][0]["time"]) == 24


async def test_since_replays_history_then_continues_live(start: ClientFactory) -> None:
    client = await start()
    await post(client, [{"n": i} for i in range(5)])
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "events", "since": 2})
    assert (await recv(ws))["recovered"] is True
    assert await recv_offsets(ws, 5) == [3, 4, 5]
    await post(client, [{"n": 5}])
    assert await recv_offsets(ws, 6) == [6]


async def test_since_0_replays_from_the_start(start: ClientFactory) -> None:
    client = await start()
    await post(client, [{"n": i} for i in range(3)])
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "events", "since": 0})
    await recv(ws)
    assert await recv_offsets(ws, 3) == [1, 2, 3]


async def test_recovered_is_false_when_history_is_no_longer_retained(start: ClientFactory) -> None:
    client = await start()
    await post(client, [{"n": i} for i in range(5)])
    from rtis.server import STORE

    store = client.app[STORE]
    # Simulate retention having purged offsets 1..3.
    await store.write(lambda txn: txn.conn.execute("DELETE FROM messages WHERE offset <= 3"))
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "events", "since": 1})
    sub = await recv(ws)
    assert sub["recovered"] is False
    assert await recv_offsets(ws, 5) == [4, 5]


async def test_subscribing_with_since_while_events_keep_arriving_gets_each_offset_once_in_order(
    start: ClientFactory,
) -> None:
    client = await start()
    await post(client, [{"n": i} for i in range(200)])
    stop = asyncio.Event()
    total = 200

    async def producer() -> None:
        nonlocal total
        while not stop.is_set() and total < 3000:
            n = 1 + total % 7
            result = await post(client, [{"n": total + k} for k in range(n)])
            total = result["last_offset"]
            await asyncio.sleep(0)

    task = asyncio.create_task(producer())
    await asyncio.sleep(0.05)
    clients = []
    for since in (0, 50, 150):
        ws = await client.ws_connect("/ws")
        await ws.send_json({"op": "subscribe", "topic": "events", "since": since})
        clients.append((since, ws))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    stop.set()
    await task
    for since, ws in clients:
        assert (await recv(ws))["op"] == "subscribed"
        offsets = await recv_offsets(ws, total)
        assert offsets == list(range(since + 1, total + 1))


async def test_where_filters_messages_per_subscriber(start: ClientFactory) -> None:
    client = await start()
    ws_eu = await client.ws_connect("/ws")
    ws_all = await client.ws_connect("/ws")
    await ws_eu.send_json({"op": "subscribe", "topic": "events", "where": "region = 'eu'"})
    await ws_all.send_json({"op": "subscribe", "topic": "events"})
    await recv(ws_eu)
    await recv(ws_all)
    await post(client, [{"region": "eu"}, {"region": "us"}, {"region": "eu"}])
    assert await recv_offsets(ws_all, 3) == [1, 2, 3]
    assert await recv_offsets(ws_eu, 3) == [1, 3]


async def test_unknown_topic_bad_where_and_duplicate_subscribe_are_error_frames(
    start: ClientFactory,
) -> None:
    client = await start()
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "nope", "id": 1})
    err = await recv(ws)
    assert err["op"] == "error" and err["code"] == "unknown_topic" and err["id"] == 1
    await ws.send_json({"op": "subscribe", "topic": "events", "where": "a = = 1", "id": 2})
    assert (await recv(ws))["code"] == "bad_where"
    await ws.send_json({"op": "subscribe", "topic": "events", "id": 3})
    assert (await recv(ws))["op"] == "subscribed"
    await ws.send_json({"op": "subscribe", "topic": "events", "id": 4})
    assert (await recv(ws))["code"] == "already_subscribed"
    await ws.send_json({"op": "ping", "id": 5})
    assert await recv(ws) == {"op": "pong", "id": 5}


async def test_unsubscribe_stops_delivery(start: ClientFactory) -> None:
    client = await start()
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "events"})
    await recv(ws)
    await ws.send_json({"op": "unsubscribe", "topic": "events", "id": 2})
    assert await recv(ws) == {"op": "unsubscribed", "topic": "events", "id": 2}
    await post(client, [{"a": 1}])
    await ws.send_json({"op": "ping"})
    assert await recv(ws) == {"op": "pong"}  # no events frame came before the pong


async def test_malformed_frame_closes_with_4400_after_an_error_frame(start: ClientFactory) -> None:
    client = await start()
    ws = await client.ws_connect("/ws")
    await ws.send_str("{not json")
    err = await recv(ws)
    assert err["op"] == "error" and err["code"] == "bad_message"
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4400


class RawStalledClient:
    """A WebSocket client that subscribes and then never reads again.

    asyncio stops reading the socket once its small buffer is full, so the
    kernel buffers fill and the server's writes back up, as with a real
    client that has stopped reading."""

    async def connect(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=1024)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert b" 101 " in head

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81, 0x80 | len(payload)]) + mask
        self.writer.write(header + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def close(self) -> None:
        self.writer.transport.abort()


async def test_a_stalled_reader_is_closed_with_4408_and_others_still_get_messages_promptly(
    start: ClientFactory,
) -> None:
    client = await start(server={"max_queued_messages": 200})
    stalled = RawStalledClient()
    await stalled.connect(client.port)  # type: ignore[arg-type]
    stalled.send_text('{"op":"subscribe","topic":"events"}')
    from rtis.server import HUB

    hub = client.app[HUB]
    while hub.subscriber_count("events") < 1:
        await asyncio.sleep(0.01)
    [stalled_conn] = hub.connections
    healthy = await client.ws_connect("/ws")
    await healthy.send_json({"op": "subscribe", "topic": "events"})
    await recv(healthy)
    assert hub.subscriber_count("events") == 2
    pad = "x" * 20_000  # enough to fill the kernel buffers of a loopback socket
    last = 0
    latencies = []
    for _ in range(40):
        t0 = time.monotonic()
        last = (await post(client, [{"pad": pad}] * 25))["last_offset"]
        got = await recv_offsets(healthy, last)
        assert got[-1] == last
        latencies.append(time.monotonic() - t0)
    # The stalled client was cut off, not buffered forever ...
    deadline = time.monotonic() + 5
    while hub.subscriber_count("events") > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert hub.subscriber_count("events") == 1
    assert stalled_conn.close_code == 4408
    assert stalled_conn not in hub.connections
    # ... and the healthy one never waited on it.
    assert max(latencies) < 2.0
    stalled.close()
