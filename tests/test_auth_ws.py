"""Auth and limits on /ws: header or first-message auth, expiry, scopes, floods, origins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient

from rtis.http_auth import GUARD

from .conftest import ClientFactory
from .test_auth_http import (
    ADMIN,
    LIMITED,
    PUBLISHER,
    READER,
    SECRET,
    STREAMS,
    FakeClock,
    auth_section,
)


@pytest.fixture(autouse=True)
def jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTIS_TEST_JWT_SECRET", SECRET)


async def secured(start: ClientFactory, **server: Any) -> TestClient[Any, Any]:
    client = await start(streams=STREAMS, auth=auth_section(), server=server)
    client.app[GUARD].limiter.clock = FakeClock()
    return client


def token(ttl: float = 300, scope: str = "subscribe:orders", sub: str = "alice") -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl), "scope": scope}, SECRET, "HS256")


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> int | None:
    """Read until the server closes; return its close code."""
    return (await close_frame(ws, timeout))[0]


async def close_frame(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0
) -> tuple[int, str]:
    """Read until the server's close frame: (code, reason)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return msg.data, msg.extra
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
    raise AssertionError("the server did not close the connection")


async def subscribe(ws: aiohttp.ClientWebSocketResponse, topic: str, id: int = 1) -> dict[str, Any]:
    await ws.send_json({"op": "subscribe", "topic": topic, "id": id})
    return await recv(ws)


async def test_a_key_on_the_upgrade_authenticates_and_scopes_decide_topics(
    start: ClientFactory,
) -> None:
    client = await secured(start)
    ws = await client.ws_connect("/ws", headers={"Authorization": f"Bearer {READER}"})
    assert (await subscribe(ws, "orders"))["op"] == "subscribed"
    err = await subscribe(ws, "audit", id=2)
    assert err["op"] == "error" and err["code"] == "forbidden" and err["id"] == 2
    assert "subscribe:audit" in err["message"]
    assert await closed_with(ws) == 4403


async def test_wrong_credentials_on_the_upgrade_are_401(start: ClientFactory) -> None:
    client = await secured(start)
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await client.ws_connect("/ws", headers={"X-API-Key": "rtis_nope"})
    assert e.value.status == 401


async def test_a_first_auth_message_authenticates(start: ClientFactory) -> None:
    client = await secured(start)
    for credential in (READER, token()):
        ws = await client.ws_connect("/ws")
        await ws.send_json({"op": "auth", "token": credential, "id": 1})
        assert await recv(ws) == {"op": "authenticated", "id": 1}
        assert (await subscribe(ws, "orders"))["op"] == "subscribed"
        await ws.close()


async def test_commands_before_auth_close_with_4401(start: ClientFactory) -> None:
    client = await secured(start)
    ws = await client.ws_connect("/ws")
    err = await subscribe(ws, "orders")
    assert err["code"] == "unauthenticated" and "auth" in err["message"]
    assert await closed_with(ws) == 4401


async def test_a_bad_auth_message_closes_with_4401(start: ClientFactory) -> None:
    client = await secured(start)
    for bad in ("rtis_nope", token(ttl=-60), jwt.encode({"sub": "x"}, SECRET, "HS256")):
        ws = await client.ws_connect("/ws")
        await ws.send_json({"op": "auth", "token": bad})
        assert (await recv(ws))["code"] == "unauthenticated"
        assert await closed_with(ws) == 4401


async def test_no_auth_message_within_the_timeout_closes_with_4401(start: ClientFactory) -> None:
    client = await secured(start)  # ws_auth_timeout = 300ms
    ws = await client.ws_connect("/ws")
    assert await close_frame(ws) == (4401, "no auth message within 0.3 s")


async def test_an_expiring_token_closes_with_4401_unless_refreshed(start: ClientFactory) -> None:
    client = await secured(start)  # leeway 0
    stale = await client.ws_connect("/ws", headers={"Authorization": f"Bearer {token(ttl=1.5)}"})
    fresh = await client.ws_connect("/ws", headers={"Authorization": f"Bearer {token(ttl=1.5)}"})
    assert (await subscribe(stale, "orders"))["op"] == "subscribed"
    assert (await subscribe(fresh, "orders"))["op"] == "subscribed"
    await fresh.send_json({"op": "auth", "token": token(ttl=300), "id": 5})
    assert await recv(fresh) == {"op": "authenticated", "id": 5}
    assert await closed_with(stale) == 4401
    await fresh.send_json({"op": "ping", "id": 6})
    assert await recv(fresh) == {"op": "pong", "id": 6}  # still open past the first expiry


async def test_a_refresh_must_still_cover_held_subscriptions(start: ClientFactory) -> None:
    client = await secured(start)
    ws = await client.ws_connect("/ws", headers={"X-API-Key": READER})
    assert (await subscribe(ws, "orders"))["op"] == "subscribed"
    await ws.send_json({"op": "auth", "token": token(scope="subscribe:audit")})
    err = await recv(ws)
    assert err["code"] == "forbidden" and "subscribe:orders" in err["message"]
    assert await closed_with(ws) == 4403


async def test_a_flooding_client_is_closed_with_4429(start: ClientFactory) -> None:
    client = await secured(start)
    # burst 3 at 1/s (fake clock): the upgrade takes one, two frames the rest
    ws = await client.ws_connect("/ws", headers={"X-API-Key": LIMITED})
    for i in range(3):
        await ws.send_json({"op": "ping", "id": i})
    replies = [await recv(ws) for _ in range(3)]
    assert [r["op"] for r in replies] == ["pong", "pong", "error"]
    assert replies[-1]["code"] == "rate_limited" and replies[-1]["id"] == 2
    assert await closed_with(ws) == 4429


async def test_origins_are_checked_on_the_upgrade_with_or_without_auth(
    start: ClientFactory,
) -> None:
    client = await start(streams=STREAMS, server={"allowed_origins": ["https://app.example"]})
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await client.ws_connect("/ws", headers={"Origin": "https://evil.example"})
    assert e.value.status == 403
    for origin in ("https://app.example", f"http://{client.host}:{client.port}"):
        ws = await client.ws_connect("/ws", headers={"Origin": origin})
        assert (await subscribe(ws, "orders"))["op"] == "subscribed"
        await ws.close()
    ws = await client.ws_connect("/ws")  # no Origin: not a browser
    assert (await subscribe(ws, "orders"))["op"] == "subscribed"


async def test_without_auth_configured_ws_needs_no_auth(start: ClientFactory) -> None:
    client = await start(streams=STREAMS)
    ws = await client.ws_connect("/ws")
    assert (await subscribe(ws, "audit"))["op"] == "subscribed"
    await ws.send_json({"op": "auth", "token": "anything"})
    assert (await recv(ws))["op"] == "authenticated"


# -- limits -------------------------------------------------------------------------


async def test_connections_past_max_connections_are_refused_with_503(
    start: ClientFactory,
) -> None:
    client = await start(streams=STREAMS, server={"max_connections": 2})
    first = [await client.ws_connect("/ws") for _ in range(2)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await client.ws_connect("/ws")
    assert e.value.status == 503
    await first[0].close()
    for _ in range(50):  # the server sees the close shortly after
        await asyncio.sleep(0.02)
        try:
            third = await client.ws_connect("/ws")
        except aiohttp.WSServerHandshakeError:
            continue
        await third.close()
        break
    else:
        raise AssertionError("a freed connection slot was not reused")


async def test_subscriptions_past_max_subscriptions_are_an_error_frame(
    start: ClientFactory,
) -> None:
    client = await start(streams=STREAMS, server={"max_subscriptions": 1})
    ws = await client.ws_connect("/ws")
    assert (await subscribe(ws, "orders"))["op"] == "subscribed"
    err = await subscribe(ws, "audit", id=2)
    assert err["code"] == "too_many_subscriptions" and "at most 1" in err["message"]


async def test_a_frame_past_max_frame_bytes_closes_with_1009_saying_why(
    start: ClientFactory,
) -> None:
    client = await start(streams=STREAMS, server={"max_frame_bytes": 1024})
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "orders", "where": "a = '" + "x" * 2000 + "'"})
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1009
    assert msg.extra == "frame exceeds max_frame_bytes = 1024"


async def test_an_admin_key_may_not_subscribe_without_a_subscribe_scope(
    start: ClientFactory,
) -> None:
    client = await secured(start)
    ws = await client.ws_connect("/ws", headers={"X-API-Key": ADMIN})
    assert (await subscribe(ws, "orders"))["code"] == "forbidden"
    ws = await client.ws_connect("/ws", headers={"X-API-Key": PUBLISHER})
    assert (await subscribe(ws, "orders"))["code"] == "forbidden"
