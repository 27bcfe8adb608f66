"""The aiohttp application: routes, the error shape, and the lifecycle.

``create_app(config)`` wires the parts together: the store's ``on_commit``
callback publishes committed messages to the hub (and feeds the pipeline),
so neither the store nor the pipeline imports the hub. Handlers are thin:
they parse the request, call the pure ingest functions, and await the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from . import __version__
from .config import Config, StreamConfig
from .errors import BadRequest, NotFound, PayloadTooLarge, RtisError
from .http_auth import GUARD, charge_events, may_see
from .http_auth import install as install_auth
from .ingest import Limits, decode_body, format_time, invalid_error, prepare
from .metrics import METRICS, Metrics, metrics_handler
from .metrics import middleware as metrics_middleware
from .openapi import openapi_handler
from .pipeline import Pipeline, compile_queries, quote
from .retention import for_app as retention_for_app
from .sql_aggregate import AggregateQuery, ReaggregationError, reaggregate, reaggregation_problem
from .sse import SseEndpoint
from .store import Committed, Store
from .ws import Hub, WebSocketEndpoint

log = logging.getLogger("rtis.server")

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", Hub)
WS = web.AppKey("ws", WebSocketEndpoint)
SSE = web.AppKey("sse", SseEndpoint)
PIPELINE = web.AppKey("pipeline", Pipeline)

MAX_READ_LIMIT = 10_000
DEFAULT_READ_LIMIT = 100

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(err: RtisError) -> web.Response:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return json_response(err.to_json(), err.status, headers)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error, ours or aiohttp's, with the one error shape."""
    try:
        return await handler(request)
    except RtisError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.text or e.reason
        if e.status == 413:
            message = (
                f"request body exceeds max_body_bytes = {request.app[CONFIG].server.max_body_bytes}"
            )
        elif e.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif e.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        err = RtisError(message, status=e.status, code=_HTTP_CODES.get(e.status, "http_error"))
        resp = error_response(err)
        if e.status == 405 and "Allow" in e.headers:
            resp.headers["Allow"] = e.headers["Allow"]
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(RtisError("internal error; see the server log"))


# -- handlers -----------------------------------------------------------------


async def post_events(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    name = request.match_info["stream"]
    stream: StreamConfig | None = config.streams.get(name)
    if stream is None:
        # With auth on, naming the other streams would tell a client what its
        # scopes may not let it see.
        hint = "" if config.auth is not None else f" (streams: {', '.join(sorted(config.streams))})"
        raise NotFound(f"no stream {name!r}{hint}", code="unknown_stream")
    limit = config.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"body of {request.content_length} bytes exceeds max_body_bytes = {limit}"
        )
    body = await request.read()
    limits = Limits(max_body_bytes=limit, max_batch_events=config.server.max_batch_events)
    decoded = decode_body(
        body,
        content_type=request.headers.get("Content-Type"),
        content_encoding=request.headers.get("Content-Encoding"),
        headers=request.headers,
        limits=limits,
    )
    charge_events(request, len(decoded.events))  # 429 before anything is stored
    events, invalid = prepare(decoded, stream, int(time.time() * 1000))
    if invalid and stream.on_invalid == "reject":
        raise invalid_error(name, invalid, len(decoded.events))
    result = await request.app[STORE].append(name, events, invalid)
    request.app[METRICS].ingest.record(
        name, result.accepted, result.duplicates, result.dead_lettered
    )
    return json_response(result.to_json(), status=202)


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    store = request.app[STORE]
    if store.closed:
        raise RtisError("the store is shutting down", status=503, code="not_ready", retry_after=1)
    if not request.app[PIPELINE].running():
        raise RtisError(
            "a query runner is not running", status=503, code="not_ready", retry_after=1
        )
    return json_response({"status": "ready"})


async def list_dead_letters(request: web.Request) -> web.Response:
    store = request.app[STORE]
    limit = _int_param(request, "limit", DEFAULT_READ_LIMIT, 1, MAX_READ_LIMIT)
    letters = await store.dead_letters(
        stream=request.query.get("stream") or None,
        query=request.query.get("query") or None,
        limit=limit,
    )
    body = [
        {
            "id": d.id,
            "time": format_time(d.time_ms),
            "stream": d.stream,
            "query": d.query,
            "reason": d.reason,
            "path": d.path,
            "data": orjson.Fragment(d.data),
        }
        for d in letters
    ]
    return json_response({"dead_letters": body})


async def query_rows(request: web.Request) -> web.Response:
    """Stored result rows of a query, newest last; filters on time and columns."""
    name = request.match_info["name"]
    config = request.app[CONFIG]
    if name not in config.queries:
        raise NotFound(f"no query {name!r}", code="unknown_query")
    store = request.app[STORE]
    limit = _int_param(request, "limit", DEFAULT_READ_LIMIT, 1, MAX_READ_LIMIT)
    query = next((r.query for r in request.app[PIPELINE].runners if r.name == name), None)
    if isinstance(query, AggregateQuery):
        return await _aggregate_rows(request, query, limit)
    if "per" in request.query or "tz" in request.query:
        raise BadRequest(
            f"per= and tz= re-aggregate windowed rows; query {name!r} has no GROUP BY",
            code="bad_parameter",
        )
    async with store.reader() as conn:
        async with conn.execute(f"SELECT * FROM {quote(name)} LIMIT 0") as cur:
            columns = [d[0] for d in cur.description]
        where: list[str] = []
        args: list[Any] = []
        for key, value in request.query.items():
            if key in ("limit", "from", "to"):
                continue
            if key not in columns or key in ("offset", "time_ms"):
                raise BadRequest(
                    f"unknown column {key!r}; columns: {', '.join(columns[2:])}",
                    code="bad_parameter",
                )
            where.append(f"{quote(key)} = ?")
            args.append(_coerce(value))
        for key, op in (("from", ">="), ("to", "<")):
            if key in request.query:
                where.append(f"time_ms {op} ?")
                args.append(_time_param(key, request.query[key]))
        sql = f"SELECT * FROM {quote(name)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY offset DESC LIMIT ?"
        args.append(limit)
        async with conn.execute(sql, args) as cur:
            rows = list(await cur.fetchall())
    rows.reverse()
    out = []
    for row in rows:
        item = {"offset": row[0], "time": format_time(row[1])}
        item.update(zip(columns[2:], row[2:], strict=True))
        out.append(item)
    return json_response({"query": name, "rows": out})


async def _aggregate_rows(request: web.Request, query: AggregateQuery, limit: int) -> web.Response:
    """Rows of an aggregate query: one per group (and window), ordered by window
    start; ``per=minute|hour|day`` (with ``tz=``) merges windows into buckets."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = query.name
    windowed = query.window.kind != "none"
    visible = list(query.columns) + (["revision"] if windowed else [])
    params = request.query
    per = params.get("per")
    zone: Any = None
    if "tz" in params:
        if per is None:
            raise BadRequest("tz= sets the day boundaries of per=; add per=", code="bad_parameter")
        try:
            zone = ZoneInfo(params["tz"])
        except (ZoneInfoNotFoundError, ValueError):
            raise BadRequest(
                f"unknown time zone {params['tz']!r}; use an IANA name such as Europe/Paris",
                code="bad_parameter",
            ) from None
    if per is not None:
        problem = reaggregation_problem(query, per)
        if problem is not None:
            raise BadRequest(f"cannot re-aggregate {name!r} per {per}: {problem}", code="bad_per")
    where: list[str] = []
    args: list[Any] = []
    for key, value in params.items():
        if key in ("limit", "from", "to", "per", "tz"):
            continue
        if key not in visible:
            raise BadRequest(
                f"unknown column {key!r}; columns: {', '.join(visible)}", code="bad_parameter"
            )
        where.append(f"{quote(key)} = ?")
        args.append(_coerce(value))
    for key, op in (("from", ">="), ("to", "<")):
        if key in params:
            where.append(f"time_ms {op} ?")
            args.append(_time_param(key, params[key]))
    where_sql = " WHERE " + " AND ".join(where) if where else ""
    table = quote(name)
    if per is not None:
        stored = ["time_ms", *query.columns, *query.hidden_columns]
        sql = f"SELECT {', '.join(quote(c) for c in stored)} FROM {table}{where_sql}"
        async with request.app[STORE].reader() as conn, conn.execute(sql, args) as cur:
            rows = [dict(zip(stored, r, strict=True)) for r in await cur.fetchall()]
        try:
            merged = reaggregate(query, rows, per, zone or ZoneInfo("UTC"))
        except ReaggregationError as e:
            raise BadRequest(
                f"cannot re-aggregate {name!r} per {per}: {e}", code="bad_per"
            ) from None
        return json_response({"query": name, "per": per, "rows": merged[-limit:]})
    stored = ["offset", "time_ms", *visible]
    sql = (
        f"SELECT {', '.join(quote(c) for c in stored)} FROM {table}{where_sql}"
        " ORDER BY time_ms DESC, offset DESC LIMIT ?"
    )
    async with request.app[STORE].reader() as conn, conn.execute(sql, [*args, limit]) as cur:
        rows_ = list(await cur.fetchall())
    rows_.reverse()
    out = []
    for row in rows_:
        item = {"offset": row[0], "time": format_time(row[1])}
        item.update(zip(visible, row[2:], strict=True))
        out.append(item)
    return json_response({"query": name, "rows": out})


def _coerce(value: str) -> Any:
    """A query-string value as the SQLite value it most likely means."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _time_param(name: str, raw: str) -> int:
    from .ingest import parse_time

    try:
        return parse_time(float(raw) if raw.replace(".", "", 1).isdigit() else raw)
    except ValueError as e:
        raise BadRequest(f"query parameter {name!r}: {e}", code="bad_parameter") from None


async def list_topics(request: web.Request) -> web.Response:
    store = request.app[STORE]
    hub = request.app[HUB]
    topics = []
    for info in await store.topic_infos():
        if not may_see(request, info.name):
            continue
        topics.append(
            {
                "name": info.name,
                "kind": info.kind,
                "last_offset": hub.heads.get(info.name, info.last_offset),
                "first_offset": info.first_offset,
                "subscribers": hub.subscriber_count(info.name),
                "rate": round(hub.rate(info.name), 3),
            }
        )
    return json_response({"topics": topics})


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(
            f"query parameter {name!r} must be an integer, got {raw!r}", code="bad_parameter"
        ) from None
    if not low <= value <= high:
        raise BadRequest(
            f"query parameter {name!r} must be between {low} and {high}, got {value}",
            code="bad_parameter",
        )
    return value


async def topic_messages(request: web.Request) -> web.Response:
    store = request.app[STORE]
    topic = request.match_info["topic"]
    if topic not in store.topics():
        raise NotFound(f"no topic {topic!r}", code="unknown_topic")
    since = _int_param(request, "since", 0, 0, 2**63 - 1)
    limit = _int_param(request, "limit", DEFAULT_READ_LIMIT, 1, MAX_READ_LIMIT)
    messages = await store.read_messages(topic, since, limit)
    head = request.app[HUB].heads.get(topic, store.last_offset(topic))
    body = b'{"topic":%s,"events":[%s],"last_offset":%d}' % (
        orjson.dumps(topic),
        b",".join(m.to_json() for m in messages),
        head,
    )
    return web.Response(body=body, content_type="application/json")


# -- lifecycle ----------------------------------------------------------------


def _topics(config: Config) -> list[tuple[str, str]]:
    return [(n, "stream") for n in config.streams] + [(n, "query") for n in config.queries]


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    queries = compile_queries(config)
    hub = Hub({})
    pipeline: Pipeline | None = None

    def on_commit(batches: list[Committed]) -> None:
        hub.publish(batches)
        if pipeline is not None:
            pipeline.feed(batches)

    store = Store(
        config.database_path(),
        durability=config.server.durability,
        max_pending_events=config.server.max_pending_events,
        on_commit=on_commit,
    )
    store.observe_commit = app[METRICS].observe_commit
    await store.start(_topics(config))
    hub.heads.update({t: store.last_offset(t) for t in store.topics()})
    pipeline = Pipeline(queries.values(), store)
    app[STORE] = store
    app[HUB] = hub
    app[PIPELINE] = pipeline
    app[METRICS].bind(store=store, hub=hub, pipeline=pipeline)
    retention = retention_for_app(store, config, pipeline, app[METRICS])
    app[WS] = WebSocketEndpoint(
        store,
        hub,
        guard=app[GUARD],
        max_connections=config.server.max_connections,
        max_subscriptions=config.server.max_subscriptions,
        max_frame_bytes=config.server.max_frame_bytes,
        max_queued=config.server.max_queued_messages,
        heartbeat=config.server.heartbeat_interval,
        compile_filter=_compile_filter,
    )
    app[SSE] = SseEndpoint(
        store,
        hub,
        max_queued=config.server.max_queued_messages,
        heartbeat=config.server.heartbeat_interval,
        compile_filter=_compile_filter,
    )
    try:
        await pipeline.start()
        retention.start()
        log.debug(  # rtis serve logs the full startup summary once it listens (logs.py)
            "rtis %s: config %s, database %s, streams: %s, queries: %s",
            __version__,
            config.path or "(embedded default)",
            config.database_path(),
            ", ".join(config.streams) or "none",
            ", ".join(config.queries) or "none",
        )
        yield
    finally:
        await retention.stop()
        await pipeline.stop()
        await store.close()


def _compile_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    from .sql import compile_condition

    return compile_condition(text)


async def _on_shutdown(app: web.Application) -> None:
    if WS in app:
        await app[WS].close_all()
    if SSE in app:
        await app[SSE].close_all()


async def _ws(request: web.Request) -> web.StreamResponse:
    return await request.app[WS].handle(request)


async def _sse(request: web.Request) -> web.StreamResponse:
    return await request.app[SSE].handle(request)


STATIC_DIR = Path(__file__).parent / "static"
_STATIC_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",  # ES modules are refused under any non-JavaScript type
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# The dashboard loads only its own files and talks only to this server.
_DASHBOARD_CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _static(path: Path) -> Handler:
    """Serve one file of rtis/static with its content type (read per request:
    the files are small, and an edited file shows up without a restart)."""
    content_type = _STATIC_TYPES[path.suffix]
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = _DASHBOARD_CSP

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=path.read_bytes(), content_type=content_type, charset="utf-8", headers=headers
        )

    return handler


def _add_static_routes(app: web.Application) -> None:
    app.router.add_get("/", _static(STATIC_DIR / "index.html"))
    app.router.add_get("/rtis.js", _static(STATIC_DIR / "rtis.js"))
    for path in sorted(STATIC_DIR.iterdir()):
        if path.suffix in _STATIC_TYPES:
            app.router.add_get(f"/static/{path.name}", _static(path))


def create_app(config: Config) -> web.Application:
    """Build the application for ``config``; the store opens when the app starts."""
    metrics = Metrics(config.streams)
    app = web.Application(
        # the metrics middleware sits inside the error middleware, so it sees
        # each error's code before it becomes a response
        middlewares=[error_middleware, metrics_middleware(metrics)],
        client_max_size=config.server.max_body_bytes,
        # ingest.decode_body gunzips with a hard cap (a gzip bomb never allocates
        # more than max_body_bytes) and reports corrupt gzip as a 400 itself.
        handler_args={"auto_decompress": False},
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    install_auth(app, config)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/events/{stream}", post_events)
    app.router.add_get("/ws", _ws)
    app.router.add_get("/sse", _sse)
    _add_static_routes(app)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/api/topics", list_topics)
    app.router.add_get("/api/topics/{topic}/messages", topic_messages)
    app.router.add_get("/api/queries/{name}/rows", query_rows)
    app.router.add_get("/api/dead-letters", list_dead_letters)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi_handler)
    return app
