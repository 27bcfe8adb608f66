"""The dashboard's files are served with the content types browsers insist on."""

from __future__ import annotations

import re

from .conftest import ClientFactory


async def test_dashboard_files_are_served_with_their_content_types(start: ClientFactory) -> None:
    client = await start()
    expected = {
        "/": "text/html",
        "/rtis.js": "text/javascript",  # an ES module under any other type is refused
        "/static/dashboard.js": "text/javascript",
        "/static/chart.js": "text/javascript",
        "/static/dashboard.css": "text/css",
    }
    for path, content_type in expected.items():
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == content_type, path
        assert resp.charset == "utf-8"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    page = await client.get("/")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


async def test_every_file_the_page_loads_exists(start: ClientFactory) -> None:
    client = await start()
    html = await (await client.get("/")).text()
    refs = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    modules = await (await client.get("/static/dashboard.js")).text()
    refs += re.findall(r'from "(/[^"]+)"', modules)
    assert "/static/dashboard.js" in refs and "/rtis.js" in refs
    for ref in refs:
        assert (await client.get(ref)).status == 200, ref


async def test_unknown_static_files_are_404_in_the_error_shape(start: ClientFactory) -> None:
    client = await start()
    resp = await client.get("/static/../server.py")
    assert resp.status == 404
    resp = await client.get("/static/nope.js")
    assert resp.status == 404
    assert (await resp.json())["error"]["status"] == 404
