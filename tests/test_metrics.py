"""GET /metrics: Prometheus text with ingest, store, query, WebSocket and HTTP figures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from rtis.server import create_app

from .conftest import ClientFactory, make_config

JSON = {"Content-Type": "application/json"}
STREAMS = {"orders": {"dedupe_key": "id", "schema": {"type": "object", "required": ["id"]}}}


async def scrape(
    client: TestClient[Any, Any],
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_ingest_outcomes_are_counted_per_stream_and_rejections_by_code(
    start: ClientFactory,
) -> None:
    client = await start(streams=STREAMS)
    body = orjson.dumps([{"id": 1}, {"id": 2}, {"id": 1}])
    assert (await client.post("/events/orders", data=body, headers=JSON)).status == 202
    assert (await client.post("/events/orders", data=b"[{", headers=JSON)).status == 400
    bad = orjson.dumps([{"nope": 1}])
    assert (await client.post("/events/orders", data=bad, headers=JSON)).status == 422
    assert (await client.post("/events/no_such_stream", data=body, headers=JSON)).status == 404
    m = await scrape(client)
    assert value(m, "rtis_events_accepted_total", stream="orders") == 2
    assert value(m, "rtis_events_duplicate_total", stream="orders") == 1
    rejected = "rtis_ingest_rejected_requests_total"
    assert value(m, rejected, stream="orders", code="malformed_body") == 1
    assert value(m, rejected, stream="orders", code="invalid_events") == 1
    # an unknown stream name never becomes a label (the label set stays bounded)
    assert not [k for k in m if ("stream", "no_such_stream") in k[1]]


async def test_http_requests_are_counted_by_route_template_and_status(
    start: ClientFactory,
) -> None:
    client = await start()
    for since in (0, 1, 2):
        await client.get(f"/api/topics/events/messages?since={since}")
    await client.get("/api/topics/nope/messages")
    await client.get("/no/such/path")
    m = await scrape(client)
    name = "rtis_http_requests_total"
    route = "/api/topics/{topic}/messages"
    assert value(m, name, method="GET", route=route, status="200") == 3
    assert value(m, name, method="GET", route=route, status="404") == 1
    assert value(m, name, method="GET", route="(unmatched)", status="404") == 1
    assert not [k for k in m if ("route", "/api/topics/events/messages") in k[1]]


async def test_commit_latency_and_batch_size_are_histograms(start: ClientFactory) -> None:
    client = await start()
    for i in range(3):
        body = orjson.dumps([{"n": i}] * 10)
        assert (await client.post("/events/events", data=body, headers=JSON)).status == 202
    m = await scrape(client)
    commits = value(m, "rtis_store_commits_total")
    assert commits >= 3
    assert value(m, "rtis_commit_seconds_count") == commits
    assert value(m, "rtis_commit_seconds_sum") > 0
    assert value(m, "rtis_commit_events_count") == commits
    assert value(m, "rtis_commit_events_sum") >= 30
    assert value(m, "rtis_commit_events_bucket", le="+Inf") == commits
    assert ("rtis_pending_events", ()) in m
    assert value(m, "rtis_topic_last_offset", topic="events") == 30


async def test_query_progress_and_errors_are_reported_per_query(start: ClientFactory) -> None:
    client = await start(
        streams={"orders": {}},
        queries={"doubled": {"sql": "SELECT amount * 2 AS twice FROM orders"}},
    )
    body = orjson.dumps([{"amount": 1}, {"amount": "x"}, {"amount": 3}])
    assert (await client.post("/events/orders", data=body, headers=JSON)).status == 202
    deadline = time.monotonic() + 10
    while True:
        m = await scrape(client)
        if value(m, "rtis_query_processed_total", query="doubled") == 3:
            break
        assert time.monotonic() < deadline, m
        await asyncio.sleep(0.02)
    assert value(m, "rtis_query_behind", query="doubled") == 0
    assert value(m, "rtis_query_errors_total", query="doubled") == 1
    assert value(m, "rtis_query_rows_emitted_total", query="doubled") == 2
    for name in ("rtis_query_late_events_total", "rtis_query_windows_emitted_total"):
        assert (name, (("query", "doubled"),)) in m


async def test_websocket_connections_frames_and_slow_consumer_closes(
    start: ClientFactory,
) -> None:
    client = await start(server={"max_queued_messages": 5})
    ws = await client.ws_connect("/ws")
    await ws.send_json({"op": "subscribe", "topic": "events"})
    await ws.receive(timeout=5)  # subscribed
    m = await scrape(client)
    assert value(m, "rtis_ws_connections") == 1
    assert value(m, "rtis_ws_subscriptions") == 1
    body = orjson.dumps([{"n": 1}, {"n": 2}])
    await client.post("/events/events", data=body, headers=JSON)
    msg = await ws.receive(timeout=5)
    assert orjson.loads(msg.data)["op"] == "events"
    m = await scrape(client)
    assert value(m, "rtis_ws_frames_sent_total") >= 2  # subscribed + events
    assert value(m, "rtis_ws_messages_sent_total") == 2
    # one batch larger than max_queued_messages: the subscriber is too far behind
    big = orjson.dumps([{"n": i} for i in range(10)])
    await client.post("/events/events", data=big, headers=JSON)
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4408
    deadline = time.monotonic() + 5
    while value(m := await scrape(client), "rtis_ws_connections") != 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert value(m, "rtis_ws_slow_consumer_closes_total") == 1
    assert value(m, "rtis_ws_messages_sent_total") == 2  # counts survive the connection


async def test_apps_in_one_process_have_separate_registries(
    aiohttp_client: Any, tmp_path: Any
) -> None:
    a = await aiohttp_client(create_app(make_config(tmp_path / "a.db")))
    b = await aiohttp_client(create_app(make_config(tmp_path / "b.db")))
    await a.post("/events/events", data=b"[{}, {}]", headers=JSON)
    assert value(await scrape(a), "rtis_events_accepted_total", stream="events") == 2
    assert value(await scrape(b), "rtis_events_accepted_total", stream="events") == 0
    # process metrics come along too
    assert ("process_cpu_seconds_total", ()) in await scrape(b)


async def test_every_rtis_metric_is_documented_in_operations_md(start: ClientFactory) -> None:
    from pathlib import Path

    client = await start(
        streams={"orders": {}}, queries={"q": {"sql": "SELECT * FROM orders WHERE a > 1"}}
    )
    text = await (await client.get("/metrics")).text()
    families = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("rtis_")}
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    missing = sorted(name for name in families if name not in doc)
    assert not missing, f"docs/operations.md does not describe {missing}"


async def test_a_windowed_query_reports_its_emitted_windows_and_late_events(
    start: ClientFactory,
) -> None:
    client = await start(
        streams={"s": {"time_field": "ts"}},
        queries={
            "w": {"sql": "SELECT count(*) AS n FROM s GROUP BY TUMBLE(ts, INTERVAL '1' SECOND)"}
        },
    )
    # two windows close when ts=12 arrives; ts=10.5 is then late (lateness 0)
    events = [{"ts": 10.1}, {"ts": 11.2}, {"ts": 12.3}, {"ts": 10.5}]
    for e in events:
        assert (await client.post("/events/s", json=e)).status == 202
    deadline = time.monotonic() + 10
    while value(m := await scrape(client), "rtis_query_processed_total", query="w") < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert value(m, "rtis_query_windows_emitted_total", query="w") == 2
    assert value(m, "rtis_query_late_events_total", query="w") == 1
