"""Continuous queries at run time: one runner task per query, fed after commits.

Data flow: the store commits a batch of a stream's events -> ``Pipeline.feed``
(called from the store's ``on_commit``, never blocking) puts it on each of the
stream's query runners' bounded queues -> the runner applies its compiled
query -> it writes the output rows, the output messages of its topic, its
dead letters and its checkpoint in ONE store transaction -> the store
publishes the outputs after that commit.

A runner that falls behind never slows ingest: when its queue is full the
queue is emptied and replaced by a marker, and the runner reads the log from
its checkpoint in pages until it reaches the head, then takes live batches
again. A runner tracks its position (the last source offset whose effect is
committed) and drops anything at or below it, and reads the log whenever the
next live batch does not follow on, so nothing is skipped or done twice. After
a crash it resumes from its checkpoint; a query whose SQL changed is
recomputed from the retained log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .config import Config
from .errors import ConfigError
from .store import Committed, Message, Store, Txn, insert_rows

log = logging.getLogger("rtis.pipeline")

PAGE = 5000  # source messages read from the log per catch-up step
COALESCE = 10_000  # most source messages processed (and committed) in one step
MAX_QUEUED_MESSAGES = 50_000  # per query; past it the query catches up from the log
RETRY_DELAY = 1.0  # seconds before a failed query runner retries
RESERVED_TABLES = frozenset({"topics", "messages", "dead_letters", "checkpoints", "events"})


def compile_queries(config: Config) -> dict[str, Any]:
    """Compile every query of ``config``; return name -> CompiledQuery, or raise
    ConfigError naming each bad query (with line and column in its SQL)."""
    if not config.queries:
        return {}
    from .sql import SqlError, WindowOptions, compile_query, load_functions

    errors: list[str] = []
    try:
        functions = load_functions(config.functions)
    except (SqlError, ValueError) as e:
        raise ConfigError([f"functions: {e}"]) from e
    compiled: dict[str, Any] = {}
    time_fields = {n: s.time_field for n, s in config.streams.items()}
    for name, q in config.queries.items():
        if name.lower() in RESERVED_TABLES or name.lower().startswith("sqlite_"):
            errors.append(f"queries.{name}: the name is reserved for rtis's own tables")
            continue
        try:
            options = WindowOptions(
                lateness_ms=round(q.lateness * 1000),
                emit=q.emit,
                late=q.late,
                emit_interval=q.emit_interval,
                idle_timeout=q.idle_timeout,
            )
            compiled[name] = compile_query(
                name,
                q.sql,
                streams=config.streams.keys(),
                functions=functions,
                time_fields=time_fields,
                options=options,
            )
        except SqlError as e:
            errors.append(f"queries.{name}.sql: {e}")
        except ValueError as e:
            errors.append(f"queries.{name}.sql: {e}")
    if errors:
        raise ConfigError(errors)
    return compiled


def quote(name: str) -> str:
    """A SQLite identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


INT64 = 2**63


def sql_value(value: Any) -> Any:
    """A Python value as stored in a result column: JSON text for objects and
    arrays, text for integers beyond SQLite's 64 bits."""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    if isinstance(value, int) and not -INT64 <= value < INT64:
        return str(value)
    return value


class _CatchUp:
    """Queue marker: the queue overflowed, read the log."""


CATCH_UP = _CatchUp()


@dataclass
class RunnerStats:
    processed: int = 0
    emitted: int = 0
    errors: int = 0
    catch_ups: int = 0
    late: int = 0  # aggregate queries: events that came after their window closed


class QueryRunner:
    """Runs one compiled stateless query."""

    def __init__(self, query: Any, store: Store, max_queued: int = MAX_QUEUED_MESSAGES) -> None:
        self.query = query
        self.name: str = query.name
        self.source: str = query.source
        self.store = store
        self.max_queued = max_queued
        self.position = 0  # last source offset whose effect is committed
        self.stats = RunnerStats()
        self._queue: deque[Committed | _CatchUp] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._columns: tuple[str, ...] = (
            ("data", *query.columns) if query.select_star else tuple(query.columns)
        )
        self._insert_sql = "INSERT INTO {} (offset, time_ms{}) VALUES ".format(
            quote(self.name), "".join(", " + quote(c) for c in self._columns)
        )
        self.task: asyncio.Task[None] | None = None

    # -- feeding (never blocks) ------------------------------------------------

    def feed(self, batch: Committed) -> None:
        if self._queued + len(batch.messages) > self.max_queued:
            # Too far behind: forget the queue and read the log instead.
            self._queue.clear()
            self._queued = 0
            self._queue.append(CATCH_UP)
        else:
            self._queue.append(batch)
            self._queued += len(batch.messages)
        self._wakeup.set()

    @property
    def behind(self) -> int:
        """Source messages committed but not yet processed."""
        return max(0, self.store.last_offset(self.source) - self.position)

    # -- the runner task -------------------------------------------------------

    async def start(self) -> None:
        self.position = await self.store.write(self._prepare)
        self.task = asyncio.create_task(self._run(), name=f"rtis-query-{self.name}")

    def _prepare(self, txn: Txn) -> int:
        """Create the result table; reset it if the query's SQL changed.
        Returns the checkpoint to resume from."""
        conn = txn.conn
        row = conn.execute(
            "SELECT sql, offset FROM checkpoints WHERE query = ?", (self.name,)
        ).fetchone()
        table = quote(self.name)
        if row is not None and row[0] == self.query.sql:
            return int(row[1])
        if row is not None:
            log.info("query %s: its SQL changed; recomputing from the retained log", self.name)
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        txn.delete_topic_messages(self.name)
        cols = "".join(f", {quote(c)}" for c in self._columns)
        conn.execute(f"CREATE TABLE {table} (offset INTEGER PRIMARY KEY, time_ms INTEGER{cols})")
        conn.execute(f"CREATE INDEX {quote(self.name + '_time')} ON {table} (time_ms)")
        conn.execute(
            "INSERT INTO checkpoints (query, sql, offset) VALUES (?, ?, 0)"
            " ON CONFLICT (query) DO UPDATE SET sql = excluded.sql, offset = 0, state = NULL",
            (self.name, self.query.sql),
        )
        return 0

    async def _run(self) -> None:
        while True:
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                # e.g. the database is unavailable: nothing past the checkpoint
                # was committed, so retrying from it later loses nothing.
                log.exception("query %s failed; retrying from offset %d", self.name, self.position)
                self._queue.clear()
                self._queued = 0
                await asyncio.sleep(RETRY_DELAY)

    async def _loop(self) -> None:
        await self._catch_up()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, _CatchUp):
                    await self._catch_up()
                    continue
                self._queued -= len(item.messages)
                messages = item.messages
                if messages[-1].offset <= self.position:
                    continue
                if messages[0].offset > self.position + 1:
                    await self._catch_up()  # a gap: read it from the log
                    continue
                if messages[0].offset <= self.position:
                    messages = [m for m in messages if m.offset > self.position]
                await self._process(self._coalesce(messages))

    def _coalesce(self, messages: list[Message]) -> list[Message]:
        """Add the batches queued right behind ``messages`` that follow on, so
        that what piled up during the last commit is processed and committed
        in one go: under load the batches grow by themselves."""
        queue = self._queue
        if not queue:
            return messages
        merged = list(messages)
        while queue and len(merged) < COALESCE:
            nxt = queue[0]
            if isinstance(nxt, _CatchUp) or nxt.messages[0].offset != merged[-1].offset + 1:
                break
            queue.popleft()
            self._queued -= len(nxt.messages)
            merged.extend(nxt.messages)
        return merged

    async def _catch_up(self) -> None:
        """Read the log from the checkpoint until there is nothing more."""
        self.stats.catch_ups += 1
        while True:
            messages = await self.store.read_messages(self.source, self.position, PAGE)
            if not messages:
                return
            await self._process(messages)

    async def _process(self, messages: list[Message]) -> None:
        run = self.query.run
        outputs: list[tuple[int, dict[str, Any], bytes]] = []
        failures: list[tuple[Message, str]] = []
        for m in messages:
            try:
                out = run(m.parsed())
                if out is not None:
                    outputs.append((m.time_ms, out, orjson.dumps(out)))
            except Exception as e:  # EvalError, a failing user function, an unencodable value
                failures.append((m, f"{type(e).__name__}: {e}" if not str(e) else str(e)))
        last = messages[-1].offset
        await self.store.write(
            lambda txn: self._commit(txn, outputs, failures, last),
            size=len(outputs) + len(failures) + 1,
            bounded=False,
        )
        self.position = last
        self.stats.processed += len(messages)
        self.stats.emitted += len(outputs)
        self.stats.errors += len(failures)

    def _commit(
        self,
        txn: Txn,
        outputs: list[tuple[int, dict[str, Any], bytes]],
        failures: list[tuple[Message, str]],
        last: int,
    ) -> None:
        """Outputs, dead letters and the checkpoint: one transaction (writer thread)."""
        if outputs:
            offsets = txn.append_many(self.name, [(t, None, data) for t, _, data in outputs])
            extra = self.query.columns
            if self.query.select_star:
                rows = [
                    (o, t, data.decode(), *[sql_value(out[c]) for c in extra])
                    for o, (t, out, data) in zip(offsets, outputs, strict=True)
                ]
            else:
                rows = [
                    (o, t, *[sql_value(out[c]) for c in extra])
                    for o, (t, out, _) in zip(offsets, outputs, strict=True)
                ]
            insert_rows(txn.conn, self._insert_sql, 2 + len(self._columns), rows)
        for m, reason in failures:
            txn.dead_letter(self.source, self.name, reason, None, m.data)
        txn.conn.execute("UPDATE checkpoints SET offset = ? WHERE query = ?", (last, self.name))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if not str(e) else str(e)


class WindowedRunner(QueryRunner):
    """Runs one aggregate query (GROUP BY, windows): see :mod:`rtis.windows`.

    Each batch goes through the window state; the rows it emits, corrections of
    late events, dead letters, the checkpoint AND the serialised window state
    commit in one transaction, so a restart resumes exactly where the stored
    rows left off. A ticker task advances the watermark with the wall clock
    while the stream is idle (and flushes throttled changes); it shares a lock
    with batch processing, since both change the window state.

    Stored table: ``offset`` (of the message that last wrote the row),
    ``time_ms`` (window start; live tables: the key's latest event time), the
    output columns, ``revision`` (windows only), hidden ``<avg>__sum`` and
    ``<avg>__count`` columns for re-aggregation, and ``_key`` (window start and
    group key as JSON, the primary key rows are upserted by). With
    late = "update" the accumulators of closed windows are kept in the table
    ``"<name>:late"`` so a late event can correct its window's row.
    """

    def __init__(
        self,
        query: Any,
        store: Store,
        max_queued: int = MAX_QUEUED_MESSAGES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from .windows import WindowState

        super().__init__(query, store, max_queued)
        self.clock = clock
        self.state = WindowState(query.state_plan, query.options)
        self.windowed: bool = query.window.kind != "none"
        self.keep_late: bool = self.windowed and query.options.late == "update"
        self._committed_state: bytes | None = None
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        o = query.options
        interval = min(1.0, o.idle_timeout / 4)
        if o.emit == "changes":
            interval = min(interval, o.emit_interval / 2)
        self.tick_interval = max(0.02, interval)
        self._visible: tuple[str, ...] = tuple(query.columns)
        self._hidden: tuple[str, ...] = tuple(query.hidden_columns)
        stored = [
            "offset",
            "time_ms",
            *self._visible,
            *(["revision"] if self.windowed else []),
            *self._hidden,
            "_key",
        ]
        table = quote(self.name)
        self._late_table = quote(self.name + ":late")
        self._upsert_sql = (
            f"INSERT INTO {table} ({', '.join(quote(c) for c in stored)})"
            f" VALUES ({', '.join('?' * len(stored))}) ON CONFLICT (_key) DO UPDATE SET "
            + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in stored[:-1])
        )
        self._delete_sql = f"DELETE FROM {table} WHERE _key = ?"

    async def start(self) -> None:
        self.position, blob = await self.store.write(self._prepare)
        if blob is not None:
            self.state.restore(blob, self.clock())
        self._committed_state = self.state.snapshot()
        self.task = asyncio.create_task(self._run(), name=f"rtis-query-{self.name}")
        self._ticker = asyncio.create_task(self._tick_loop(), name=f"rtis-ticker-{self.name}")

    def _prepare(self, txn: Txn) -> tuple[int, bytes | None]:  # type: ignore[override]
        """Create the tables; reset them if the query or its window settings changed.
        Returns the checkpoint and the window state to resume from."""
        conn = txn.conn
        fingerprint = self.query.fingerprint
        row = conn.execute(
            "SELECT sql, offset, state FROM checkpoints WHERE query = ?", (self.name,)
        ).fetchone()
        if row is not None and row[0] == fingerprint:
            return int(row[1]), row[2]
        if row is not None:
            log.info("query %s: its SQL or window settings changed; recomputing", self.name)
        table = quote(self.name)
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"DROP TABLE IF EXISTS {self._late_table}")
        txn.delete_topic_messages(self.name)
        cols = "".join(f", {quote(c)}" for c in self._visible)
        revision = ", revision INTEGER NOT NULL DEFAULT 0" if self.windowed else ""
        hidden = "".join(f", {quote(c)}" for c in self._hidden)
        conn.execute(
            f"CREATE TABLE {table} (offset INTEGER NOT NULL, time_ms INTEGER NOT NULL"
            f"{cols}{revision}{hidden}, _key TEXT PRIMARY KEY)"
        )
        conn.execute(f"CREATE INDEX {quote(self.name + '_time')} ON {table} (time_ms)")
        conn.execute(f"CREATE INDEX {quote(self.name + '_offset')} ON {table} (offset)")
        if self.keep_late:
            conn.execute(
                f"CREATE TABLE {self._late_table} (_key TEXT PRIMARY KEY, acc TEXT NOT NULL,"
                " revision INTEGER NOT NULL)"
            )
        conn.execute(
            "INSERT INTO checkpoints (query, sql, offset) VALUES (?, ?, 0)"
            " ON CONFLICT (query) DO UPDATE SET sql = excluded.sql, offset = 0, state = NULL",
            (self.name, fingerprint),
        )
        return 0, None

    async def _loop(self) -> None:
        # After a failed commit (the runner retries from its checkpoint) the window
        # state must be the committed one again, or events would count twice.
        async with self._lock:
            if self._committed_state is not None:
                self.state.restore(self._committed_state, self.clock())
        await super()._loop()

    async def _process(self, messages: list[Message]) -> None:
        async with self._lock:
            state = self.state
            now = self.clock()
            failures: list[tuple[Message, str]] = []
            late_updates: list[Any] = []
            late = 0
            for m in messages:
                try:
                    result = state.add(m.parsed(), m.time_ms, now)
                except Exception as e:  # EvalError, a failing user function
                    failures.append((m, _reason(e)))
                    continue
                if result is not None:
                    late += 1
                    if result.updates:
                        late_updates.extend(result.updates)
                    else:
                        failures.append((m, result.reason))
            last = messages[-1].offset
            await self._commit_state(failures, late_updates, last, now)
            self.position = last
            self.stats.processed += len(messages)
            self.stats.errors += len(failures) - (late - len(late_updates) if late else 0)
            self.stats.late += late

    async def tick(self) -> None:
        """Advance the watermark with the wall clock if the stream is idle, flush
        throttled changes, and commit what that emits."""
        if self._queue or self.behind:
            return  # not idle: events are waiting
        async with self._lock:
            now = self.clock()
            self.state.advance(now)
            await self._commit_state([], [], self.position, now)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("query %s: the idle watermark could not be committed", self.name)

    async def _commit_state(
        self,
        failures: list[tuple[Message, str]],
        late_updates: list[Any],
        last: int,
        now: float,
    ) -> None:
        """Outputs, corrections, dead letters, the checkpoint and the window state:
        one transaction. On failure the state goes back to the committed one."""
        state = self.state
        emits = state.take(now)
        errors, state.errors = state.errors, []
        if not (emits or failures or late_updates or errors) and last == self.position:
            return
        snapshot = state.snapshot()
        try:
            published = await self.store.write(
                lambda txn: self._commit_windows(
                    txn, emits, late_updates, failures, errors, last, snapshot
                ),
                size=len(emits) + len(late_updates) + len(failures) + 1,
                bounded=False,
            )
        except BaseException:
            if self._committed_state is not None:
                state.restore(self._committed_state, now)
            raise
        self._committed_state = snapshot
        self.stats.emitted += published

    def _commit_windows(
        self,
        txn: Txn,
        emits: list[Any],
        late_updates: list[Any],
        failures: list[tuple[Message, str]],
        errors: list[str],
        last: int,
        snapshot: bytes,
    ) -> int:
        """Runs in the writer thread; returns the number of messages published."""
        conn = txn.conn
        published = 0
        late_rows = []
        for e in emits:
            published += self._store_emit(txn, e, 0)
            if self.keep_late and e.final and e.acc is not None:
                late_rows.append((e.ident, e.acc.decode(), 0))
        if late_rows:
            conn.executemany(
                f"INSERT OR REPLACE INTO {self._late_table} (_key, acc, revision) VALUES (?, ?, ?)",
                late_rows,
            )
        for u in late_updates:
            row = conn.execute(
                f"SELECT acc, revision FROM {self._late_table} WHERE _key = ?", (u.ident,)
            ).fetchone()
            data, emit = self.state.apply_late(row[0].encode() if row else None, u)
            revision = row[1] + 1 if row else 1
            conn.execute(
                f"INSERT OR REPLACE INTO {self._late_table} (_key, acc, revision) VALUES (?, ?, ?)",
                (u.ident, data.decode(), revision),
            )
            if emit is not None:
                published += self._store_emit(txn, emit, revision)
        for m, reason in failures:
            txn.dead_letter(self.source, self.name, reason, None, m.data)
        for reason in errors + self.state.errors:
            txn.dead_letter(self.source, self.name, reason, None, b"{}")
        self.state.errors.clear()
        conn.execute(
            "UPDATE checkpoints SET offset = ?, state = ? WHERE query = ?",
            (last, snapshot, self.name),
        )
        return published

    def _store_emit(self, txn: Txn, e: Any, revision: int) -> int:
        """Upsert (or retract) one emitted row and publish it; returns messages published."""
        conn = txn.conn
        if e.retract:
            conn.executemany(self._delete_sql, [(i,) for i in e.retract])
        if not e.keep and not e.retract:
            return 0
        data = dict(e.row)
        if revision:
            data["revision"] = revision
        if not e.keep:
            data["retracted"] = True
        offset = txn.append(self.name, e.time_ms, None, orjson.dumps(data))
        if e.keep:
            values = [sql_value(e.row.get(c)) for c in self._visible]
            if self.windowed:
                values.append(revision)
            values.extend(e.hidden[h] for h in self._hidden)
            conn.execute(self._upsert_sql, (offset, e.time_ms, *values, e.ident))
        return 1

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await super().stop()


class Pipeline:
    """All query runners; ``feed`` is wired to the store's ``on_commit``."""

    def __init__(self, queries: Iterable[Any], store: Store) -> None:
        from .sql_aggregate import AggregateQuery

        self.runners: list[QueryRunner] = [
            WindowedRunner(q, store) if isinstance(q, AggregateQuery) else QueryRunner(q, store)
            for q in queries
        ]
        self._by_source: dict[str, list[QueryRunner]] = {}
        for r in self.runners:
            self._by_source.setdefault(r.source, []).append(r)

    def feed(self, batches: Iterable[Committed]) -> None:
        for batch in batches:
            for runner in self._by_source.get(batch.topic, ()):
                runner.feed(batch)

    async def start(self) -> None:
        for r in self.runners:
            await r.start()

    async def stop(self) -> None:
        for r in self.runners:
            await r.stop()

    def running(self) -> bool:
        return all(r.task is not None and not r.task.done() for r in self.runners)

