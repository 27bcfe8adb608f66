"""Auth over HTTP: credentials, scopes per route, rate limits, CORS; a rejection stores nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rtis.auth import hash_key
from rtis.http_auth import GUARD

from .conftest import ClientFactory, stored
from .test_http_ingest import assert_error_shape

JSON = {"Content-Type": "application/json"}
SECRET = "hs256-secret-for-tests-0123456789abcdef"
PUBLISHER = "rtis_publisher_key_for_tests_0000000000000000"
READER = "rtis_reader_key_for_tests_00000000000000000000"
ADMIN = "rtis_admin_key_for_tests_000000000000000000000"
LIMITED = "rtis_limited_key_for_tests_0000000000000000000"
ALL_SECRETS = (SECRET, PUBLISHER, READER, ADMIN, LIMITED)

STREAMS = {"orders": {"dedupe_key": "id", "on_invalid": "dead_letter"}, "audit": {}}
QUERIES = {"big": {"sql": "SELECT id, amount FROM orders WHERE amount > 100"}}


def auth_section(jwks_file: Path | None = None, **jwt_extra: Any) -> dict[str, Any]:
    jwt_table: dict[str, Any] = {"secret_env": "RTIS_TEST_JWT_SECRET", "leeway": 0, **jwt_extra}
    if jwks_file is not None:
        jwt_table["jwks_file"] = str(jwks_file)
    return {
        "ws_auth_timeout": "300ms",
        "keys": {
            "publisher": {"hash": hash_key(PUBLISHER), "scopes": ["publish:orders"]},
            "reader": {"hash": hash_key(READER), "scopes": ["read:orders", "subscribe:orders"]},
            "admin": {"hash": hash_key(ADMIN), "scopes": ["admin"]},
            "limited": {
                "hash": hash_key(LIMITED),
                "scopes": ["publish:*", "read:*", "subscribe:*"],
                "rate": 1,
                "burst": 3,
            },
        },
        "jwt": jwt_table,
    }


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}", **JSON}


def token(**claims: Any) -> str:
    body = {"sub": "alice", "exp": int(time.time()) + 300, "scope": "publish:orders", **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, "HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTIS_TEST_JWT_SECRET", SECRET)


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_private: rsa.RSAPrivateKey) -> Path:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_private.public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "main"}]}))
    return path


async def secured(start: ClientFactory, **server: Any) -> TestClient[Any, Any]:
    client = await start(streams=STREAMS, queries=QUERIES, auth=auth_section(), server=server)
    client.app[GUARD].limiter.clock = FakeClock()
    return client


async def post(
    client: TestClient[Any, Any], headers: dict[str, str], body: Any = None, stream: str = "orders"
) -> tuple[int, dict[str, Any], Any]:
    data = orjson.dumps(body if body is not None else {"id": 1, "amount": 5})
    resp = await client.post(f"/events/{stream}", data=data, headers=headers)
    return resp.status, await resp.json(), resp.headers


# -- credentials --------------------------------------------------------------------


async def test_without_auth_configured_every_route_stays_open(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=STREAMS)
    status, _, _ = await post(client, JSON)
    assert status == 202
    assert (await client.get("/api/topics/orders/messages")).status == 200
    assert (await client.get("/api/dead-letters")).status == 200


async def test_publishing_without_or_with_wrong_credentials_is_401_and_stores_nothing(
    start: ClientFactory, db_path: Path
) -> None:
    client = await secured(start)
    for headers in (
        JSON,
        bearer("rtis_not_a_key"),
        {"X-API-Key": "rtis_not_a_key", **JSON},
        {"Authorization": f"Basic {b64(PUBLISHER.encode())}", **JSON},
        bearer(""),
    ):
        status, body, resp_headers = await post(client, headers)
        assert status == 401, headers
        assert_error_shape(body, 401, "unauthenticated")
        assert resp_headers["WWW-Authenticate"] == 'Bearer realm="rtis"'
    assert stored(db_path, "orders") == []


async def test_a_key_is_accepted_as_bearer_or_x_api_key(
    start: ClientFactory, db_path: Path
) -> None:
    client = await secured(start)
    assert (await post(client, bearer(PUBLISHER), {"id": 1, "amount": 5}))[0] == 202
    assert (await post(client, {"X-API-Key": PUBLISHER, **JSON}, {"id": 2, "amount": 5}))[0] == 202
    assert [d["id"] for _, d in stored(db_path, "orders")] == [1, 2]


async def test_a_key_without_the_publish_scope_is_403_and_stores_nothing(
    start: ClientFactory, db_path: Path
) -> None:
    client = await secured(start)
    for credential, stream in ((READER, "orders"), (ADMIN, "orders"), (PUBLISHER, "audit")):
        status, body, _ = await post(client, bearer(credential), stream=stream)
        assert status == 403
        assert_error_shape(body, 403, "forbidden")
        assert f"publish:{stream}" in body["error"]["message"]
    assert stored(db_path, "orders") == [] and stored(db_path, "audit") == []


async def test_a_valid_jwt_publishes(start: ClientFactory, db_path: Path) -> None:
    client = await secured(start)
    status, body, _ = await post(client, bearer(token()))
    assert status == 202, body
    assert len(stored(db_path, "orders")) == 1


async def test_forged_expired_and_misaddressed_tokens_are_401_and_store_nothing(
    start: ClientFactory, db_path: Path, jwks_file: Path, rsa_private: rsa.RSAPrivateKey
) -> None:
    client = await start(
        streams=STREAMS,
        auth=auth_section(jwks_file, issuer="https://idp.example", audience="rtis"),
    )
    good = {"iss": "https://idp.example", "aud": "rtis"}
    head = b64(b'{"alg":"none","typ":"JWT"}')
    payload = b64(orjson.dumps({**good, "sub": "eve", "exp": time.time() + 99, "scope": "*"}))
    pem = rsa_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_head = b64(b'{"alg":"HS256","typ":"JWT","kid":"main"}')
    confused_sig = hmac.new(pem, f"{hs_head}.{payload}".encode(), hashlib.sha256).digest()
    bad_tokens = {
        "forged": jwt.encode({**good, "sub": "eve", "exp": time.time() + 99}, "x" * 40, "HS256"),
        "expired": token(**good, exp=int(time.time()) - 10),
        "no exp": token(**good, exp=None),
        "wrong audience": token(iss="https://idp.example", aud="someone-else"),
        "wrong issuer": token(iss="https://evil.example", aud="rtis"),
        "alg none": f"{head}.{payload}.",
        "HS/RS confusion": f"{hs_head}.{payload}.{b64(confused_sig)}",
        "RS384": jwt.encode(
            {**good, "sub": "eve", "exp": int(time.time()) + 99, "scope": "publish:orders"},
            rsa_private,
            "RS384",
            headers={"kid": "main"},
        ),
    }
    for name, bad in bad_tokens.items():
        status, body, _ = await post(client, bearer(bad))
        assert status == 401, name
        assert_error_shape(body, 401, "unauthenticated")
        assert bad not in body["error"]["message"]
    assert stored(db_path, "orders") == []
    # The same RSA key signing RS256 properly is accepted.
    ok = jwt.encode(
        {**good, "sub": "bob", "exp": int(time.time()) + 99, "scope": "publish:orders"},
        rsa_private,
        "RS256",
        headers={"kid": "main"},
    )
    assert (await post(client, bearer(ok)))[0] == 202


# -- scopes on reads ------------------------------------------------------------------


async def test_reads_need_read_scopes_and_health_stays_open(
    start: ClientFactory, db_path: Path
) -> None:
    client = await secured(start)
    assert (await post(client, bearer(PUBLISHER), {"id": 1, "amount": 500}))[0] == 202

    async def get(path: str, credential: str | None) -> int:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        return (await client.get(path, headers=headers)).status

    assert await get("/health", None) == 200
    assert await get("/ready", None) == 200
    messages = "/api/topics/orders/messages?since=0"
    assert await get(messages, None) == 401
    assert await get(messages, PUBLISHER) == 403
    assert await get(messages, READER) == 200
    assert await get("/api/topics/audit/messages", READER) == 403
    assert await get("/api/queries/big/rows", READER) == 403
    assert await get("/api/queries/big/rows", LIMITED) == 200
    assert await get("/api/dead-letters", None) == 401
    assert await get("/api/dead-letters", READER) == 403  # all of them: admin only
    assert await get("/api/dead-letters?stream=orders", READER) == 200
    assert await get("/api/dead-letters?stream=audit", READER) == 403
    assert await get("/api/dead-letters", ADMIN) == 200
    assert await get("/api/topics/orders/messages", ADMIN) == 403  # admin is not read
    assert await get("/no/such/route", READER) == 404


async def test_the_topic_list_shows_only_topics_the_caller_may_see(start: ClientFactory) -> None:
    client = await secured(start)
    resp = await client.get("/api/topics", headers={"X-API-Key": READER})
    assert [t["name"] for t in (await resp.json())["topics"]] == ["orders"]
    resp = await client.get("/api/topics", headers={"X-API-Key": LIMITED})
    assert {t["name"] for t in (await resp.json())["topics"]} == {"orders", "audit", "big"}
    assert (await client.get("/api/topics")).status == 401


async def test_with_auth_on_unknown_names_are_not_answered_with_the_list_of_topics(
    start: ClientFactory,
) -> None:
    client = await secured(start)
    headers = bearer(token(scope="publish:* subscribe:*"))
    status, body, _ = await post(client, headers, stream="orderz")
    assert status == 404
    assert "audit" not in body["error"]["message"] and "orders" not in body["error"]["message"]
    resp = await client.get("/sse?topic=orderz", headers=headers)
    assert resp.status == 404
    assert "audit" not in (await resp.json())["error"]["message"]
    ws = await client.ws_connect("/ws", headers=headers)
    await ws.send_json({"op": "subscribe", "topic": "orderz"})
    frame = await ws.receive_json(timeout=5)
    assert frame["code"] == "unknown_topic" and "audit" not in frame["message"]
    await ws.close()


async def test_a_route_with_no_rule_needs_admin(start: ClientFactory) -> None:
    from aiohttp import web

    from rtis.config import config_from_dict
    from rtis.server import create_app

    async def secret_route(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    config = config_from_dict({"streams": STREAMS, "auth": auth_section()})
    app = create_app(config)
    app.router.add_get("/internal/thing", secret_route)
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/internal/thing", headers={"X-API-Key": READER})).status == 403
        assert (await client.get("/internal/thing", headers={"X-API-Key": ADMIN})).status == 200


async def test_sse_needs_subscribe_scopes_for_every_topic(start: ClientFactory) -> None:
    client = await secured(start)
    assert (await client.get("/sse?topic=orders")).status == 401
    resp = await client.get("/sse?topic=orders&topic=audit", headers={"X-API-Key": READER})
    assert resp.status == 403
    assert "subscribe:audit" in (await resp.json())["error"]["message"]
    resp = await client.get("/sse?topic=orders", headers={"X-API-Key": READER})
    assert resp.status == 200
    resp.close()


# -- rate limits ------------------------------------------------------------------


async def test_over_the_rate_limit_is_429_with_retry_after_and_stores_nothing(
    start: ClientFactory, db_path: Path
) -> None:
    client = await secured(start)
    clock = client.app[GUARD].limiter.clock
    assert isinstance(clock, FakeClock)
    for i in range(3):
        status, _, headers = await post(client, bearer(LIMITED), {"id": i, "amount": 1})
        assert status == 202
        assert headers["RateLimit-Limit"] == "3"
        assert headers["RateLimit-Remaining"] == str(2 - i)
    status, body, headers = await post(client, bearer(LIMITED), {"id": 9, "amount": 1})
    assert status == 429
    assert_error_shape(body, 429, "rate_limited")
    assert headers["Retry-After"] == "1"
    assert headers["RateLimit-Remaining"] == "0" and headers["RateLimit-Reset"] == "3"
    assert [d["id"] for _, d in stored(db_path, "orders")] == [0, 1, 2]
    clock.now += 2  # two tokens back: a batch of two passes, a batch of three does not
    many = [{"id": 10 + i, "amount": 1} for i in range(3)]
    assert (await post(client, bearer(LIMITED), many))[0] == 429
    clock.now += 2
    assert (await post(client, bearer(LIMITED), many[:2]))[0] == 202
    assert [d["id"] for _, d in stored(db_path, "orders")] == [0, 1, 2, 10, 11]


async def test_a_batch_larger_than_the_burst_is_413_and_stores_nothing(
    start: ClientFactory, db_path: Path
) -> None:
    client = await secured(start)
    many = [{"id": i, "amount": 1} for i in range(4)]
    status, body, _ = await post(client, bearer(LIMITED), many)
    assert status == 413
    assert_error_shape(body, 413, "batch_exceeds_burst")
    assert "burst of 3" in body["error"]["message"]
    assert stored(db_path, "orders") == []


async def test_rate_limits_are_per_key(start: ClientFactory) -> None:
    client = await secured(start)
    for _ in range(3):
        await client.get("/api/topics", headers={"X-API-Key": LIMITED})
    assert (await client.get("/api/topics", headers={"X-API-Key": LIMITED})).status == 429
    assert (await client.get("/api/topics", headers={"X-API-Key": READER})).status == 200


# -- browsers ---------------------------------------------------------------------


async def test_cors_preflight_and_headers_for_allowed_origins_only(
    start: ClientFactory, db_path: Path
) -> None:
    app_origin = "https://app.example"
    client = await start(
        streams=STREAMS, auth=auth_section(), server={"allowed_origins": [app_origin]}
    )
    preflight = {
        "Origin": app_origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    resp = await client.options("/events/orders", headers=preflight)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == app_origin
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    evil = {**preflight, "Origin": "https://evil.example"}
    resp = await client.options("/events/orders", headers=evil)
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers

    # The real request: allowed origins get CORS headers, on errors too.
    status, _, headers = await post(client, {**bearer(PUBLISHER), "Origin": app_origin})
    assert status == 202
    assert headers["Access-Control-Allow-Origin"] == app_origin
    assert "Origin" in headers["Vary"]
    assert "RateLimit-Remaining" in headers["Access-Control-Expose-Headers"]
    status, _, headers = await post(client, {**JSON, "Origin": app_origin})
    assert status == 401 and headers["Access-Control-Allow-Origin"] == app_origin
    # A page on another origin is refused even with a valid key (its request stores nothing).
    status, body, headers = await post(
        client, {**bearer(PUBLISHER), "Origin": "https://evil.example"}, {"id": 2, "amount": 1}
    )
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in headers
    assert len(stored(db_path, "orders")) == 1


async def test_without_auth_a_foreign_origin_still_cannot_publish(
    start: ClientFactory, db_path: Path
) -> None:
    """With no [auth], a web page the user visits must not reach the loopback server."""
    client = await start(streams=STREAMS)
    status, _, _ = await post(client, {**JSON, "Origin": "http://evil.example"})
    assert status == 403
    host = f"http://{client.host}:{client.port}"
    assert (await post(client, {**JSON, "Origin": host}))[0] == 202  # same origin
    assert len(stored(db_path, "orders")) == 1


# -- secrets never reach logs or errors ------------------------------------------------


async def test_keys_tokens_and_secrets_never_reach_logs_or_responses(
    start: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await secured(start)
    expired = token(exp=int(time.time()) - 100)
    wrong = "rtis_wrong_key_that_must_not_be_logged_0000000"
    credentials = [PUBLISHER, READER, ADMIN, LIMITED, token(), expired, wrong]
    bodies: list[str] = []
    for credential in credentials:
        for path in ("/events/orders", "/events/audit"):
            resp = await client.post(path, data=b'{"id": 1}', headers=bearer(credential))
            bodies.append(await resp.text())
            resp = await client.post(path, data=b"{bad json", headers=bearer(credential))
            bodies.append(await resp.text())
        resp = await client.get("/api/dead-letters", headers={"X-API-Key": credential})
        bodies.append(await resp.text())
        ws = await client.ws_connect("/ws")
        await ws.send_json({"op": "auth", "token": credential})
        bodies.append(str(await ws.receive(timeout=5)))
        await ws.close()
    for _ in range(5):  # rate-limited answers too
        resp = await client.get("/api/topics", headers={"X-API-Key": LIMITED})
        bodies.append(await resp.text())
    text = caplog.text + "\n".join(bodies)
    assert "rate_limited" in text and "unauthenticated" in text and "forbidden" in text
    for secret in (*ALL_SECRETS, *credentials):
        assert secret not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text
        for part in secret.split("."):  # no JWT segment (header, claims, signature) either
            assert len(part) < 16 or part not in text
