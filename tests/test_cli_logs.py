"""rtis serve's logs: a startup summary, plain or JSON lines, a request log only on demand."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
from pathlib import Path

from rtis.logs import JsonFormatter, setup_logging

from .procs import Server

CONFIG = """\
[streams.orders]
[queries.big]
sql = "SELECT * FROM orders WHERE amount > 10"
"""


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for(server: Server, needle: str) -> str:
    deadline = time.monotonic() + 10
    while needle not in (log := server.log()):
        assert time.monotonic() < deadline, log
        time.sleep(0.02)
    return log


def test_json_logs_start_with_a_summary_and_have_no_request_log_by_default(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    srv = Server(["--config", "config.toml", "--log-format", "json"], tmp_path)
    try:
        urllib.request.urlopen(f"{srv.url}/health").read()
        wait_for(srv, '"event":"startup"')
    finally:
        assert srv.stop() == 0
    records = json_lines(srv.log_path.read_text())  # every line is JSON
    [startup] = [r for r in records if r.get("event") == "startup"]
    assert startup["level"] == "info" and startup["logger"] == "rtis"
    assert startup["listen"] == srv.url
    assert startup["streams"] == ["orders"] and startup["queries"] == ["big"]
    assert startup["config"] == "config.toml"
    assert str(startup["database"]).endswith("rtis.db")
    assert startup["version"]
    assert not [r for r in records if r.get("event") == "request"]


def test_access_log_records_each_request_without_its_query_string(tmp_path: Path) -> None:
    srv = Server(["--db", "rtis.db", "--access-log"], tmp_path)
    try:
        urllib.request.urlopen(f"{srv.url}/health?token=s3cret").read()
        log = wait_for(srv, "GET /health 200")
    finally:
        srv.stop()
    assert "s3cret" not in log
    assert "rtis 0.1.0 listening on" in log  # plain format by default


def test_json_formatter_keeps_extra_fields_and_exceptions() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    try:
        log = logging.getLogger("rtis.test")
        log.info("hello %s", "there", extra={"stream": "orders", "n": 3})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().handlers[:] = []
    first, second = json_lines(stream.getvalue())
    assert first["message"] == "hello there" and first["stream"] == "orders" and first["n"] == 3
    assert str(first["time"]).endswith("Z")
    assert second["level"] == "error" and "ValueError: boom" in str(second["exception"])
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)
