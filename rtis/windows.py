"""Window state of an aggregate query: events in, rows out.

This module owns the event-time logic of ``GROUP BY`` queries: assigning
events to TUMBLE, HOP and SESSION windows (or to one live row per key when
there is no window), accumulating the aggregates, the watermark (the largest
event time seen minus ``lateness``, pushed on by the wall clock when the
stream is idle), closing windows, throttling ``emit = "changes"``, late events
and the snapshot of all of it as bytes.

It must stay pure: no asyncio, no I/O, no clock of its own. Every method that
depends on time takes ``now`` (seconds, any monotonic origin), so tests drive
it with a fake clock. The compiled query (:mod:`rtis.sql_aggregate`) hands it
closures in an :class:`AggregatePlan`; the pipeline stores and publishes what
:meth:`WindowState.take` returns, in the transaction that also stores
:meth:`WindowState.snapshot`.

Memory: a closed window is deleted as it is emitted; what stays is the open
windows (one accumulator per key per open window), the live table's rows (one
per key, for as long as the query runs: that is what a live table is), and the
keys waiting for a throttled update.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from rtis.sql_values import EvalError, Row, describe, fit_int

Key = tuple[Any, ...]
Acc = list[Any]  # one accumulator per aggregate
Fn = Callable[[Row], Any]

SNAPSHOT_VERSION = 1

# ---------------------------------------------------------------- specs


@dataclass(frozen=True)
class WindowSpec:
    """``kind``: "tumble" | "hop" | "session" | "none" (a live table); sizes in ms."""

    kind: str
    size_ms: int = 0
    slide_ms: int = 0
    gap_ms: int = 0

    def describe(self) -> str:
        if self.kind == "tumble":
            return f"TUMBLE {format_duration(self.size_ms)}"
        if self.kind == "hop":
            return (
                f"HOP size {format_duration(self.size_ms)} every {format_duration(self.slide_ms)}"
            )
        if self.kind == "session":
            return f"SESSION gap {format_duration(self.gap_ms)}"
        return "none (a live table: one row per key, updated as events arrive)"


@dataclass(frozen=True)
class WindowOptions:
    """A query's window settings (``[queries.NAME]`` in config.toml)."""

    lateness_ms: int = 0
    emit: str = "final"  # "final" | "changes"
    late: str = "drop"  # "drop" | "update"
    emit_interval: float = 1.0  # seconds, wall clock
    idle_timeout: float = 5.0  # seconds, wall clock


AGGREGATE_KINDS = ("count_star", "count", "count_distinct", "sum", "avg", "min", "max")


@dataclass(frozen=True)
class Aggregate:
    """One aggregate call: ``kind`` is one of AGGREGATE_KINDS; ``arg`` reads the event."""

    kind: str
    arg: Fn | None
    sql: str
    field: str | None = None  # when the argument is a plain top-level field


@dataclass(frozen=True)
class AggregatePlan:
    """What the SQL compiler gives the window state: closures, no syntax trees.

    ``output(key, values, start_ms, end_ms)`` -> (row, keep): the output row of
    one group and whether HAVING keeps it. ``hidden`` lists extra stored columns
    for re-aggregation as (column, aggregate index, part): part 0 is the sum and
    part 1 the count of an ``avg``.
    """

    where: Callable[[Row], bool] | None
    keys: tuple[Fn, ...]
    aggregates: tuple[Aggregate, ...]
    window: WindowSpec
    output: Callable[[Key, list[Any], int | None, int | None], tuple[Row, bool]]
    hidden: tuple[tuple[str, int, int], ...] = ()


# ---------------------------------------------------------------- outputs


@dataclass(slots=True)
class Emit:
    """One row to store (upsert by ``ident``) and publish.

    ``keep`` False means HAVING rejects the row: store nothing, and if rows
    were shown under ``retract`` idents, delete them and publish a retraction.
    ``acc`` is set on a window's final row when late = "update" (its state is
    kept in the store for corrections).
    """

    ident: str
    key: Key
    start_ms: int | None
    end_ms: int | None
    time_ms: int
    row: Row
    hidden: dict[str, Any]
    keep: bool
    final: bool
    retract: list[str] = field(default_factory=list)
    acc: bytes | None = None


@dataclass(slots=True)
class LateUpdate:
    """A late event's contribution to one closed window (late = "update")."""

    ident: str
    key: Key
    start_ms: int
    end_ms: int
    acc: Acc


@dataclass(slots=True)
class Late:
    """What became of a late event: a dead-letter reason, or updates to apply."""

    reason: str
    updates: list[LateUpdate]


# ---------------------------------------------------------------- accumulators


def _sum_check(sql: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        cls = v.__class__
        if cls is int or cls is float or v is None:
            return v
        if cls is bool:
            return int(v)
        raise EvalError(f"{sql} needs numbers, got {describe(v)}")

    return check


def _scalar_check(sql: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        cls = v.__class__
        if cls is dict or cls is list:
            raise EvalError(f"{sql} needs numbers or text, got {describe(v)}")
        if cls is bool:
            return int(v)
        return v

    return check


def value_order(v: Any) -> tuple[int, Any]:
    """SQLite's order between kinds: numbers before text."""
    return (1, v) if v.__class__ is str else (0, v)


def _init(kind: str) -> Any:
    if kind in ("count_star", "count"):
        return 0
    if kind == "count_distinct":
        return set()
    if kind == "avg":
        return [0, 0]
    return None  # sum, min, max: NULL until a non-NULL value


def _u_count_star(acc: Any, v: Any) -> Any:
    return acc + 1


def _u_count(acc: Any, v: Any) -> Any:
    return acc if v is None else acc + 1


def _u_sum(acc: Any, v: Any) -> Any:
    if v is None:
        return acc
    return v if acc is None else _add(acc, v)


def _u_avg(acc: Any, v: Any) -> Any:
    if v is not None:
        acc[0] = _add(acc[0], v)
        acc[1] += 1
    return acc


def _u_min(acc: Any, v: Any) -> Any:
    if v is None:
        return acc
    return v if acc is None or value_order(v) < value_order(acc) else acc


def _u_max(acc: Any, v: Any) -> Any:
    if v is None:
        return acc
    return v if acc is None or value_order(v) > value_order(acc) else acc


def _u_distinct(acc: Any, v: Any) -> Any:
    if v is not None:
        acc.add(v)
    return acc


_UPDATERS: dict[str, Callable[[Any, Any], Any]] = {
    "count_star": _u_count_star,
    "count": _u_count,
    "sum": _u_sum,
    "avg": _u_avg,
    "min": _u_min,
    "max": _u_max,
    "count_distinct": _u_distinct,
}


def _apply(kind: str, acc: Any, v: Any) -> Any:
    """acc updated with one (checked) value; sets and avg pairs are updated in place."""
    return _UPDATERS[kind](acc, v)


def _add(a: Any, b: Any) -> Any:
    r = a + b
    return fit_int(r) if r.__class__ is int else r


def merge_acc(kinds: tuple[str, ...], a: Acc, b: Acc) -> Acc:
    """The accumulators of the union of two sets of events."""
    out: Acc = []
    for kind, x, y in zip(kinds, a, b, strict=True):
        if kind in ("count_star", "count"):
            out.append(x + y)
        elif kind == "count_distinct":
            out.append(x | y)
        elif kind == "avg":
            out.append([_add(x[0], y[0]), x[1] + y[1]])
        elif kind == "sum":
            out.append(y if x is None else x if y is None else _add(x, y))
        elif kind == "min":
            out.append(y if x is None else x if y is None else min(x, y, key=value_order))
        else:
            out.append(y if x is None else x if y is None else max(x, y, key=value_order))
    return out


def final_values(kinds: tuple[str, ...], acc: Acc) -> list[Any]:
    out: list[Any] = []
    for kind, a in zip(kinds, acc, strict=True):
        if kind == "count_distinct":
            out.append(len(a))
        elif kind == "avg":
            out.append(a[0] / a[1] if a[1] else None)
        else:
            out.append(a)
    return out


def encode_acc(kinds: tuple[str, ...], acc: Acc) -> list[Any]:
    return [list(a) if k == "count_distinct" else a for k, a in zip(kinds, acc, strict=True)]


def decode_acc(kinds: tuple[str, ...], data: list[Any]) -> Acc:
    return [set(a) if k == "count_distinct" else a for k, a in zip(kinds, data, strict=True)]


# ---------------------------------------------------------------- time


@functools.lru_cache(maxsize=4096)  # window bounds repeat for every group of a window
def format_time(ms: int) -> str:
    """Epoch milliseconds -> "2026-12-03T16:20:00.000Z" (the form of message times)."""
    seconds, fraction = divmod(ms, 1000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{fraction:03d}Z"
    )


def format_duration(ms: int) -> str:
    if ms == 0:
        return "0s"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def ident_of(key: Key, start_ms: int | None) -> str:
    """The stored identity of a row: its window start and group key, as JSON."""
    parts = list(key) if start_ms is None else [start_ms, *key]
    return orjson.dumps(parts).decode()


# ---------------------------------------------------------------- the state


class WindowState:
    """Open windows, watermark and pending output of one aggregate query."""

    def __init__(self, plan: AggregatePlan, options: WindowOptions) -> None:
        self.plan = plan
        self.options = options
        self.window = plan.window
        self.kinds: tuple[str, ...] = tuple(a.kind for a in plan.aggregates)
        self._preps = tuple(self._prep(a) for a in plan.aggregates)
        self._updaters = tuple(_UPDATERS[k] for k in self.kinds)
        self._where = plan.where
        self._lateness = options.lateness_ms
        self._key = self._key_fn()
        kind = plan.window.kind
        self._add_group: Callable[[Key, list[Any], int], Late | None] = (
            self._add_live
            if kind == "none"
            else self._add_session
            if kind == "session"
            else self._add_tumble
            if kind == "tumble"
            else self._add_windowed
        )
        self.max_event_ms: int | None = None
        self.watermark_ms: int | None = None
        self.last_event_at: float | None = None  # wall clock (``now``) of the last event
        self.late_events = 0
        # tumble/hop: (start, end) -> key -> [acc, shown]; a heap of (end, start) to close.
        self._windows: dict[tuple[int, int], dict[Key, list[Any]]] = {}
        self._ends: list[tuple[int, int]] = []
        # session: key -> [[start, end, acc, shown idents], ...]; heap of (end, seq, start, key).
        self._sessions: dict[Key, list[list[Any]]] = {}
        self._session_ends: list[tuple[int, int, int, Key]] = []
        self._seq = 0
        # live table: key -> [acc, time_ms, shown]
        self._table: dict[Key, list[Any]] = {}
        # groups changed since they were last emitted (emit = changes, live tables)
        self._dirty: dict[tuple[Any, ...], None] = {}
        self._last_flush: float | None = None
        self._out: list[Emit] = []
        self.errors: list[str] = []  # rows that could not be computed, for the dead letters
        self._changes = options.emit == "changes"

    # -- sizes, for tests and metrics -------------------------------------------

    @property
    def open_windows(self) -> int:
        """Open (window, key) groups, sessions or live rows held in memory."""
        if self.window.kind == "session":
            return sum(len(s) for s in self._sessions.values())
        if self.window.kind == "none":
            return len(self._table)
        return sum(len(groups) for groups in self._windows.values())

    # -- events ----------------------------------------------------------------

    def _prep(self, agg: Aggregate) -> Callable[[Row], Any]:
        """The closure reading (and type-checking) an aggregate's argument."""
        arg = agg.arg
        if agg.kind == "count_star" or arg is None:
            return lambda r: 1
        name = agg.field
        if name is not None and agg.kind in ("sum", "avg", "min", "max"):
            # The common case, a plain field holding a number: no extra calls.
            slow = _sum_check(agg.sql) if agg.kind in ("sum", "avg") else _scalar_check(agg.sql)

            def field_value(r: Row) -> Any:
                v = r.get(name)
                cls = v.__class__
                if cls is int or cls is float or v is None:
                    return v
                return slow(v)

            return field_value
        if agg.kind in ("sum", "avg"):
            check = _sum_check(agg.sql)
        elif agg.kind == "count":
            return arg
        else:
            check = _scalar_check(agg.sql)
        return lambda r: check(arg(r))

    def add(self, row: Row, time_ms: int, now: float) -> Late | None:
        """Add one event at event time ``time_ms``; raises EvalError (nothing changed
        but the watermark). Returns what to do with it when it is late."""
        self.last_event_at = now
        try:
            where = self._where
            if where is not None and not where(row):
                self._advance(time_ms)
                return None
            key = self._key(row)
            values = [p(row) for p in self._preps]
        except EvalError:
            self._advance(time_ms)
            raise
        late = self._add_group(key, values, time_ms)
        top = self.max_event_ms
        if top is None or time_ms > top:
            self.max_event_ms = time_ms
            wm = time_ms - self._lateness
            if self.watermark_ms is None or wm > self.watermark_ms:
                ends = self._ends
                if (ends and ends[0][0] <= wm) or self.window.kind == "session":
                    self._raise_watermark(wm)
                else:
                    self.watermark_ms = wm  # nothing to close: the fast path
        if late is not None:
            self.late_events += 1
        return late

    def _key_fn(self) -> Callable[[Row], Key]:
        keys = self.plan.keys

        def check(v: Any) -> Any:
            if v.__class__ is dict or v.__class__ is list:
                raise EvalError(f"cannot group by {describe(v)}")
            return v

        if not keys:
            return lambda r: ()
        if len(keys) == 1:
            (k0,) = keys

            def key1(r: Row) -> Key:
                v = k0(r)
                if v.__class__ is dict or v.__class__ is list:
                    check(v)
                return (v,)

            return key1
        return lambda r: tuple([check(f(r)) for f in keys])

    def _new_acc(self, values: list[Any]) -> Acc:
        return [u(_init(k), v) for k, u, v in zip(self.kinds, self._updaters, values, strict=True)]

    def _update(self, acc: Acc, values: list[Any]) -> None:
        for i, u in enumerate(self._updaters):
            acc[i] = u(acc[i], values[i])

    def _add_live(self, key: Key, values: list[Any], time_ms: int) -> Late | None:
        slot = self._table.get(key)
        if slot is None:
            self._table[key] = [self._new_acc(values), time_ms, False]
        else:
            self._update(slot[0], values)
            if time_ms > slot[1]:
                slot[1] = time_ms
        self._dirty[key] = None
        return None

    def _starts(self, time_ms: int) -> list[int]:
        w = self.window
        if w.kind == "tumble":
            return [time_ms - time_ms % w.size_ms]
        last = time_ms - time_ms % w.slide_ms
        starts = []
        start = last
        while start > time_ms - w.size_ms:
            starts.append(start)
            start -= w.slide_ms
        starts.reverse()
        return starts

    def _add_tumble(self, key: Key, values: list[Any], time_ms: int) -> Late | None:
        """The common case, without the generality of _add_windowed."""
        size = self.window.size_ms
        start = time_ms - time_ms % size
        end = start + size
        wm = self.watermark_ms
        if wm is not None and end <= wm:
            return self._late(key, values, time_ms, [(start, end)])
        groups = self._windows.get((start, end))
        if groups is None:
            groups = self._windows[(start, end)] = {}
            heapq.heappush(self._ends, (end, start))
        slot = groups.get(key)
        if slot is None:
            groups[key] = [self._new_acc(values), False]
        else:
            acc = slot[0]
            for i, u in enumerate(self._updaters):
                acc[i] = u(acc[i], values[i])
        if self._changes:
            self._dirty[(start, end, key)] = None
        return None

    def _add_windowed(self, key: Key, values: list[Any], time_ms: int) -> Late | None:
        size = self.window.size_ms
        wm = self.watermark_ms
        closed: list[int] = []
        for start in self._starts(time_ms):
            end = start + size
            if wm is not None and end <= wm:
                closed.append(start)
                continue
            groups = self._windows.get((start, end))
            if groups is None:
                groups = self._windows[(start, end)] = {}
                heapq.heappush(self._ends, (end, start))
            slot = groups.get(key)
            if slot is None:
                groups[key] = [self._new_acc(values), False]
            else:
                self._update(slot[0], values)
            if self._changes:
                self._dirty[(start, end, key)] = None
        if not closed:
            return None
        return self._late(key, values, time_ms, [(s, s + size) for s in closed])

    def _late(
        self, key: Key, values: list[Any], time_ms: int, windows: list[tuple[int, int]]
    ) -> Late:
        assert self.watermark_ms is not None
        spans = ", ".join(f"[{format_time(s)}, {format_time(e)})" for s, e in windows)
        reason = (
            f"late event: event time {format_time(time_ms)} falls in closed window"
            f"{'s' if len(windows) > 1 else ''} {spans}; the watermark is "
            f"{format_time(self.watermark_ms)}"
            f" (lateness {format_duration(self.options.lateness_ms)})"
        )
        if self.options.late != "update":
            return Late(reason, [])
        updates = [
            LateUpdate(ident_of(key, s), key, s, e, self._new_acc(values)) for s, e in windows
        ]
        return Late(reason, updates)

    def _add_session(self, key: Key, values: list[Any], time_ms: int) -> Late | None:
        gap = self.window.gap_ms
        start, end = time_ms, time_ms + gap
        sessions = self._sessions.get(key)
        wm = self.watermark_ms
        merged: list[Any] | None = None
        if sessions:
            keep = []
            for s in sessions:
                if s[0] < end and start < s[1]:  # overlaps the event's own [t, t + gap)
                    if merged is None:
                        merged = s
                    else:
                        merged[2] = merge_acc(self.kinds, merged[2], s[2])
                        merged[0] = min(merged[0], s[0])
                        merged[1] = max(merged[1], s[1])
                        merged[3] = [*merged[3], *(i for i in s[3] if i not in merged[3])]
                        continue
                keep.append(s)
            sessions[:] = keep
        if merged is None:
            if wm is not None and end <= wm:
                return self._late(key, values, time_ms, [(start, end)])
            merged = [start, end, self._new_acc(values), []]
            if sessions is None:
                sessions = self._sessions[key] = []
            sessions.append(merged)
            sessions.sort(key=lambda s: s[0])
        else:
            self._update(merged[2], values)
            merged[0] = min(merged[0], start)
            merged[1] = max(merged[1], end)
        self._seq += 1
        heapq.heappush(self._session_ends, (merged[1], self._seq, merged[0], key))
        if self._changes:
            self._dirty[(key,)] = None
        return None

    # -- time ------------------------------------------------------------------

    def _advance(self, time_ms: int) -> None:
        if self.max_event_ms is None or time_ms > self.max_event_ms:
            self.max_event_ms = time_ms
            self._raise_watermark(time_ms - self.options.lateness_ms)

    def _raise_watermark(self, wm: int) -> None:
        if self.watermark_ms is not None and wm <= self.watermark_ms:
            return
        self.watermark_ms = wm
        if self.window.kind == "session":
            self._close_sessions(wm)
        elif self.window.kind != "none":
            self._close_windows(wm)

    def advance(self, now: float) -> None:
        """The wall clock moved on: if no event came for ``idle_timeout``, the watermark
        advances by the time elapsed since the last event; due throttled changes flush."""
        last = self.last_event_at
        if last is not None and self.max_event_ms is not None:
            idle = now - last
            if idle >= self.options.idle_timeout:
                elapsed_ms = int(idle * 1000)
                self._raise_watermark(self.max_event_ms - self.options.lateness_ms + elapsed_ms)
        self._flush(now, force=False)

    def touch(self, now: float) -> None:
        """Start the idle clock (after a restore, as if an event had just come)."""
        self.last_event_at = now

    def _close_windows(self, wm: int) -> None:
        ends = self._ends
        while ends and ends[0][0] <= wm:
            end, start = heapq.heappop(ends)
            groups = self._windows.pop((start, end))
            for key, slot in groups.items():
                if self._changes:
                    self._dirty.pop((start, end, key), None)
                shown = [ident_of(key, start)] if slot[1] else []
                self._emit(key, start, end, end, slot[0], shown, final=True)

    def _close_sessions(self, wm: int) -> None:
        heap = self._session_ends
        while heap and heap[0][0] <= wm:
            end, _, start, key = heapq.heappop(heap)
            sessions = self._sessions.get(key)
            if not sessions:
                continue
            s = next((s for s in sessions if s[0] == start and s[1] == end), None)
            if s is None:
                continue  # stale: the session grew or merged since
            sessions.remove(s)
            if not sessions:
                del self._sessions[key]
            self._emit(key, start, end, end, s[2], s[3], final=True)

    # -- output ----------------------------------------------------------------

    def _emit(
        self,
        key: Key,
        start: int | None,
        end: int | None,
        time_ms: int,
        acc: Acc,
        shown: list[str],
        final: bool = False,
    ) -> bool:
        """Queue the row of one group; returns whether HAVING kept it."""
        ident = ident_of(key, start)
        try:
            row, keep = self.plan.output(key, final_values(self.kinds, acc), start, end)
        except EvalError as e:
            where = (
                ""
                if start is None or end is None
                else (f" of window [{format_time(start)}, {format_time(end)})")
            )
            self.errors.append(f"cannot compute the row{where} for key {list(key)!r}: {e}")
            return False
        hidden = {col: acc[i][part] for col, i, part in self.plan.hidden}
        retract = [i for i in shown if i != ident] if keep else list(shown)
        at = start if start is not None else time_ms
        emit = Emit(ident, key, start, end, at, row, hidden, keep, final, retract)
        if self.options.late == "update" and start is not None:
            emit.acc = orjson.dumps(encode_acc(self.kinds, acc))
        self._out.append(emit)
        return keep

    def _flush(self, now: float, force: bool) -> None:
        """Emit the groups changed since their last emission, at most every emit_interval
        (live tables with emit = "final": every batch)."""
        if not self._dirty:
            return
        last = self._last_flush
        interval = self.options.emit_interval
        if self._changes and not force and last is not None and now - last < interval:
            return
        self._last_flush = now
        dirty, self._dirty = self._dirty, {}
        kind = self.window.kind
        for d in dirty:
            if kind == "none":
                slot = self._table[d]
                shown = [ident_of(d, None)] if slot[2] else []
                slot[2] = self._emit(d, None, None, slot[1], slot[0], shown)
            elif kind == "session":
                (key,) = d
                for s in self._sessions.get(key, ()):
                    keep = self._emit(key, s[0], s[1], s[1], s[2], s[3])
                    s[3] = [ident_of(key, s[0])] if keep else []
            else:
                start, end, key = d
                slot = self._windows[(start, end)][key]
                shown = [ident_of(key, start)] if slot[1] else []
                slot[1] = self._emit(key, start, end, end, slot[0], shown)

    def take(self, now: float) -> list[Emit]:
        """Rows to store and publish since the last call (in order)."""
        if self.window.kind == "none" and not self._changes:
            self._flush(now, force=True)
        else:
            self._flush(now, force=False)
        out, self._out = self._out, []
        return out

    # -- late updates ----------------------------------------------------------

    def apply_late(self, stored: bytes | None, update: LateUpdate) -> tuple[bytes, Emit | None]:
        """Merge a late event into a closed window's stored accumulators (None: the
        window was never stored). Returns the new accumulators and the corrected row."""
        acc = update.acc
        if stored is not None:
            acc = merge_acc(self.kinds, decode_acc(self.kinds, orjson.loads(stored)), acc)
        data = orjson.dumps(encode_acc(self.kinds, acc))
        try:
            row, keep = self.plan.output(
                update.key, final_values(self.kinds, acc), update.start_ms, update.end_ms
            )
        except EvalError as e:
            key = list(update.key)
            self.errors.append(f"cannot compute the corrected row for key {key!r}: {e}")
            return data, None
        hidden = {col: acc[i][part] for col, i, part in self.plan.hidden}
        emit = Emit(
            update.ident,
            update.key,
            update.start_ms,
            update.end_ms,
            update.start_ms,
            row,
            hidden,
            keep,
            True,
            [] if keep else [update.ident],
            data,
        )
        return data, emit

    # -- snapshot --------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything needed to resume after a restart, as JSON bytes."""
        enc = self.kinds
        state: dict[str, Any] = {
            "v": SNAPSHOT_VERSION,
            "max": self.max_event_ms,
            "wm": self.watermark_ms,
            "late": self.late_events,
        }
        kind = self.window.kind
        if kind == "none":
            state["table"] = [
                [list(k), encode_acc(enc, s[0]), s[1], s[2]] for k, s in self._table.items()
            ]
            state["dirty"] = [list(k) for k in self._dirty]
        elif kind == "session":
            state["sessions"] = [
                [list(k), [[s[0], s[1], encode_acc(enc, s[2]), s[3]] for s in ss]]
                for k, ss in self._sessions.items()
            ]
            state["dirty"] = [list(d[0]) for d in self._dirty]
        else:
            state["windows"] = [
                [start, end, [[list(k), encode_acc(enc, s[0]), s[1]] for k, s in groups.items()]]
                for (start, end), groups in self._windows.items()
            ]
            state["dirty"] = [[s, e, list(k)] for s, e, k in self._dirty]
        return orjson.dumps(state)

    def restore(self, data: bytes, now: float) -> None:
        """Load a :meth:`snapshot`; the idle clock starts at ``now``."""
        state = orjson.loads(data)
        if state.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown window state version {state.get('v')!r}")
        enc = self.kinds
        self.max_event_ms = state["max"]
        self.watermark_ms = state["wm"]
        self.late_events = state.get("late", 0)
        self._windows.clear()
        self._ends.clear()
        self._sessions.clear()
        self._session_ends.clear()
        self._table.clear()
        self._dirty.clear()
        self._out.clear()
        kind = self.window.kind
        if kind == "none":
            for k, acc, t, shown in state["table"]:
                self._table[tuple(k)] = [decode_acc(enc, acc), t, shown]
            self._dirty = {tuple(k): None for k in state["dirty"]}
        elif kind == "session":
            for k, ss in state["sessions"]:
                key = tuple(k)
                self._sessions[key] = [[s, e, decode_acc(enc, acc), sh] for s, e, acc, sh in ss]
                for s, e, _, _ in ss:
                    self._seq += 1
                    heapq.heappush(self._session_ends, (e, self._seq, s, key))
            self._dirty = {(tuple(k),): None for k in state["dirty"]}
        else:
            for start, end, groups in state["windows"]:
                self._windows[(start, end)] = {
                    tuple(k): [decode_acc(enc, acc), shown] for k, acc, shown in groups
                }
                heapq.heappush(self._ends, (end, start))
            self._dirty = {(s, e, tuple(k)): None for s, e, k in state["dirty"]}
        self.touch(now)
