"""The SQLite store: the topic log, dead letters and query checkpoints.

One write connection owned by one writer thread; every write goes through
:meth:`Store.submit` as a *job*. The writer task awaits the first pending job,
drains whatever else is pending (up to a bound), runs them all in ONE
transaction, commits with the configured durability, and only then resolves
each job's future and hands the committed messages to ``on_commit``. Under
load the batches grow by themselves, so an fsync is shared by many requests
(group commit).

The whole transaction runs in the writer thread in one hop (BEGIN, inserts,
COMMIT), rather than one thread hop per statement as aiosqlite would do: that
keeps the per-batch overhead to a single context switch. Reads use separate
aiosqlite connections, so they never wait for the writer (WAL mode).

Offsets: the writer keeps each topic's last offset in memory (persisted in
``topics.last_offset`` in the same transaction) and assigns offsets inside
the transaction, so they are gap-free, consecutive within a job, and survive
restarts and retention purges. A failed transaction rolls them back.

This module knows nothing of HTTP, WebSockets or queries' SQL: publishing is
the ``on_commit`` callback that ``server.py`` wires to the hub and pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import orjson

from .errors import Overloaded, StoreClosed, StoreUnavailable
from .ingest import Invalid, Prepared, format_time

log = logging.getLogger("rtis.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,            -- 'stream' or 'query'
    last_offset INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    topic_id INTEGER NOT NULL,
    offset   INTEGER NOT NULL,
    time_ms  INTEGER NOT NULL,            -- event time, epoch milliseconds
    key      TEXT,                        -- dedupe key, if any
    data     TEXT NOT NULL,               -- the message as JSON
    PRIMARY KEY (topic_id, offset)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (topic_id, key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    id      INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,             -- when it was dead-lettered
    stream  TEXT NOT NULL,
    query   TEXT,                         -- NULL for ingest rejections
    reason  TEXT NOT NULL,
    path    TEXT,
    data    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    query   TEXT PRIMARY KEY,
    sql     TEXT NOT NULL,
    offset  INTEGER NOT NULL,             -- last source offset whose effect is stored
    state   BLOB
);
CREATE VIEW IF NOT EXISTS events AS
    SELECT t.name AS topic, m.offset, m.time_ms, m.key, m.data
    FROM messages m JOIN topics t ON t.id = m.topic_id;
"""

INSERT_MESSAGES = "INSERT INTO messages (topic_id, offset, time_ms, key, data) VALUES "
MAX_SQL_VARIABLES = 32_000  # SQLite's default limit is 32,766 bound parameters


def insert_rows(
    conn: sqlite3.Connection, head: str, ncols: int, rows: Sequence[Sequence[Any]]
) -> None:
    """``head`` + ``(?, ...), (?, ...), ...``: insert ``rows`` with a few
    multi-row statements rather than ``executemany``.

    ``executemany`` steps once per row, giving up and re-taking the GIL each
    time; with a busy event loop every re-take can wait a switch interval,
    which made the writer the bottleneck. Chunks of fixed sizes keep the
    number of distinct statements (and so re-preparations) small.
    """
    big = max(1, min(1000, MAX_SQL_VARIABLES // ncols))
    i, n = 0, len(rows)
    for size in (big, 100, 10, 1):
        if size > big:
            continue
        if n - i < size:
            continue
        sql = _multi_row_sql(head, ncols, size)
        while n - i >= size:
            conn.execute(sql, [v for row in rows[i : i + size] for v in row])
            i += size


@functools.lru_cache(maxsize=256)
def _multi_row_sql(head: str, ncols: int, size: int) -> str:
    one = "(" + ", ".join("?" * ncols) + ")"
    return head + ", ".join([one] * size)


# How many events one transaction takes at most; more pending work waits for
# the next transaction. Big enough that an fsync is amortised, small enough
# that the first waiter of a batch is not kept long.
MAX_EVENTS_PER_COMMIT = 20_000
READ_CONNECTIONS = 3
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes


@dataclass(slots=True)
class Message:
    """One committed message of a topic."""

    offset: int
    time_ms: int
    data: bytes  # the event / output row as JSON
    _row: Any = field(default=None, repr=False, compare=False)

    def parsed(self) -> Any:
        """``data`` parsed, once: the hub's filters and every query of the
        stream share it. Readers must not mutate it."""
        row = self._row
        if row is None:
            row = self._row = orjson.loads(self.data)
        return row

    def to_json(self) -> bytes:
        """``{"offset": 12, "time": "...", "data": {...}}`` without re-encoding data."""
        return b'{"offset":%d,"time":"%s","data":%s}' % (
            self.offset,
            format_time(self.time_ms).encode(),
            self.data,
        )


@dataclass(slots=True)
class Committed:
    """Messages appended to one topic by one transaction, in offset order."""

    topic: str
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class WriteResult:
    accepted: int
    duplicates: int
    first_offset: int | None
    last_offset: int | None
    dead_lettered: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
        }


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    kind: str
    last_offset: int
    first_offset: int | None  # oldest retained offset, None if nothing retained


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    time_ms: int
    stream: str
    query: str | None
    reason: str
    path: str | None
    data: bytes


class Txn:
    """The writer's view of one open transaction (runs in the writer thread)."""

    def __init__(self, conn: sqlite3.Connection, store: Store) -> None:
        self.conn = conn
        self._store = store
        self._rows: list[tuple[int, int, int, str | None, str]] = []  # to INSERT
        self._dead: list[tuple[int, str, str | None, str, str | None, str]] = []
        self._keys: dict[int, set[str]] = {}
        self._before: dict[str, int] = {}
        self.published: dict[str, list[Message]] = {}
        self.now_ms = int(time.time() * 1000)

    def append(self, topic: str, time_ms: int, key: str | None, data: bytes) -> int | None:
        """Append one message; return its offset, or None if ``key`` is already stored."""
        offsets = self.append_many(topic, [(time_ms, key, data)])
        return offsets[0] if offsets else None

    def append_many(
        self, topic: str, items: Sequence[tuple[int, str | None, bytes]]
    ) -> list[int | None]:
        """Append ``(time_ms, key, data)`` messages in order; return each one's
        offset, or None for a duplicate (its key is stored, or came earlier)."""
        store = self._store
        topic_id = store._topic_ids[topic]
        keys = [k for _, k, _ in items if k is not None]
        taken: set[str] = set()
        if keys:
            # One lookup for the whole batch: per-row queries would each release
            # and re-take the GIL, which a busy event loop makes slow.
            seen = self._keys.setdefault(topic_id, set())
            taken = {k for k in keys if k in seen}
            taken.update(
                r[0]
                for r in self.conn.execute(
                    "SELECT key FROM messages WHERE topic_id = ? AND key IN"
                    " (SELECT value FROM json_each(?))",
                    (topic_id, orjson.dumps(keys).decode()),
                )
            )
        if topic not in self._before:
            self._before[topic] = store._last_offsets[topic]
        offset = store._last_offsets[topic]
        pub = self.published.get(topic)
        if pub is None:
            pub = self.published[topic] = []
        rows = self._rows
        out: list[int | None] = []
        for time_ms, key, data in items:
            if key is not None:
                if key in taken:
                    out.append(None)
                    continue
                taken.add(key)
            offset += 1
            rows.append((topic_id, offset, time_ms, key, data.decode()))
            pub.append(Message(offset, time_ms, data))
            out.append(offset)
        store._last_offsets[topic] = offset
        if keys:
            self._keys[topic_id].update(k for k in keys if k is not None)
        return out

    def dead_letter(
        self, stream: str, query: str | None, reason: str, path: str | None, data: bytes
    ) -> None:
        self._dead.append((self.now_ms, stream, query, reason, path, data.decode(errors="replace")))

    def flush(self) -> None:
        """Write what was appended so far (still inside the transaction)."""
        conn = self.conn
        if self._rows:
            insert_rows(conn, INSERT_MESSAGES, 5, self._rows)
            conn.executemany(
                "UPDATE topics SET last_offset = ? WHERE name = ?",
                [(self._store._last_offsets[t], t) for t in self._before],
            )
            self._rows.clear()
        if self._dead:
            conn.executemany(
                "INSERT INTO dead_letters (time_ms, stream, query, reason, path, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                self._dead,
            )
            self._dead.clear()

    def mark(self) -> tuple[dict[str, int], dict[str, int]]:
        """Remember the offsets and published lengths (after a flush)."""
        return dict(self._store._last_offsets), {t: len(m) for t, m in self.published.items()}

    def restore(self, mark: tuple[dict[str, int], dict[str, int]]) -> None:
        """Forget everything appended since ``mark`` (its rows were rolled back)."""
        offsets, published = mark
        self._rows.clear()
        self._dead.clear()
        self._store._last_offsets.update(offsets)
        for topic in list(self.published):
            keep = published.get(topic, 0)
            if keep:
                del self.published[topic][keep:]
            else:
                del self.published[topic]
        for keys in self._keys.values():
            keys.clear()  # conservative: re-check the database for later appends

    def delete_topic_messages(self, topic: str) -> None:
        """Forget a topic's retained messages (its offsets keep counting up)."""
        self.flush()
        self.conn.execute(
            "DELETE FROM messages WHERE topic_id = ?", (self._store._topic_ids[topic],)
        )

    def rollback_offsets(self) -> None:
        self._store._last_offsets.update(self._before)


class Job(Protocol):
    size: int
    future: asyncio.Future[Any]

    def run(self, txn: Txn) -> Any: ...


@dataclass(eq=False)
class IngestJob:
    """Accepted (and dead-lettered) events of one ingest request."""

    topic: str
    events: Sequence[Prepared]
    invalid: Sequence[Invalid]
    future: asyncio.Future[Any]
    size: int = 0

    def run(self, txn: Txn) -> WriteResult:
        offsets = txn.append_many(self.topic, [(e.time_ms, e.key, e.data) for e in self.events])
        stored = [o for o in offsets if o is not None]
        for inv in self.invalid:
            txn.dead_letter(self.topic, None, inv.message, inv.path, inv.data)
        first, last = (stored[0], stored[-1]) if stored else (None, None)
        return WriteResult(len(stored), len(offsets) - len(stored), first, last, len(self.invalid))


@dataclass(eq=False)
class FnJob:
    """An arbitrary write (e.g. a query's outputs plus its checkpoint)."""

    fn: Callable[[Txn], Any]
    future: asyncio.Future[Any]
    size: int = 1

    def run(self, txn: Txn) -> Any:
        return self.fn(txn)


@dataclass
class _Pending:
    jobs: asyncio.Queue[Job] = field(default_factory=asyncio.Queue)
    events: int = 0


class Store:
    """The durable store. Use ``async with Store.open(...) as store``."""

    def __init__(
        self,
        path: Path | str,
        *,
        durability: str = "full",
        max_pending_events: int = 100_000,
        on_commit: Callable[[list[Committed]], None] | None = None,
    ) -> None:
        self.path = str(path)
        self.durability = durability
        self.max_pending_events = max_pending_events
        self.on_commit = on_commit
        self._topic_ids: dict[str, int] = {}
        self._kinds: dict[str, str] = {}
        self._last_offsets: dict[str, int] = {}
        self._pending = _Pending()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtis-writer")
        self._conn: sqlite3.Connection | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._reader_list: list[aiosqlite.Connection] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._closing = False
        self.commits = 0  # transactions committed, for tests and metrics
        # called after each commit with (seconds, writes in the batch); see metrics.py
        self.observe_commit: Callable[[float, int], None] | None = None

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: Path | str,
        topics: Iterable[tuple[str, str]],
        **kwargs: Any,
    ) -> AsyncIterator[Store]:
        store = cls(path, **kwargs)
        await store.start(topics)
        try:
            yield store
        finally:
            await store.close()

    async def start(self, topics: Iterable[tuple[str, str]]) -> None:
        """Open the database, create the schema, register ``(name, kind)`` topics."""
        loop = asyncio.get_running_loop()
        topic_list = list(topics)
        try:
            await loop.run_in_executor(self._executor, self._open_sync, topic_list)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open database {self.path}: {e}") from e
        for _ in range(READ_CONNECTIONS):
            conn = await aiosqlite.connect(self.path)
            await conn.execute("PRAGMA query_only = ON")
            self._reader_list.append(conn)
            self._readers.put_nowait(conn)
        self._writer = asyncio.create_task(self._write_loop(), name="rtis-writer")

    def _open_sync(self, topics: list[tuple[str, str]]) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        sync = "FULL" if self.durability == "full" else "NORMAL"
        conn.execute(f"PRAGMA synchronous = {sync}")
        conn.execute("PRAGMA busy_timeout = 5000")
        # After a checkpoint resets the WAL, cut its file back to this size, so
        # one burst does not leave a large WAL behind for good (see operations.md).
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        conn.executescript(SCHEMA)
        for name, kind in topics:
            conn.execute("INSERT OR IGNORE INTO topics (name, kind) VALUES (?, ?)", (name, kind))
        for tid, name, kind, last in conn.execute("SELECT id, name, kind, last_offset FROM topics"):
            self._topic_ids[name] = tid
            self._kinds[name] = kind
            self._last_offsets[name] = last
        self._conn = conn

    async def close(self) -> None:
        """Commit everything already submitted, then close. Idempotent."""
        if self._closed or self._closing:
            while not self._closed:
                await asyncio.sleep(0.01)
            return
        self._closing = True
        try:
            if self._writer is not None:
                await self._pending.jobs.join()
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
            for conn in self._reader_list:
                await conn.close()
            if self._conn is not None:
                conn_ = self._conn
                await asyncio.get_running_loop().run_in_executor(self._executor, conn_.close)
            self._executor.shutdown(wait=True)
        finally:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed or self._closing

    # -- writes ----------------------------------------------------------------

    @property
    def pending_events(self) -> int:
        return self._pending.events

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise StoreClosed("the store is shutting down")

    def _enqueue(self, job: Job, bounded: bool = True) -> None:
        self._check_open()
        pending = self._pending
        if bounded and pending.events and pending.events + job.size > self.max_pending_events:
            raise Overloaded(
                f"{pending.events} events are waiting to be written "
                f"(max_pending_events = {self.max_pending_events}); retry shortly"
            )
        pending.events += job.size
        pending.jobs.put_nowait(job)

    async def append(
        self, topic: str, events: Sequence[Prepared], invalid: Sequence[Invalid] = ()
    ) -> WriteResult:
        """Store ``events`` on ``topic`` (and ``invalid`` as dead letters) and wait
        until they are committed. Raises Overloaded when too much is pending."""
        if topic not in self._topic_ids:
            raise KeyError(topic)
        fut: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        job = IngestJob(topic, events, invalid, fut, size=max(1, len(events) + len(invalid)))
        self._enqueue(job)
        return await fut

    async def write(self, fn: Callable[[Txn], Any], size: int = 1, bounded: bool = True) -> Any:
        """Run ``fn(txn)`` inside a writer transaction and wait for the commit.
        ``bounded=False`` exempts the write from max_pending_events (for query
        runners, which have at most one write in flight each)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(FnJob(fn, fut, size), bounded)
        return await fut

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._pending.jobs
        while True:
            job = await queue.get()
            batch = [job]
            n = job.size
            while n < MAX_EVENTS_PER_COMMIT and not queue.empty():
                nxt = queue.get_nowait()
                batch.append(nxt)
                n += nxt.size
            started = time.perf_counter()
            try:
                results, published = await loop.run_in_executor(
                    self._executor, self._commit_sync, batch
                )
            except BaseException as e:
                self._pending.events -= n
                for j in batch:
                    queue.task_done()
                    if not j.future.done():
                        j.future.set_exception(
                            e
                            if isinstance(e, StoreUnavailable)
                            else StoreUnavailable(f"the database could not commit: {e}")
                        )
                if isinstance(e, asyncio.CancelledError):
                    raise
                log.error("commit failed: %s", e)
                continue
            self._pending.events -= n
            self.commits += 1
            if self.observe_commit is not None:
                self.observe_commit(time.perf_counter() - started, n)
            if published and self.on_commit is not None:
                try:
                    self.on_commit(published)
                except Exception:
                    log.exception("on_commit callback failed")
            for j, (ok, res) in zip(batch, results, strict=True):
                queue.task_done()
                if j.future.done():
                    continue
                if ok:
                    j.future.set_result(res)
                else:
                    j.future.set_exception(res)

    def _commit_sync(self, batch: list[Job]) -> tuple[list[tuple[bool, Any]], list[Committed]]:
        conn = self._conn
        assert conn is not None
        txn = Txn(conn, self)
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for job in batch:
                if isinstance(job, IngestJob):  # cannot fail: validated before
                    results.append((True, job.run(txn)))
                    continue
                # Any other job that raises is answered with its error; a
                # savepoint undoes its own writes so the others still commit.
                txn.flush()
                mark = txn.mark()
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, job.run(txn)))
                    txn.flush()
                    conn.execute("RELEASE job")
                except Exception as e:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    txn.restore(mark)
                    results.append((False, e))
            txn.flush()
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            txn.rollback_offsets()
            raise
        published = [Committed(t, msgs) for t, msgs in txn.published.items()]
        return results, published

    # -- reads -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._closed:
            raise StoreClosed("the store is closed")
        conn = await self._readers.get()
        try:
            yield conn
        finally:
            self._readers.put_nowait(conn)

    def topic_id(self, topic: str) -> int:
        """The id of ``topic`` in the ``topics`` table (``messages.topic_id``)."""
        return self._topic_ids[topic]

    def topics(self) -> dict[str, str]:
        """Every topic name -> kind."""
        return dict(self._kinds)

    def last_offset(self, topic: str) -> int:
        """The last committed offset of ``topic`` (0 if none)."""
        return self._last_offsets[topic]

    async def read_messages(self, topic: str, since: int, limit: int) -> list[Message]:
        """Retained messages of ``topic`` with offset > ``since``, oldest first."""
        tid = self._topic_ids[topic]
        async with (
            self.reader() as conn,
            conn.execute(
                "SELECT offset, time_ms, data FROM messages"
                " WHERE topic_id = ? AND offset > ? ORDER BY offset LIMIT ?",
                (tid, since, limit),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [Message(r[0], r[1], r[2].encode()) for r in rows]

    async def first_offset(self, topic: str) -> int | None:
        """The oldest retained offset of ``topic``, or None if nothing is retained."""
        tid = self._topic_ids[topic]
        async with (
            self.reader() as conn,
            conn.execute("SELECT min(offset) FROM messages WHERE topic_id = ?", (tid,)) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def topic_infos(self) -> list[TopicInfo]:
        out = []
        for name in sorted(self._kinds):
            out.append(
                TopicInfo(
                    name, self._kinds[name], self._last_offsets[name], await self.first_offset(name)
                )
            )
        return out

    async def dead_letters(
        self, *, stream: str | None = None, query: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        sql = "SELECT id, time_ms, stream, query, reason, path, data FROM dead_letters"
        where: list[str] = []
        args: list[Any] = []
        if stream is not None:
            where.append("stream = ?")
            args.append(stream)
        if query is not None:
            where.append("query = ?")
            args.append(query)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        async with self.reader() as conn, conn.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], r[6].encode()) for r in rows]
