"""Retention: purge expired topic history and dead letters in the background.

Every ``retention_interval`` seconds, for each stream and query with a
``retention``, the oldest messages of its topic are deleted in offset order
while their time is older than ``now - retention``; dead letters likewise
with ``server.dead_letter_retention``. Deleting from the front keeps each
topic's retained history one contiguous run of offsets ending at the head,
which is what ``first_offset`` and a subscription's ``recovered`` flag rely
on; an event whose time lies in the future therefore holds back the purge of
what follows it until it expires itself (Kafka's time-based retention does
the same).

Purging never costs ingest more than a few milliseconds at a time: each step
is one transaction of at most ``BATCH_ROWS`` rows through ``Store.write``
(sharing the group commit with whatever ingest is pending), and the purger
sleeps between steps for as long as the step took, so it takes at most about
half of the writer's time while there is a backlog. Offsets never restart:
the next offset lives in ``topics.last_offset``, which purging leaves alone.

A stream's events are never purged before every query reading the stream has
processed them (its checkpoint), so a query that is behind or recomputing
loses nothing to retention. A query topic's result rows (the query's own
table) go with its messages: both share their offsets.

The purge steps (:func:`purge_messages`, :func:`purge_dead_letters`) are
plain functions over a sqlite3 connection, run in the writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config
from .errors import Overloaded, StoreClosed
from .store import Store, Txn

log = logging.getLogger("rtis.retention")

BATCH_ROWS = 1000
MIN_INTERVAL = 0.01
MIN_PAUSE = 0.001  # seconds between two steps, at least: let other writes go first


@dataclass(frozen=True)
class Rule:
    """Purge ``topic`` (None: the dead letters) older than ``seconds``."""

    topic: str | None
    seconds: float
    table: str | None = None  # a query's result table, purged with its messages


def rules(config: Config) -> list[Rule]:
    """What the configuration asks to purge."""
    from .pipeline import quote

    out: list[Rule] = []
    for name, s in config.streams.items():
        if s.retention:
            out.append(Rule(name, s.retention))
    for name, q in config.queries.items():
        if q.retention:
            out.append(Rule(name, q.retention, quote(name)))
    if config.server.dead_letter_retention:
        out.append(Rule(None, config.server.dead_letter_retention))
    return out


def purge_messages(
    conn: sqlite3.Connection,
    topic_id: int,
    cutoff_ms: int,
    max_offset: int,
    limit: int = BATCH_ROWS,
    table: str | None = None,
) -> tuple[int, bool]:
    """Delete the oldest messages of a topic, in offset order, while their time
    is before ``cutoff_ms`` and their offset at most ``max_offset`` (and the
    rows of ``table`` with those offsets). At most ``limit`` rows. Returns
    (rows deleted, whether more may be due)."""
    rows = conn.execute(
        "SELECT offset, time_ms FROM messages WHERE topic_id = ? AND offset <= ?"
        " ORDER BY offset LIMIT ?",
        (topic_id, max_offset, limit),
    ).fetchall()
    upto, n = _expired_prefix(rows, cutoff_ms)
    if upto is None:
        return 0, False
    conn.execute("DELETE FROM messages WHERE topic_id = ? AND offset <= ?", (topic_id, upto))
    if table is not None:
        conn.execute(f"DELETE FROM {table} WHERE offset <= ?", (upto,))
    return n, n == limit


def purge_dead_letters(
    conn: sqlite3.Connection, cutoff_ms: int, limit: int = BATCH_ROWS
) -> tuple[int, bool]:
    """Delete the oldest dead letters while they are older than ``cutoff_ms``."""
    rows = conn.execute(
        "SELECT id, time_ms FROM dead_letters ORDER BY id LIMIT ?", (limit,)
    ).fetchall()
    upto, n = _expired_prefix(rows, cutoff_ms)
    if upto is None:
        return 0, False
    conn.execute("DELETE FROM dead_letters WHERE id <= ?", (upto,))
    return n, n == limit


def _expired_prefix(rows: list[Any], cutoff_ms: int) -> tuple[int | None, int]:
    """The last id of the leading rows older than the cutoff, and how many."""
    upto = None
    n = 0
    for row_id, time_ms in rows:
        if time_ms >= cutoff_ms:
            break
        upto = row_id
        n += 1
    return upto, n


class Retention:
    """The background purger of one running server."""

    def __init__(
        self,
        store: Store,
        config: Config,
        *,
        safe_offset: Callable[[str], int] | None = None,
        on_purged: Callable[[str, int], None] | None = None,
        on_run: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        batch: int = BATCH_ROWS,
    ) -> None:
        self.store = store
        self.rules = rules(config)
        self.interval = max(MIN_INTERVAL, config.server.retention_interval)
        self.safe_offset = safe_offset or store.last_offset
        self.on_purged = on_purged
        self.on_run = on_run
        self.clock = clock
        self.batch = batch
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.rules and self.task is None:
            self.task = asyncio.create_task(self._loop(), name="rtis-retention")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.purge()
            except StoreClosed:
                return
            except Overloaded:
                pass  # ingest is busy: try again next time
            except Exception:
                log.exception("retention pass failed; retrying in %.1fs", self.interval)
            await asyncio.sleep(self.interval)

    async def purge(self) -> dict[str, int]:
        """One pass over every rule; returns rows purged per topic ('' = dead letters)."""
        now_ms = int(self.clock() * 1000)
        purged: dict[str, int] = {}
        for rule in self.rules:
            cutoff = now_ms - int(rule.seconds * 1000)
            n = await self._steps(self._step(rule, cutoff))
            kind = "dead_letters" if rule.topic is None else "messages"
            purged[rule.topic or ""] = n
            if n and self.on_purged is not None:
                self.on_purged(kind, n)
            if n:
                log.debug("retention purged %d rows of %s", n, rule.topic or "the dead letters")
        if self.on_run is not None:
            self.on_run()
        return purged

    def _step(self, rule: Rule, cutoff: int) -> Callable[[Txn], tuple[int, bool]]:
        """One purge step of ``rule`` as a writer job."""
        batch = self.batch
        if rule.topic is None:
            return lambda txn: purge_dead_letters(txn.conn, cutoff, batch)
        topic_id = self.store.topic_id(rule.topic)
        max_offset = self.safe_offset(rule.topic)
        table = rule.table
        return lambda txn: purge_messages(txn.conn, topic_id, cutoff, max_offset, batch, table)

    async def _steps(self, step: Callable[[Txn], tuple[int, bool]]) -> int:
        total = 0
        while True:
            started = time.perf_counter()
            n, more = await self.store.write(step)
            n = int(n)
            total += n
            if not more:
                return total
            # as long again as the step took: at most ~half of the writer's time
            await asyncio.sleep(max(MIN_PAUSE, time.perf_counter() - started))


def for_app(store: Store, config: Config, pipeline: Any, metrics: Any = None) -> Retention:
    """The purger of a server: streams wait for the queries reading them, and
    what is purged is counted in ``metrics``."""
    runners = list(getattr(pipeline, "runners", ()))

    def safe_offset(topic: str) -> int:
        positions = [r.position for r in runners if r.source == topic]
        return min(positions, default=store.last_offset(topic))

    return Retention(
        store,
        config,
        safe_offset=safe_offset,
        on_purged=None if metrics is None else metrics.purged,
        on_run=None if metrics is None else metrics.retention_ran,
    )
