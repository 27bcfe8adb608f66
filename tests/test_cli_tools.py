"""rtis send, tail and bench against a real server process; their pure parts with lists."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import random
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtis import cli
from rtis.client import Backoff, ClientError, TailState, describe_error, ndjson_batches, tail
from rtis.loadgen import Pacer, percentile

from .procs import Server

CONFIG = """\
[streams.orders]
dedupe_key = "id"
[streams.orders.schema]
type = "object"
required = ["id"]

[streams.events]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("cli")
    (cwd / "config.toml").write_text(CONFIG)
    srv = Server(["--config", "config.toml"], cwd)
    try:
        yield srv
    finally:
        srv.stop()


def offsets(db: Path, topic: str) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT m.offset FROM messages m JOIN topics t ON t.id = m.topic_id"
            " WHERE t.name = ? ORDER BY m.offset",
            (topic,),
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


# -- send ----------------------------------------------------------------------------


def test_send_posts_json_arguments_and_prints_the_ack(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["send", "orders", '{"id": "a1"}', '[{"id": "a2"}]', "--url", server.url])
    out = capsys.readouterr().out
    assert code == 0
    ack = json.loads(out)
    assert ack["accepted"] == 2 and ack["last_offset"] - ack["first_offset"] == 1


def test_send_dash_reads_ndjson_from_stdin_in_batches(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = b"".join(b'{"id": "s%d"}\n' % i for i in range(5)) + b"\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(lines)))
    code = cli.main(["send", "orders", "-", "--batch", "2", "--url", server.url])
    acks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [a["accepted"] for a in acks] == [2, 2, 1]
    for before, after in itertools.pairwise(acks):
        assert after["first_offset"] == before["last_offset"] + 1


def test_send_exits_non_zero_with_the_servers_error_message(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["send", "orders", '{"no_id": 1}', "--url", server.url])
    err = capsys.readouterr().err
    assert code == 1
    assert "422 invalid_events" in err and "1 of 1 events" in err
    assert cli.main(["send", "nope", "{}", "--url", server.url]) == 1
    assert "404 unknown_stream" in capsys.readouterr().err


def test_send_reports_bad_arguments_and_unreachable_servers_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["send", "orders", "{nope"]) == 2
    assert "argument 1 is not JSON" in capsys.readouterr().err
    assert cli.main(["send", "orders"]) == 2
    assert "give events as JSON arguments" in capsys.readouterr().err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["send", "orders", "{}", "--url", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rtis send: cannot reach") and len(err.splitlines()) == 1


def test_ndjson_batches_group_lines_and_name_the_bad_line() -> None:
    lines = [b'{"a":1}\n', b"\n", b'{"a":2}\n', b'{"a":3}\n']
    batches = list(ndjson_batches(lines, batch=2))
    assert [b.lines for b in batches] == [[1, 3], [4]]
    assert batches[0].body == b'{"a":1}\n{"a":2}\n'
    with pytest.raises(ClientError, match="stdin line 2 is not JSON"):
        list(ndjson_batches([b"{}", b"{oops"]))
    # a byte bound splits too
    assert len(list(ndjson_batches([b'{"a":1}'] * 4, batch=100, max_bytes=16))) == 2


def test_describe_error_prints_code_message_and_details() -> None:
    body = (
        b'{"error":{"status":422,"code":"invalid_events","message":"1 of 2 events is invalid",'
        b'"details":[{"index":1,"path":"$.amount","message":"must be number"}]}}'
    )
    assert describe_error(422, body) == (
        "422 invalid_events: 1 of 2 events is invalid\n  [1] $.amount: must be number"
    )
    assert describe_error(502, b"Bad Gateway") == "502: Bad Gateway"


# -- tail ----------------------------------------------------------------------------


def test_tail_since_prints_retained_messages_as_ndjson_then_stops_at_count(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["send", "events", '[{"n":1},{"n":2},{"n":3}]', "--url", server.url]) == 0
    capsys.readouterr()
    code = cli.main(
        ["tail", "events", "--since", "0", "--where", "n >= 2", "--count", "2", "--url", server.url]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [m["data"]["n"] for m in lines] == [2, 3]
    assert set(lines[0]) == {"offset", "time", "data"}


def test_tail_of_an_unknown_topic_fails_with_the_servers_message(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tail", "nope", "--url", server.url]) == 1
    assert "unknown_topic" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tail_reconnects_after_a_server_restart_and_resumes_without_gap_or_repeat(
    tmp_path: Path,
) -> None:
    port = free_port()
    args = ["--port", str(port), "--db", "rtis.db"]
    srv = Server(args, tmp_path)
    out = io.BytesIO()
    err = io.StringIO()
    task = asyncio.create_task(
        tail(srv.url, "events", since=0, count=6, out=out, err=err, backoff=Backoff(0.05, 0.3))
    )
    loop = asyncio.get_running_loop()
    try:
        send = ["send", "events", '[{"n":1},{"n":2},{"n":3}]', "--url", srv.url]
        assert await loop.run_in_executor(None, cli.main, send) == 0
        while out.getvalue().count(b"\n") < 3:
            await asyncio.sleep(0.02)
        srv.kill9()
        srv = await loop.run_in_executor(None, Server, args, tmp_path)
        send = ["send", "events", '[{"n":4},{"n":5},{"n":6}]', "--url", srv.url]
        assert await loop.run_in_executor(None, cli.main, send) == 0
        assert await asyncio.wait_for(task, 20) == 0
    finally:
        task.cancel()
        srv.stop()
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [m["offset"] for m in got] == [1, 2, 3, 4, 5, 6]
    assert [m["data"]["n"] for m in got] == [1, 2, 3, 4, 5, 6]
    assert "reconnecting" in err.getvalue() and "resuming after offset 3" in err.getvalue()


def test_tail_state_resumes_after_the_last_offset_and_skips_repeats() -> None:
    state = TailState("t", since=None, where=None)
    assert b'"since"' not in state.subscribe_frame()
    state.handle({"op": "subscribed", "topic": "t", "offset": 7, "recovered": True})
    assert state.last == 7  # live from the head: a reconnect resumes from there
    lines, _ = state.handle({"op": "events", "topic": "t", "events": [{"offset": 8}]})
    assert len(lines) == 1
    assert json.loads(state.subscribe_frame())["since"] == 8
    lines, _ = state.handle(
        {"op": "events", "topic": "t", "events": [{"offset": 8}, {"offset": 9}]}
    )
    assert [json.loads(x)["offset"] for x in lines] == [9]
    _, warning = state.handle({"op": "subscribed", "topic": "t", "offset": 9, "recovered": False})
    assert warning and "no longer retained" in warning
    with pytest.raises(ClientError, match="bad_where"):
        state.handle({"op": "error", "code": "bad_where", "message": "x"})


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(0.1, 1.0, random.Random(1))
    delays = [b.next() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0.5 <= d <= 1.0 for d in delays[4:])
    b.reset()
    assert b.next() <= 0.1


# -- bench ---------------------------------------------------------------------------


def test_bench_reports_events_per_second_and_latency_percentiles(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--url", server.url, "--duration", "1", "--batch", "20"]
    argv += ["--concurrency", "4", "--subscribers", "2", "--json", "--quiet"]
    assert cli.main(argv) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["events"] > 0 and s["events_per_second"] > 0 and s["errors"] == {}
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert s["delivered"] == 2 * s["events"]  # every acknowledged event reached both
    e2e = s["end_to_end_ms"]
    assert 0 < e2e["p50"] <= e2e["p95"] <= e2e["p99"]


def test_bench_at_a_rate_shows_progress_and_a_text_summary(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--url", server.url, "--duration", "1.2", "--rate", "500", "--batch", "10"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "events acked" in captured.err  # the progress line
    assert (
        "events/s" in captured.out
        and "p99" in captured.out
        and "errors        none" in (captured.out)
    )
    acked = int(captured.out.split("acknowledged")[1].split("events")[0].replace(",", ""))
    assert 300 <= acked <= 650  # about 500/s for 1.2 s, paced rather than flat out


def test_bench_against_nothing_fails_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--url", f"http://127.0.0.1:{free_port()}", "--duration", "1"]) == 1
    assert capsys.readouterr().err.startswith("rtis bench: cannot reach")


def test_percentile_and_pacer() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    pacer = Pacer(start=10.0, rate=1000, batch=100)  # one request every 0.1 s
    assert [pacer.next_slot(0) for _ in range(3)] == [10.0, 10.1, pytest.approx(10.2)]
    assert Pacer(0, 0, 10).next_slot(5.0) == 5.0


# -- help ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "phrase"),
    [
        ("send", "Publish events to STREAM"),
        ("tail", "print each message as one JSON line"),
        ("bench", "progress line"),
        ("serve", "--log-format"),
    ],
)
def test_help_says_what_each_command_does(
    command: str, phrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--help"])
    assert exit.value.code == 0
    assert phrase in " ".join(capsys.readouterr().out.split())
