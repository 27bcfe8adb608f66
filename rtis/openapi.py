"""``GET /openapi.json``: an OpenAPI 3.1 description of every route, written by hand.

The document describes the server it comes from: the stream, topic and query
path parameters list the configured names, and the security schemes appear
when ``[auth]`` is configured. Static files of the dashboard are listed from
the router. ``tests/test_openapi.py`` fails when a route of the app is
missing here (or a path here has no route), and runs schemathesis against a
real server to check that every answer matches this document.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from . import __version__
from .config import Config

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    out = _json(_ref("Error"), description)
    if retry:
        out["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "string"},
            }
        }
    return out


def _names(names: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if names:
        schema["enum"] = names
    return schema


def _path_param(name: str, description: str, names: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": _names(names),
    }


def _query(
    name: str, description: str, schema: dict[str, Any], *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


LIMIT = _query(
    "limit",
    "At most this many items (default 100).",
    {"type": "integer", "minimum": 1, "maximum": 10_000},
)
OFFSET = {"type": "integer", "minimum": 0}
NULLABLE_OFFSET = {"type": ["integer", "null"], "minimum": 1}
TIME_PARAM = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "pattern": "^[0-9]{1,10}(\\.[0-9]{1,3})?$"},
    ]
}
SSE_EVENT = {
    "type": "object",
    "description": "One SSE event; its data is a /ws server frame as JSON.",
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string"},
        "retry": {"type": "integer"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "code", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    },
    "Message": {
        "type": "object",
        "required": ["offset", "time", "data"],
        "properties": {
            "offset": {"type": "integer", "minimum": 1},
            "time": {"type": "string", "format": "date-time"},
            "data": {},
        },
    },
    "Ack": {
        "type": "object",
        "required": ["accepted", "duplicates", "first_offset", "last_offset"],
        "properties": {
            "accepted": OFFSET,
            "duplicates": OFFSET,
            "first_offset": NULLABLE_OFFSET,
            "last_offset": NULLABLE_OFFSET,
        },
    },
    "Event": {
        "type": "object",
        "description": "One event: a JSON object (the stream's schema, if any, applies).",
    },
    "CloudEvent": {
        "type": "object",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string"},
            "source": {"type": "string"},
            "type": {"type": "string"},
            "time": {"type": ["string", "null"], "format": "date-time"},
        },
        "description": "A structured-mode CloudEvent (attributes plus data).",
    },
}

ERRORS_READ = {
    "400": _error("A query parameter is wrong (code bad_parameter)."),
    "401": _error("Credentials are missing or invalid (with [auth])."),
    "403": _error("The credentials lack the scope for this route (with [auth])."),
    "429": _error("Rate limited (with [auth]).", retry=True),
    "503": _error("The store is shutting down.", retry=True),
}


def document(config: Config, static_paths: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a server running ``config``."""
    streams = sorted(config.streams)
    queries = sorted(config.queries)
    topics = sorted(streams + queries)
    ingest_errors = {
        "400": _error("The body is malformed; the message says where (code malformed_body)."),
        "401": ERRORS_READ["401"],
        "403": ERRORS_READ["403"],
        "404": _error("No such stream (code unknown_stream)."),
        "413": _error("The body or the batch is too large (too_large, too_many_events)."),
        "415": _error("Unsupported content type or encoding."),
        "422": _error("Some events are invalid; details lists each (invalid_events)."),
        "429": ERRORS_READ["429"],
        "503": _error("Too many writes pending, or the store cannot commit.", retry=True),
    }
    paths: dict[str, Any] = {
        "/events/{stream}": {
            "post": {
                "operationId": "postEvents",
                "summary": "Publish events to a stream",
                "description": "Answers 202 only after the events are committed. Bodies: one "
                "JSON object, an array of objects, NDJSON, or CloudEvents (structured, "
                "batch, binary mode); gzip accepted.",
                "parameters": [_path_param("stream", "A configured stream.", streams)],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "oneOf": [
                                    _ref("Event"),
                                    {"type": "array", "items": _ref("Event")},
                                ]
                            }
                        },
                        "application/x-ndjson": {
                            "schema": {"type": "string", "description": "One object per line."}
                        },
                        "application/cloudevents+json": {"schema": _ref("CloudEvent")},
                        "application/cloudevents-batch+json": {
                            "schema": {"type": "array", "items": _ref("CloudEvent")}
                        },
                    },
                },
                "responses": {
                    "202": _json(_ref("Ack"), "Committed."),
                    **ingest_errors,
                    "default": _error("Any other error, in the one error shape."),
                },
            }
        },
        "/health": _get(
            "health",
            "Liveness: the process serves.",
            {"200": _json(_status("ok"), "Serving.")},
            open_route=True,
        ),
        "/ready": _get(
            "ready",
            "Readiness: the database is writable and every query runs.",
            {
                "200": _json(_status("ready"), "Ready."),
                "503": _error("Not ready (code not_ready).", retry=True),
            },
            open_route=True,
        ),
        "/api/topics": _get(
            "listTopics",
            "Every topic with its kind, offsets, subscribers and rate.",
            {"200": _json(_topics_schema(), "The topics."), **_pick(ERRORS_READ, "401", "403")},
        ),
        "/api/topics/{topic}/messages": _get(
            "topicMessages",
            "Retained messages of a topic after an offset, oldest first.",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["topic", "events", "last_offset"],
                        "properties": {
                            "topic": {"type": "string"},
                            "events": {"type": "array", "items": _ref("Message")},
                            "last_offset": OFFSET,
                        },
                    },
                    "The messages.",
                ),
                "404": _error("No such topic (code unknown_topic)."),
                **ERRORS_READ,
            },
            parameters=[
                _path_param("topic", "A stream or query.", topics),
                _query("since", "Messages with a larger offset (default 0).", OFFSET),
                LIMIT,
            ],
        ),
        "/api/queries/{name}/rows": _get(
            "queryRows",
            "Stored result rows of a query; any other parameter filters a column (column=value).",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["query", "rows"],
                        "properties": {
                            "query": {"type": "string"},
                            "rows": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                    "The rows, oldest first.",
                ),
                "404": _error("No such query (code unknown_query)."),
                **ERRORS_READ,
            },
            parameters=[
                _path_param("name", "A configured query.", queries),
                _query("from", "Event time at or after (epoch s or RFC 3339).", TIME_PARAM),
                _query("to", "Event time before (epoch s or RFC 3339).", TIME_PARAM),
                _query(
                    "per",
                    "Re-aggregate windowed rows per minute, hour or day.",
                    {"type": "string", "enum": ["minute", "hour", "day"]},
                ),
                _query("tz", "Time zone of per=day boundaries (IANA name).", {"type": "string"}),
                LIMIT,
            ],
        ),
        "/api/dead-letters": _get(
            "deadLetters",
            "Rejected events and query errors with their reason, newest first.",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["dead_letters"],
                        "properties": {
                            "dead_letters": {"type": "array", "items": _dead_letter_schema()}
                        },
                    },
                    "The dead letters.",
                ),
                **ERRORS_READ,
            },
            parameters=[
                _query("stream", "Only this stream's.", {"type": "string"}),
                _query("query", "Only this query's.", {"type": "string"}),
                LIMIT,
            ],
        ),
        "/metrics": _get(
            "metrics",
            "Prometheus metrics in the text exposition format.",
            {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_pick(ERRORS_READ, "401", "403"),
            },
        ),
        "/openapi.json": _get(
            "openapi",
            "This document.",
            {"200": _json({"type": "object"}, "The OpenAPI document.")},
            open_route=True,
        ),
        "/ws": _get(
            "websocket",
            "The WebSocket endpoint (see docs/api.md for the protocol). A request "
            "without a WebSocket upgrade is answered 400.",
            {
                "101": {"description": "Switched to the WebSocket protocol."},
                "400": _error("Not a WebSocket upgrade request."),
                "403": _error("A browser Origin that is not allowed."),
                "503": _error("Too many connections (too_many_connections).", retry=True),
            },
        ),
        "/sse": _get(
            "sse",
            "The /ws messages as Server-Sent Events; Last-Event-ID resumes every topic.",
            {
                "200": {
                    "description": "An endless event stream.",
                    "content": {"text/event-stream": {"schema": SSE_EVENT}},
                },
                "404": _error("No such topic (code unknown_topic)."),
                **ERRORS_READ,
            },
            parameters=[
                _query(
                    "topic",
                    "Topics to follow (repeat).",
                    {"type": "array", "items": _names(topics), "minItems": 1},
                    required=True,
                ),
                _query("since", "Start after this offset (default: live).", OFFSET),
                _query("where", "A SQL condition on each message's data.", {"type": "string"}),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "The id of the last event received: resumes every topic.",
                    "schema": {"type": "string"},
                },
            ],
        ),
    }
    static = {
        "/": ("dashboard", "The live dashboard (HTML).", "text/html"),
        "/rtis.js": ("rtisJs", "The browser client library.", "text/javascript"),
    }
    for path in static_paths or []:
        suffix = path.rsplit(".", 1)[-1]
        kind = {"js": "text/javascript", "css": "text/css", "html": "text/html"}.get(
            suffix, "application/octet-stream"
        )
        static[path] = ("static_" + path.rsplit("/", 1)[-1], "A dashboard file.", kind)
    for path, (op_id, summary, media) in static.items():
        paths[path] = _get(
            op_id,
            summary,
            {"200": {"description": summary, "content": {media: {"schema": {"type": "string"}}}}},
            open_route=True,
        )
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "rtis",
            "version": __version__,
            "description": "Real-time events over HTTP, SQLite and WebSocket. Errors on every "
            "route share one shape (components.schemas.Error).",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
    if config.auth is not None:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "API key or JWT."},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    else:  # no credentials to miss and no rate limits without [auth]
        for item in paths.values():
            for op in item.values():
                op.pop("security", None)
                op["responses"].pop("401", None)
                op["responses"].pop("429", None)
    return doc


def _get(
    op_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    open_route: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": responses}
    if parameters:
        op["parameters"] = parameters
    if open_route:
        op["security"] = []
    # a browser Origin not in server.allowed_origins is refused on every route
    responses.setdefault("403", _error("A browser Origin that is not allowed, or a missing scope."))
    responses.setdefault("default", _error("Any other error, in the one error shape."))
    return {"get": op}


def _pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: d[k] for k in keys}


def _status(value: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": value}},
    }


def _topics_schema() -> dict[str, Any]:
    topic = {
        "type": "object",
        "required": ["name", "kind", "last_offset", "first_offset", "subscribers", "rate"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": ["stream", "query"]},
            "last_offset": OFFSET,
            "first_offset": NULLABLE_OFFSET,
            "subscribers": OFFSET,
            "rate": {"type": "number", "minimum": 0},
        },
    }
    return {
        "type": "object",
        "required": ["topics"],
        "properties": {"topics": {"type": "array", "items": topic}},
    }


def _dead_letter_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "time", "stream", "query", "reason", "path", "data"],
        "properties": {
            "id": {"type": "integer"},
            "time": {"type": "string", "format": "date-time"},
            "stream": {"type": "string"},
            "query": {"type": ["string", "null"]},
            "reason": {"type": "string"},
            "path": {"type": ["string", "null"]},
            "data": {},
        },
    }


def static_paths(app: web.Application) -> list[str]:
    """The dashboard files the app serves under /static/."""
    out = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is not None and resource.canonical.startswith("/static/"):
            out.add(resource.canonical)
    return sorted(out)


async def openapi_handler(request: web.Request) -> web.Response:
    """``GET /openapi.json`` (built per request: well under a millisecond)."""
    from .server import CONFIG

    app = request.app
    body = orjson.dumps(document(app[CONFIG], static_paths(app)))
    return web.Response(body=body, content_type=JSON)
