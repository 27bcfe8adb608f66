"""GET /openapi.json describes every route, and the server keeps to it (schemathesis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rtis.config import config_from_dict
from rtis.openapi import document, static_paths
from rtis.server import create_app

from .conftest import ClientFactory, make_config
from .procs import Server

CONFIG = """\
[streams.orders]
time_field = "ts"
dedupe_key = "id"
on_invalid = "dead_letter"
[streams.orders.schema]
type = "object"
required = ["id", "amount"]
properties.amount = { type = "number" }

[streams.events]

[queries.small_orders]
sql = "SELECT id, amount FROM orders WHERE amount < 500"

[queries.per_minute]
sql = '''SELECT count(*) AS n, sum(amount) AS total
FROM orders GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)'''
"""


def app_routes(app: Any) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method not in ("HEAD", "*") and route.resource is not None
    }


def doc_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}


def test_the_document_has_exactly_the_apps_routes(db_path: Path) -> None:
    app = create_app(make_config(db_path))
    doc = document(make_config(db_path), static_paths(app))
    assert doc_routes(doc) == app_routes(app)


async def test_served_document_is_openapi_3_1_and_names_the_configured_topics(
    start: ClientFactory,
) -> None:
    client = await start(
        streams={"orders": {}}, queries={"big": {"sql": "SELECT * FROM orders WHERE a > 1"}}
    )
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    assert doc_routes(doc) == app_routes(client.app)
    params = {
        p["name"]: p["schema"].get("enum")
        for item in doc["paths"].values()
        for op in item.values()
        for p in op.get("parameters", [])
        if p["in"] == "path"
    }
    assert params == {"stream": ["orders"], "topic": ["big", "orders"], "name": ["big"]}
    assert "security" not in doc  # no [auth]: every route is open
    schemathesis.openapi.from_dict(doc)  # loads (and so parses) as OpenAPI


def test_with_auth_the_document_has_security_schemes_and_open_routes_say_so(
    tmp_path: Path,
) -> None:
    config = config_from_dict(
        {
            "server": {"database": str(tmp_path / "a.db")},
            "streams": {"events": {}},
            "auth": {"keys": {"ops": {"hash": "sha256:" + "0" * 64, "scopes": ["admin"]}}},
        }
    )
    doc = document(config, [])
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/metrics"]["get"]  # the global one: admin
    assert "401" in doc["paths"]["/events/{stream}"]["post"]["responses"]


# -- schemathesis against a real server ----------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("openapi")
    (cwd / "config.toml").write_text(CONFIG)
    srv = Server(["--config", "config.toml"], cwd)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
RESPONSE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
def test_no_answer_is_a_5xx_or_breaks_the_document(case: Any) -> None:
    """Every answer is documented: no 5xx, and status, content type, headers and
    body all as the document says. (Whether the server is as strict or as lenient
    about requests as the document - schemathesis's positive/negative data checks -
    is left out: a stream's own JSON Schema, tz= needing per=, and a /ws upgrade
    cannot be expressed on one OpenAPI path.)"""
    # /sse never ends: the client stops reading after its timeout
    timeout = 0.5 if case.operation.path == "/sse" else 10
    case.call_and_validate(timeout=timeout, checks=RESPONSE_CHECKS)
