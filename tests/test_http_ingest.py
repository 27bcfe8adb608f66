"""POST /events/{stream} over HTTP, asserting what is really stored in SQLite."""

from __future__ import annotations

import asyncio
import gzip
import threading
from pathlib import Path
from typing import Any

import orjson

from .conftest import ClientFactory, dead_letters, stored

JSON = {"Content-Type": "application/json"}
ORDERS = {
    "orders": {
        "dedupe_key": "id",
        "time_field": "ts",
        "schema": {
            "type": "object",
            "required": ["id", "amount"],
            "properties": {"amount": {"type": "number"}},
        },
    }
}


def assert_error_shape(body: dict[str, Any], status: int, code: str) -> None:
    assert set(body) == {"error"}
    err = body["error"]
    assert err["status"] == status
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    assert set(err) <= {"status", "code", "message", "details"}


async def test_one_object_is_stored_at_offset_1_and_acknowledged_with_offsets(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start()
    resp = await client.post("/events/events", data=b'{"a": 1}', headers=JSON)
    assert resp.status == 202
    assert await resp.json() == {
        "accepted": 1,
        "duplicates": 0,
        "first_offset": 1,
        "last_offset": 1,
    }
    assert stored(db_path) == [(1, {"a": 1})]


async def test_array_events_get_consecutive_offsets_in_request_order(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start()
    await client.post("/events/events", data=b'{"n": 0}', headers=JSON)
    body = orjson.dumps([{"n": i} for i in range(1, 6)])
    resp = await client.post("/events/events", data=body, headers=JSON)
    assert await resp.json() == {
        "accepted": 5,
        "duplicates": 0,
        "first_offset": 2,
        "last_offset": 6,
    }
    assert stored(db_path) == [(i + 1, {"n": i}) for i in range(6)]


async def test_ndjson_and_gzip_bodies_are_stored(start: ClientFactory, db_path: Path) -> None:
    client = await start()
    ndjson = b'{"n": 1}\n\n{"n": 2}\n'
    resp = await client.post(
        "/events/events",
        data=gzip.compress(ndjson),
        headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
    )
    assert resp.status == 202
    assert stored(db_path) == [(1, {"n": 1}), (2, {"n": 2})]


async def test_cloudevents_structured_batch_and_binary_are_kept_in_structured_form(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start()
    ce = {"specversion": "1.0", "id": "1", "source": "/farm", "type": "harvest", "data": {"kg": 3}}
    r1 = await client.post(
        "/events/events",
        data=orjson.dumps(ce),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    ce2 = {**ce, "id": "2"}
    r2 = await client.post(
        "/events/events",
        data=orjson.dumps([ce2, ce]),  # ce again: a duplicate by id + source
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    r3 = await client.post(
        "/events/events",
        data=b'{"kg": 9}',
        headers={
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "3",
            "ce-source": "/farm",
            "ce-type": "harvest",
            "ce-time": "2026-12-03T10:00:00Z",
        },
    )
    assert [r.status for r in (r1, r2, r3)] == [202, 202, 202]
    assert (await r2.json())["duplicates"] == 1
    rows = stored(db_path)
    assert [o for o, _ in rows] == [1, 2, 3]
    assert rows[0][1]["data"] == {"kg": 3} and rows[0][1]["type"] == "harvest"
    assert rows[2][1]["data"] == {"kg": 9} and rows[2][1]["id"] == "3"


async def test_422_lists_every_invalid_event_and_stores_nothing(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS)
    body = orjson.dumps(
        [
            {"id": 1, "amount": 5, "ts": 1_700_000_000},
            {"id": 2, "amount": "five", "ts": 1_700_000_000},
            {"amount": 7, "ts": 1_700_000_000},
        ]
    )
    resp = await client.post("/events/orders", data=body, headers=JSON)
    assert resp.status == 422
    payload = await resp.json()
    assert_error_shape(payload, 422, "invalid_events")
    assert payload["error"]["message"].startswith("2 of 3 events are invalid")
    details = payload["error"]["details"]
    assert [d["index"] for d in details] == [1, 2]
    assert details[0]["path"] == "$.amount"
    assert stored(db_path, "orders") == []
    assert dead_letters(db_path) == []


async def test_dead_letter_mode_stores_valid_events_and_keeps_invalid_with_reason(
    start: ClientFactory, db_path: Path
) -> None:
    streams = {"orders": {**ORDERS["orders"], "on_invalid": "dead_letter"}}
    client = await start(streams=streams)
    body = orjson.dumps(
        [
            {"id": 1, "amount": 5, "ts": 1},
            {"id": 2, "amount": "x", "ts": 1},
            {"id": 3, "amount": 6, "ts": 1},
        ]
    )
    resp = await client.post("/events/orders", data=body, headers=JSON)
    assert resp.status == 202
    assert await resp.json() == {
        "accepted": 2,
        "duplicates": 0,
        "first_offset": 1,
        "last_offset": 2,
    }
    assert [d["id"] for _, d in stored(db_path, "orders")] == [1, 3]
    [(stream, query, reason, data)] = dead_letters(db_path)
    assert stream == "orders" and query is None
    assert data == {"id": 2, "amount": "x", "ts": 1}
    assert "number" in reason


async def test_dedupe_key_acknowledges_duplicates_without_storing_them(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(streams=ORDERS)
    ev = {"id": "a", "amount": 1, "ts": 1}
    r1 = await client.post("/events/orders", data=orjson.dumps([ev, ev]), headers=JSON)
    assert await r1.json() == {"accepted": 1, "duplicates": 1, "first_offset": 1, "last_offset": 1}
    r2 = await client.post("/events/orders", data=orjson.dumps(ev), headers=JSON)
    assert await r2.json() == {
        "accepted": 0,
        "duplicates": 1,
        "first_offset": None,
        "last_offset": None,
    }
    assert len(stored(db_path, "orders")) == 1


async def test_dedupe_survives_a_restart_of_the_app(start: ClientFactory, db_path: Path) -> None:
    ev = orjson.dumps({"id": "k1", "amount": 1, "ts": 1})
    client = await start(streams=ORDERS)
    assert (await (await client.post("/events/orders", data=ev, headers=JSON)).json())[
        "accepted"
    ] == 1
    await client.close()
    client = await start(streams=ORDERS)
    resp = await client.post("/events/orders", data=ev, headers=JSON)
    assert (await resp.json())["duplicates"] == 1
    again = await client.post(
        "/events/orders", data=orjson.dumps({"id": "k2", "amount": 1, "ts": 1}), headers=JSON
    )
    assert (await again.json())["first_offset"] == 2  # offsets continue after the restart
    assert [o for o, _ in stored(db_path, "orders")] == [1, 2]


async def test_malformed_json_is_400_saying_where(start: ClientFactory, db_path: Path) -> None:
    client = await start()
    resp = await client.post("/events/events", data=b'{"a": 1,\n "b": }', headers=JSON)
    assert resp.status == 400
    payload = await resp.json()
    assert_error_shape(payload, 400, payload["error"]["code"])
    assert "line 2" in payload["error"]["message"]
    assert stored(db_path) == []


async def test_unknown_stream_is_404(start: ClientFactory) -> None:
    client = await start()
    resp = await client.post("/events/nope", data=b"{}", headers=JSON)
    assert resp.status == 404
    assert_error_shape(await resp.json(), 404, "unknown_stream")


async def test_unknown_route_and_wrong_method_use_the_error_shape(start: ClientFactory) -> None:
    client = await start()
    r404 = await client.get("/no/such/route")
    assert_error_shape(await r404.json(), 404, "not_found")
    r405 = await client.get("/events/events")
    assert r405.status == 405
    assert_error_shape(await r405.json(), 405, "method_not_allowed")


async def test_body_over_max_body_bytes_is_413_and_stores_nothing(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(server={"max_body_bytes": 1000})
    body = orjson.dumps([{"pad": "x" * 100}] * 20)
    resp = await client.post("/events/events", data=body, headers=JSON)
    assert resp.status == 413
    assert_error_shape(await resp.json(), 413, "too_large")
    assert stored(db_path) == []


async def test_batch_over_max_batch_events_is_413_naming_the_limit(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(server={"max_batch_events": 3})
    resp = await client.post("/events/events", data=orjson.dumps([{}] * 4), headers=JSON)
    assert resp.status == 413
    payload = await resp.json()
    assert "max_batch_events = 3" in payload["error"]["message"]
    assert stored(db_path) == []


async def test_unsupported_content_type_is_415(start: ClientFactory) -> None:
    client = await start()
    resp = await client.post("/events/events", data=b"a,b", headers={"Content-Type": "text/csv"})
    assert resp.status == 415
    assert_error_shape(await resp.json(), 415, "unsupported_media_type")


async def test_past_max_pending_events_ingest_answers_503_with_retry_after(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start(server={"max_pending_events": 5})
    store = client.app[__import__("rtis.server", fromlist=["STORE"]).STORE]
    release = threading.Event()
    # Hold the writer thread so that submitted events stay pending.
    blocker = asyncio.ensure_future(store.write(lambda txn: release.wait(10)))
    await asyncio.sleep(0.05)
    first = asyncio.ensure_future(
        client.post("/events/events", data=orjson.dumps([{}] * 4), headers=JSON)
    )
    await asyncio.sleep(0.05)
    resp = await client.post("/events/events", data=orjson.dumps([{}] * 3), headers=JSON)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert_error_shape(await resp.json(), 503, "overloaded")
    release.set()
    await blocker
    assert (await first).status == 202
    assert [o for o, _ in stored(db_path)] == [1, 2, 3, 4]


async def test_concurrent_requests_share_commits_and_get_gap_free_offsets(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start()
    from rtis.server import STORE

    store = client.app[STORE]
    before = store.commits

    async def post(i: int) -> dict[str, Any]:
        resp = await client.post("/events/events", data=orjson.dumps([{"i": i}] * 3), headers=JSON)
        assert resp.status == 202
        result: dict[str, Any] = await resp.json()
        return result

    results = await asyncio.gather(*(post(i) for i in range(60)))
    ranges = sorted((r["first_offset"], r["last_offset"]) for r in results)
    assert ranges == [(1 + 3 * k, 3 + 3 * k) for k in range(60)]
    assert store.commits - before < 60  # group commit: fewer transactions than requests
    rows = stored(db_path)
    assert [o for o, _ in rows] == list(range(1, 181))
    for r in results:  # each request's events are consecutive and in order
        span = [d["i"] for o, d in rows if r["first_offset"] <= o <= r["last_offset"]]
        assert len(set(span)) == 1


async def test_empty_array_is_accepted_with_null_offsets(
    start: ClientFactory, db_path: Path
) -> None:
    client = await start()
    resp = await client.post("/events/events", data=b"[]", headers=JSON)
    assert resp.status == 202
    assert await resp.json() == {
        "accepted": 0,
        "duplicates": 0,
        "first_offset": None,
        "last_offset": None,
    }
    assert stored(db_path) == []
