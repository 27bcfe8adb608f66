"""``rtis demo``: the farm-supply example config and its harvest generator."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from rtis.cli import main
from rtis.config import load_config
from rtis.demo import EXAMPLE, INVALID_EVERY, harvest
from rtis.ingest import Decoded, prepare


def test_the_example_config_passes_rtis_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "query ready_for_collection" in out and "query harvests_per_minute" in out


def test_generated_harvests_fit_the_schema_but_for_the_occasional_typo() -> None:
    config = load_config(str(EXAMPLE))
    stream = config.streams["harvests"]
    rng = random.Random(7)
    now = time.time()
    events = [harvest(rng, n, now) for n in range(2000)]
    assert {"id", "farmer", "crop", "kg", "region", "ready_at", "ts"} <= set(events[0])
    assert len({e["id"] for e in events}) == len(events)
    prepared, invalid = prepare(Decoded(events, False), stream, int(now * 1000))
    # About one in INVALID_EVERY has a negative kg, and only that is wrong.
    assert 0 < len(invalid) < 3 * len(events) / INVALID_EVERY
    assert {i.path for i in invalid} == {"$.kg"}
    assert len(prepared) + len(invalid) == len(events)


def test_rtis_demo_serves_the_dashboard_and_generates_harvests(tmp_path: Path) -> None:
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "rtis.cli", "demo", "--port", "0", "--rate", "50"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = None
        db = None
        deadline = time.monotonic() + 20
        while (url is None or db is None) and time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if m := re.search(r"dashboard at (http://\S+)/", line):
                url = m.group(1)
            if m := re.search(r"database (\S+);", line):
                db = Path(m.group(1))
        assert url is not None and db is not None, proc.stderr.read().decode()
        with urllib.request.urlopen(f"{url}/", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/html")
        heads: dict[str, int] = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{url}/api/topics", timeout=5) as r:
                heads = {t["name"]: t["last_offset"] for t in orjson.loads(r.read())["topics"]}
            if heads.get("harvests", 0) >= 10 and heads.get("ready_for_collection", 0) >= 1:
                break
            time.sleep(0.2)
        assert heads["harvests"] >= 10 and heads["ready_for_collection"] >= 1, heads
        assert db.exists() and not db.is_relative_to(tmp_path)  # a temporary directory
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        proc.stdout and proc.stdout.close()
        proc.stderr and proc.stderr.close()
    assert code == 0
    assert not db.parent.exists()  # the temporary database is removed on exit
