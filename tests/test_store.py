"""The store on its own: what it writes, how it closes, what survives a reopen."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtis.errors import StoreClosed
from rtis.ingest import Prepared
from rtis.store import Committed, Store

TOPICS = [("events", "stream"), ("out", "query")]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def raw_rows(db: Path) -> list[tuple[int, int, str | None, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT offset, time_ms, key, data FROM messages ORDER BY topic_id, offset"
        ).fetchall()
    finally:
        conn.close()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.dictionaries(st.text(), json_values, max_size=5), min_size=1, max_size=20))
def test_stored_json_text_is_byte_identical_to_what_was_submitted(
    tmp_path_factory: pytest.TempPathFactory, events: list[dict[str, object]]
) -> None:
    db = tmp_path_factory.mktemp("s") / "t.db"

    async def run() -> list[bytes]:
        async with Store.open(db, TOPICS) as store:
            data = [orjson.dumps(e) for e in events]
            await store.append("events", [Prepared(i, f"k{i}", d) for i, d in enumerate(data)])
            return data

    data = asyncio.run(run())
    rows = raw_rows(db)
    assert [r[3].encode() for r in rows] == data
    assert [r[0] for r in rows] == list(range(1, len(events) + 1))
    assert [r[2] for r in rows] == [f"k{i}" for i in range(len(events))]


async def test_offsets_continue_after_reopening_and_commits_are_published(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    published: list[Committed] = []
    async with Store.open(db, TOPICS, on_commit=published.extend) as store:
        r = await store.append("events", [Prepared(1, None, b"{}")] * 3)
        assert (r.first_offset, r.last_offset) == (1, 3)
    assert [m.offset for c in published for m in c.messages] == [1, 2, 3]
    async with Store.open(db, TOPICS) as store:
        assert store.last_offset("events") == 3
        r = await store.append("events", [Prepared(1, None, b"{}")])
        assert r.first_offset == 4
        assert store.last_offset("out") == 0


async def test_duplicate_keys_within_and_across_requests_are_not_stored(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "t.db", TOPICS) as store:
        a = store.append("events", [Prepared(1, "a", b"1"), Prepared(1, "a", b"2")])
        b = store.append("events", [Prepared(1, "a", b"3"), Prepared(1, "b", b"4")])
        ra, rb = await asyncio.gather(a, b)
    assert (ra.accepted, ra.duplicates, rb.accepted, rb.duplicates) == (1, 1, 1, 1)
    assert [(o, k, d) for o, _, k, d in raw_rows(tmp_path / "t.db")] == [
        (1, "a", "1"),
        (2, "b", "4"),
    ]


async def test_a_failing_write_job_is_undone_without_failing_the_others_in_its_commit(
    tmp_path: Path,
) -> None:
    async with Store.open(tmp_path / "t.db", TOPICS) as store:

        def bad(txn: object) -> None:
            txn.append("out", 1, None, b'"lost"')  # type: ignore[attr-defined]
            raise RuntimeError("boom")

        ok1 = store.append("events", [Prepared(1, None, b"1")])
        failing = store.write(bad)
        ok2 = store.append("events", [Prepared(1, None, b"2")])
        results = await asyncio.gather(ok1, failing, ok2, return_exceptions=True)
        assert isinstance(results[1], RuntimeError)
        assert store.last_offset("out") == 0
        r = await store.write(lambda txn: txn.append("out", 1, None, b'"kept"'))
        assert r == 1  # the undone append did not use up an offset
    assert [d for _, _, _, d in raw_rows(tmp_path / "t.db")] == ["1", "2", '"kept"']


async def test_close_commits_what_was_submitted_is_idempotent_and_then_refuses(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "t.db")
    await store.start(TOPICS)
    pending = [
        asyncio.ensure_future(store.append("events", [Prepared(1, None, b"{}")])) for _ in range(50)
    ]
    await asyncio.sleep(0)
    await asyncio.gather(store.close(), store.close())
    assert all(p.done() and not p.exception() for p in pending)
    assert len(raw_rows(tmp_path / "t.db")) == 50
    with pytest.raises(StoreClosed):
        await store.append("events", [Prepared(1, None, b"{}")])


@pytest.mark.parametrize(("durability", "expected"), [("full", 2), ("normal", 1)])
async def test_durability_maps_to_sqlite_synchronous(
    tmp_path: Path, durability: str, expected: int
) -> None:
    async with Store.open(tmp_path / "t.db", TOPICS, durability=durability) as store:
        value = await store.write(lambda txn: txn.conn.execute("PRAGMA synchronous").fetchone()[0])
        mode = await store.write(lambda txn: txn.conn.execute("PRAGMA journal_mode").fetchone()[0])
    assert value == expected
    assert mode == "wal"
