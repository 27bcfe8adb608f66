"""Compile aggregate queries: ``GROUP BY`` keys, one optional window, aggregates, HAVING.

This module owns the translation of an aggregate ``SELECT`` (already parsed
by :func:`rtis.sql.parse_select`) into an :class:`AggregateQuery`: the group
key closures, the aggregate calls, the window (TUMBLE, HOP, SESSION, or none
for a live table), the output row and HAVING as closures over one group's
values, and the stored table's columns. Expressions are compiled by
:class:`rtis.sql_expr.ExprCompiler`: an output expression such as
``sum(amount) / count(*)`` is rewritten so that each aggregate call and each
group key becomes a plain field of an environment row, then compiled like any
other expression.

It is pure like the rest of the compiler: no I/O, no ``eval``, nothing walked
per event. The window logic itself lives in :mod:`rtis.windows`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from rtis.sql_expr import ExprCompiler
from rtis.sql_functions import AGGREGATES
from rtis.sql_values import Row, SqlError
from rtis.windows import (
    Aggregate,
    AggregatePlan,
    Key,
    WindowOptions,
    WindowSpec,
    format_duration,
    format_time,
    value_order,
)

WINDOW_FUNCTIONS = ("tumble", "hop", "session")
SUPPORTED_AGGREGATES = "count(*), count(x), count(DISTINCT x), sum(x), avg(x), min(x), max(x)"
# Stored columns every aggregate table has; output columns may not take these names.
RESERVED_COLUMNS = frozenset({"offset", "time_ms", "revision", "_key"})
EVENT_TIME = "event_time"  # always accepted as the window's time column

_UNITS = {
    "ms": 1,
    "millisecond": 1,
    "s": 1000,
    "sec": 1000,
    "second": 1000,
    "m": 60_000,
    "min": 60_000,
    "minute": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "w": 604_800_000,
    "week": 604_800_000,
}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True)
class OutputColumn:
    """One stored and published column.

    ``role``: "group" (a key, or computed from keys only), "window_start",
    "window_end", "metric" (exactly one aggregate call, ``aggregate`` is its
    kind) or "expr" (computed from aggregates: cannot be re-aggregated).
    """

    name: str
    role: str
    sql: str
    aggregate: str | None = None


@dataclass(frozen=True)
class AggregateQuery:
    """A compiled aggregate query; :class:`rtis.windows.WindowState` runs it."""

    name: str
    source: str
    sql: str = field(repr=False)
    window: WindowSpec
    options: WindowOptions
    outputs: tuple[OutputColumn, ...]
    hidden_columns: tuple[str, ...]
    state_plan: AggregatePlan = field(repr=False)
    plan: str
    select_star: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        """The output columns' names, in order."""
        return tuple(c.name for c in self.outputs)

    @property
    def fingerprint(self) -> str:
        """The SQL plus the settings that change its results: stored with the
        checkpoint, so a change recomputes the query from the retained log."""
        o = self.options
        return (
            f"{self.sql}\n-- rtis window settings: lateness={o.lateness_ms}ms"
            f" emit={o.emit} late={o.late}"
        )


def is_aggregate(select: exp.Select) -> bool:
    """Whether a SELECT needs the aggregate compiler (GROUP BY, HAVING or an aggregate)."""
    if select.args.get("group") or select.args.get("having"):
        return True
    for item in select.expressions:
        for node in item.walk():
            if isinstance(node, exp.Anonymous) and str(node.this).lower() in AGGREGATES:
                return True
    return False


def compile_aggregate(
    name: str,
    compiler: ExprCompiler,
    select: exp.Select,
    source: str,
    *,
    time_field: str | None,
    check_time_field: bool,
    options: WindowOptions,
) -> AggregateQuery:
    """Compile an aggregate SELECT; SqlError says what is wrong and where."""
    sql = compiler.text
    key_nodes: list[exp.Expression] = []
    window: WindowSpec | None = None
    window_node: exp.Expression | None = None
    aliases = _select_aliases(compiler, select)
    group = select.args.get("group")
    for node in group.expressions if group is not None else []:
        if isinstance(node, exp.Anonymous) and str(node.this).lower() in WINDOW_FUNCTIONS:
            if window is not None:
                raise compiler.error("only one window (TUMBLE, HOP or SESSION) per query", node)
            window = _window(compiler, node, source, time_field, check_time_field)
            window_node = node
            continue
        if isinstance(node, exp.Literal) and not node.is_string:
            raise compiler.error("GROUP BY a column position is not supported; name it", node)
        if isinstance(node, exp.Column) and len(node.parts) == 1 and str(node.name) in aliases:
            # GROUP BY an output alias, as SQLite allows; like SQLite, a field of the
            # same name wins (``lower(region) AS region ... GROUP BY region``).
            target = aliases[str(node.name)]
            if not any(isinstance(c, exp.Column) and c.name == node.name for c in target.walk()):
                node = target
        _refuse_inside(compiler, node, "GROUP BY")
        key_nodes.append(node)
    if window is None:
        window = WindowSpec("none")
    if window.kind == "session" and options.late == "update":
        raise compiler.error(
            'late = "update" is not supported with SESSION windows (a late event may merge '
            'sessions that were already stored); use late = "drop" or more lateness',
            window_node,
        )
    rewriter = _Rewriter(compiler, key_nodes, window.kind != "none")

    # -- the select list
    columns: list[OutputColumn] = []
    fns: list[tuple[str, Callable[[Row], Any]]] = []
    names: set[str] = set()
    rewritten_by_alias: dict[str, exp.Expression] = {}
    for item in select.expressions:
        if isinstance(item, exp.Star):
            raise compiler.error("SELECT * cannot be used with GROUP BY; name the columns", item)
        node = item.this if isinstance(item, exp.Alias) else item
        if isinstance(item, exp.Alias):
            column = str(item.alias)
        elif isinstance(node, exp.Column | exp.Dot):
            column = compiler.field_path(node)[-1]
        else:
            column = compiler.sql_of(node)
        if column in names:
            raise compiler.error(f"duplicate output column {column!r}", item)
        if column in RESERVED_COLUMNS or column.endswith(("__sum", "__count")):
            raise compiler.error(
                f"output column {column!r} clashes with a column rtis stores; rename it with AS",
                item,
            )
        names.add(column)
        before = len(rewriter.aggregates)
        rewritten = rewriter.rewrite(node)
        rewritten_by_alias[column] = rewritten
        columns.append(_classify(compiler, column, node, rewritten, rewriter, before))
        fns.append((column, compiler.value(rewritten)))
    if not columns:
        raise compiler.error("nothing selected", select)
    if window.kind != "none":
        for wname in ("window_start", "window_end"):
            if wname in names and not any(c.role == wname for c in columns):
                raise compiler.error(
                    f"output column {wname!r} clashes with the window's {wname}; rename it with AS",
                    select,
                )
        # Every row carries its window's bounds: add those not selected, next to
        # the other bound or else after the leading key columns.
        roles = [c.role for c in columns]
        for wname, other, after in (
            ("window_start", "window_end", False),
            ("window_end", "window_start", True),
        ):
            if wname in roles:
                continue
            if other in roles:
                at = roles.index(other) + (1 if after else 0)
            else:
                at = 0
                while at < len(columns) and columns[at].role == "group":
                    at += 1
            columns.insert(at, OutputColumn(wname, wname, wname))
            fns.insert(at, (wname, _window_bound(wname)))
            roles = [c.role for c in columns]

    # -- HAVING, which may name output aliases (as SQLite allows)
    having_node = select.args.get("having")
    having = None
    if having_node is not None:
        rewriter.aliases = rewritten_by_alias
        having = compiler.predicate(rewriter.rewrite(having_node.this))

    where_node = select.args.get("where")
    where = compiler.predicate(where_node.this) if where_node is not None else None

    # -- hidden columns: an avg's sum and count, so re-aggregation can merge averages
    hidden: list[tuple[str, int, int]] = []
    for c in columns:
        if c.role == "metric" and c.aggregate == "avg":
            index = rewriter.index_of[c.sql]
            hidden.append((f"{c.name}__sum", index, 0))
            hidden.append((f"{c.name}__count", index, 1))

    output = _output(
        tuple(fns), len(key_nodes), len(rewriter.aggregates), window.kind != "none", having
    )
    state_plan = AggregatePlan(
        where=where,
        keys=tuple(compiler.value(k) for k in key_nodes),
        aggregates=tuple(rewriter.aggregates),
        window=window,
        output=output,
        hidden=tuple(hidden),
    )
    query = AggregateQuery(
        name=name,
        source=source,
        sql=sql,
        window=window,
        options=options,
        outputs=tuple(columns),
        hidden_columns=tuple(h[0] for h in hidden),
        state_plan=state_plan,
        plan="",
    )
    text = _plan(query, compiler, key_nodes, where_node, having_node, time_field)
    return AggregateQuery(**{**query.__dict__, "plan": text})


# ---------------------------------------------------------------- helpers


def _window_bound(name: str) -> Callable[[Row], Any]:
    return lambda env: env[name]


def _select_aliases(compiler: ExprCompiler, select: exp.Select) -> dict[str, exp.Expression]:
    out: dict[str, exp.Expression] = {}
    for item in select.expressions:
        if isinstance(item, exp.Alias) and not _has_aggregate(item.this):
            out[str(item.alias)] = item.this
    return out


def _has_aggregate(node: exp.Expression) -> bool:
    return any(
        isinstance(n, exp.Anonymous) and str(n.this).lower() in AGGREGATES for n in node.walk()
    )


def _refuse_inside(compiler: ExprCompiler, node: exp.Expression, where: str) -> None:
    for n in node.walk():
        if isinstance(n, exp.Anonymous):
            fname = str(n.this).lower()
            if fname in AGGREGATES:
                raise compiler.error(f"aggregate function {fname}() is not allowed in {where}", n)
            if fname in WINDOW_FUNCTIONS:
                raise compiler.error(f"{fname.upper()}() must be an item of GROUP BY by itself", n)


def _window(
    compiler: ExprCompiler,
    node: exp.Anonymous,
    source: str,
    time_field: str | None,
    check: bool,
) -> WindowSpec:
    kind = str(node.this).lower()
    args = list(node.expressions)
    wanted = {"tumble": 2, "hop": 3, "session": 2}[kind]
    usage = {
        "tumble": "TUMBLE(<time>, <size>)",
        "hop": "HOP(<time>, <slide>, <size>)",
        "session": "SESSION(<time>, <gap>)",
    }[kind]
    if len(args) != wanted:
        raise compiler.error(f"{usage} takes {wanted} arguments, got {len(args)}", node)
    time_arg = args[0]
    if not isinstance(time_arg, exp.Column) or len(time_arg.parts) != 1:
        raise compiler.error(
            f"the first argument of {kind.upper()} names the time column, e.g. {usage}", time_arg
        )
    column = str(time_arg.name)
    if check and column != EVENT_TIME and column != time_field:
        if time_field is None:
            hint = (
                f"stream {source!r} has no time_field, so its event time is the arrival time; "
                f"write {kind.upper()}({EVENT_TIME}, ...)"
            )
        else:
            hint = (
                f"windows use the stream's event time: write {kind.upper()}({time_field}, ...) "
                f"(streams.{source}.time_field) or {kind.upper()}({EVENT_TIME}, ...)"
            )
        raise compiler.error(f"{column!r} is not the event time of {source!r}; {hint}", time_arg)
    sizes = [_duration(compiler, a) for a in args[1:]]
    if kind == "tumble":
        return WindowSpec("tumble", size_ms=sizes[0])
    if kind == "session":
        return WindowSpec("session", gap_ms=sizes[0])
    slide, size = sizes
    if slide > size:
        raise compiler.error(
            f"HOP's slide ({format_duration(slide)}) must not exceed its size "
            f"({format_duration(size)})",
            node,
        )
    return WindowSpec("hop", size_ms=size, slide_ms=slide)


def _duration(compiler: ExprCompiler, node: exp.Expression) -> int:
    """INTERVAL '1' MINUTE, INTERVAL '5 minutes', INTERVAL 30 SECOND or '1m' -> ms."""
    text: str | None = None
    if isinstance(node, exp.Interval):
        value = node.this
        unit = node.args.get("unit")
        if isinstance(value, exp.Literal):
            text = f"{value.this} {unit.name if unit is not None else ''}"
    elif isinstance(node, exp.Literal) and node.is_string:
        text = str(node.this)
    ms = _parse_duration(text) if text is not None else None
    if ms is None:
        raise compiler.error(
            f"expected a duration such as INTERVAL '1' MINUTE or '30s', got "
            f"{compiler.sql_of(node)}; units: millisecond, second, minute, hour, day, week",
            node,
        )
    return ms


def _parse_duration(text: str) -> int | None:
    m = _DURATION_RE.match(text)
    if m is None:
        return None
    unit = m.group(2).lower()
    scale = _UNITS.get(unit)
    if scale is None and len(unit) > 2 and unit.endswith("s"):
        scale = _UNITS.get(unit[:-1])
    if scale is None:
        return None
    ms = float(m.group(1)) * scale
    if ms <= 0 or ms != int(ms):
        return None
    return int(ms)


class _Rewriter:
    """Rewrites an output or HAVING expression over one group's values: each group
    key becomes the field ``__k<i>``, each aggregate call ``__a<i>``."""

    def __init__(self, compiler: ExprCompiler, keys: list[exp.Expression], windowed: bool) -> None:
        self.compiler = compiler
        self.key_sqls = {compiler.sql_of(k): i for i, k in enumerate(keys)}
        self.windowed = windowed
        self.aggregates: list[Aggregate] = []
        self.index_of: dict[str, int] = {}  # an aggregate's SQL -> its index
        self._dedupe: dict[tuple[str, str], int] = {}
        self.aliases: dict[str, exp.Expression] = {}

    def rewrite(self, node: exp.Expression) -> exp.Expression:
        return node.transform(self._visit)

    def _visit(self, n: exp.Expression) -> exp.Expression:
        compiler = self.compiler
        if not isinstance(n, exp.Literal | exp.Boolean | exp.Null):
            index = self.key_sqls.get(compiler.sql_of(n))
            if index is not None:
                return exp.column(f"__k{index}")
        if isinstance(n, exp.Anonymous):
            fname = str(n.this).lower()
            if fname in AGGREGATES:
                return exp.column(f"__a{self._aggregate(n, fname)}")
            if fname in WINDOW_FUNCTIONS:
                raise compiler.error(
                    f"{fname.upper()}() belongs in GROUP BY; select window_start and window_end",
                    n,
                )
        if isinstance(n, exp.Column | exp.Dot):
            path = compiler.field_path(n)
            if len(path) == 1 and path[0] in self.aliases:
                return self.aliases[path[0]].copy()
            if len(path) == 1 and path[0] in ("window_start", "window_end"):
                if not self.windowed:
                    raise compiler.error(
                        f"{path[0]} needs a window (TUMBLE, HOP or SESSION) in GROUP BY", n
                    )
                return exp.column(path[0])
            raise compiler.error(
                f"column {compiler.sql_of(n)!r} must appear in GROUP BY or inside an "
                f"aggregate function ({SUPPORTED_AGGREGATES})",
                n,
            )
        return n

    def _aggregate(self, n: exp.Anonymous, fname: str) -> int:
        compiler = self.compiler
        args = list(n.expressions)
        if fname not in ("count", "sum", "avg", "min", "max"):
            raise compiler.error(
                f"aggregate function {fname}() is not supported; aggregates: "
                f"{SUPPORTED_AGGREGATES}",
                n,
            )
        arg: exp.Expression | None
        if len(args) == 1 and isinstance(args[0], exp.Distinct):
            inner = list(args[0].expressions)
            if fname != "count":
                raise compiler.error("DISTINCT is only supported in count(DISTINCT x)", n)
            if len(inner) != 1:
                raise compiler.error("count(DISTINCT ...) takes exactly one expression", n)
            kind, arg = "count_distinct", inner[0]
        elif fname == "count" and len(args) == 1 and isinstance(args[0], exp.Star):
            kind, arg = "count_star", None
        elif len(args) != 1:
            extra = (
                f"; {fname}() of several values is not supported, use CASE"
                if fname in ("min", "max") and len(args) > 1
                else ""
            )
            raise compiler.error(f"{fname}() takes one argument, got {len(args)}{extra}", n)
        elif isinstance(args[0], exp.Star):
            raise compiler.error(f"{fname}(*) is not supported; only count(*)", n)
        else:
            kind, arg = fname, args[0]
        if arg is not None:
            for inner_node in arg.walk():
                if isinstance(inner_node, exp.Anonymous):
                    inner_name = str(inner_node.this).lower()
                    if inner_name in AGGREGATES:
                        raise compiler.error("aggregate functions cannot be nested", inner_node)
                    if inner_name in WINDOW_FUNCTIONS:
                        raise compiler.error(
                            f"{inner_name.upper()}() belongs in GROUP BY", inner_node
                        )
        sql = compiler.sql_of(n)
        dedupe = (kind, compiler.sql_of(arg) if arg is not None else "*")
        index = self._dedupe.get(dedupe)
        if index is None:
            index = self._dedupe[dedupe] = len(self.aggregates)
            compiled = compiler.expr(arg) if arg is not None else None
            fn = compiled.fn if compiled is not None else None
            name = compiled.field if compiled is not None else None
            self.aggregates.append(Aggregate(kind, fn, sql, name))
        self.index_of[sql] = index
        return index


def _classify(
    compiler: ExprCompiler,
    column: str,
    node: exp.Expression,
    rewritten: exp.Expression,
    rewriter: _Rewriter,
    before: int,
) -> OutputColumn:
    sql = compiler.sql_of(node)
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in AGGREGATES:
        index = rewriter.index_of[sql]
        return OutputColumn(column, "metric", sql, rewriter.aggregates[index].kind)
    if isinstance(rewritten, exp.Column) and rewritten.name in ("window_start", "window_end"):
        return OutputColumn(column, rewritten.name, sql)
    uses_aggregate = any(
        isinstance(n, exp.Column) and n.name.startswith("__a") for n in rewritten.walk()
    )
    return OutputColumn(column, "expr" if uses_aggregate else "group", sql)


def _output(
    fns: tuple[tuple[str, Callable[[Row], Any]], ...],
    n_keys: int,
    n_aggs: int,
    windowed: bool,
    having: Callable[[Row], bool] | None,
) -> Callable[[Key, list[Any], int | None, int | None], tuple[Row, bool]]:
    key_names = tuple(f"__k{i}" for i in range(n_keys))
    agg_names = tuple(f"__a{i}" for i in range(n_aggs))

    def output(key: Key, values: list[Any], start: int | None, end: int | None) -> tuple[Row, bool]:
        env: Row = dict(zip(key_names, key, strict=True))
        env.update(zip(agg_names, values, strict=True))
        if windowed:
            assert start is not None and end is not None
            env["window_start"] = format_time(start)
            env["window_end"] = format_time(end)
        row = {column: fn(env) for column, fn in fns}
        return row, having(env) if having is not None else True

    return output


def _plan(
    query: AggregateQuery,
    compiler: ExprCompiler,
    keys: list[exp.Expression],
    where_node: exp.Expression | None,
    having_node: exp.Expression | None,
    time_field: str | None,
) -> str:
    o = query.options
    w = query.window
    kind = "a live table" if w.kind == "none" else "windowed aggregation"
    lines = [f"query {query.name!r}: {kind} (GROUP BY)"]
    lines.append(f"  source   stream {query.source!r}")
    if where_node is not None:
        lines.append(f"  filter   {compiler.sql_of(where_node.this)}  (NULL counts as false)")
    else:
        lines.append("  filter   none (every event)")
    group = ", ".join(compiler.sql_of(k) for k in keys) or "(no keys: one group)"
    lines.append(f"  group    {group}")
    lines.append(f"  window   {w.describe()}")
    if w.kind != "none":
        src = f"its time_field {time_field!r}" if time_field else "arrival time"
        lines.append(f"           on event time ({src}); rows are timed at window_start")
    for i, c in enumerate(query.outputs):
        label = "output  " if i == 0 else "        "
        note = {"metric": "", "expr": "  (not re-aggregatable)"}.get(c.role, "")
        if c.aggregate == "count_distinct":
            note = "  (not re-aggregatable)"
        if c.role in ("window_start", "window_end") and c.sql == c.name:
            note = "  (RFC 3339 UTC)"
        lines.append(f"  {label} {c.name} = {c.sql}{note}")
    if having_node is not None:
        lines.append(f"  having   {compiler.sql_of(having_node.this)}")
    if w.kind != "none":
        lines.append(
            f"  time     watermark = max event time - lateness {format_duration(o.lateness_ms)};"
            f" after {o.idle_timeout:g}s without events it advances with the wall clock"
        )
        if o.emit == "final":
            lines.append("  emit     final: one row per group when its window closes")
        else:
            lines.append(
                f"  emit     changes: updated rows at most every {o.emit_interval:g}s,"
                " and the final row when the window closes"
            )
        if o.late == "drop":
            lines.append("  late     drop: counted, kept in the dead letters with the reason")
        else:
            lines.append(
                "  late     update: the stored row is corrected and republished (revision)"
            )
    elif o.emit == "final":
        lines.append("  emit     the changed rows after every batch of events")
    else:
        lines.append(f"  emit     the changed rows at most every {o.emit_interval:g}s")
    stored = ", ".join([*query.columns, *(["revision"] if w.kind != "none" else [])])
    hidden = f" (and {', '.join(query.hidden_columns)} to re-aggregate averages)"
    lines.append(
        f"  store    table {query.name!r}: {stored}{hidden if query.hidden_columns else ''}"
    )
    lines.append(
        "  errors   an event that cannot be evaluated goes to the dead letters with the reason"
    )
    return "\n".join(lines)


__all__ = [
    "AggregateQuery",
    "OutputColumn",
    "SqlError",
    "compile_aggregate",
    "is_aggregate",
]


# ---------------------------------------------------------------- re-aggregation

PER_UNITS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}


class ReaggregationError(ValueError):
    """Stored rows cannot be re-aggregated as asked; the message says why."""


def reaggregation_problem(query: AggregateQuery, per: str) -> str | None:
    """Why ``per=<unit>`` cannot merge this query's rows, or None when it can."""
    if per not in PER_UNITS:
        return f"per must be one of minute, hour, day; got {per!r}"
    w = query.window
    if w.kind == "none":
        return f"query {query.name!r} is a live table (no window): there is nothing to re-aggregate"
    if w.kind == "hop":
        return (
            f"query {query.name!r} uses HOP windows, which overlap: adding them up would count "
            "events several times"
        )
    if w.kind == "tumble" and PER_UNITS[per] % w.size_ms:
        return (
            f"windows of {format_duration(w.size_ms)} do not divide a {per}: "
            "a window would straddle two buckets"
        )
    for c in query.outputs:
        if c.aggregate == "count_distinct":
            return (
                f"column {c.name!r} is {c.sql}: distinct counts of separate windows cannot be "
                "added up (the same value may occur in several)"
            )
        if c.role == "expr":
            return (
                f"column {c.name!r} is computed from aggregates ({c.sql}) and cannot be "
                "re-aggregated; select the aggregates themselves"
            )
    return None


def bucket_bounds(ms: int, per: str, zone: Any) -> tuple[int, int]:
    """The [start, end) in epoch ms of the ``per`` bucket holding ``ms``, with
    boundaries in time zone ``zone`` (a tzinfo)."""
    from datetime import datetime, timedelta

    local = datetime.fromtimestamp(ms / 1000, zone)
    if per == "minute":
        start = local.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif per == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    else:
        start = datetime(local.year, local.month, local.day, tzinfo=zone)
        nxt = start.date() + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone)
    # timedelta arithmetic on aware datetimes is wall-clock arithmetic; convert
    # through UTC timestamps so DST changes give real bucket lengths.
    return round(start.timestamp() * 1000), round(end.timestamp() * 1000)


def reaggregate(query: AggregateQuery, rows: Any, per: str, zone: Any) -> list[dict[str, Any]]:
    """Merge stored rows (dicts of stored columns incl. ``time_ms`` and the hidden
    avg columns, ordered by time) into ``per`` buckets per group; averages are
    merged from their sums and counts. Raises ReaggregationError."""
    problem = reaggregation_problem(query, per)
    if problem is not None:
        raise ReaggregationError(problem)
    groups = [c.name for c in query.outputs if c.role == "group"]
    metrics = [c for c in query.outputs if c.role == "metric"]
    tumble = query.window.size_ms if query.window.kind == "tumble" else 0
    buckets: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        start_ms = row["time_ms"]
        lo, hi = bucket_bounds(start_ms, per, zone)
        if tumble and start_ms + tumble > hi:
            raise ReaggregationError(
                f"the window starting {format_time(start_ms)} ends after the end of its {per} "
                f"({format_time(hi)}) in this time zone; choose another per or tz"
            )
        key = (lo, *(row[g] for g in groups))
        merged = buckets.get(key)
        if merged is None:
            merged = buckets[key] = [hi, *_metric_state(metrics, row)]
        else:
            for i, (c, state) in enumerate(zip(metrics, _metric_state(metrics, row), strict=True)):
                merged[i + 1] = _merge_metric(c.aggregate or "", merged[i + 1], state)
    out: list[dict[str, Any]] = []
    for key, merged in sorted(buckets.items(), key=lambda kv: kv[0][0]):
        lo, hi = key[0], merged[0]
        group_values = dict(zip(groups, key[1:], strict=True))
        states = {c.name: state for c, state in zip(metrics, merged[1:], strict=True)}
        item: dict[str, Any] = {"time": format_time(lo)}
        for c in query.outputs:
            if c.role == "window_start":
                item[c.name] = format_time(lo)
            elif c.role == "window_end":
                item[c.name] = format_time(hi)
            elif c.role == "group":
                item[c.name] = group_values[c.name]
            elif c.aggregate == "avg":
                total, count = states[c.name]
                item[c.name] = total / count if count else None
            else:
                item[c.name] = states[c.name]
        out.append(item)
    return out


def _metric_state(metrics: list[OutputColumn], row: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for c in metrics:
        if c.aggregate == "avg":
            out.append([row[f"{c.name}__sum"] or 0, row[f"{c.name}__count"] or 0])
        else:
            out.append(row[c.name])
    return out


def _merge_metric(kind: str, a: Any, b: Any) -> Any:
    if kind == "avg":
        return [a[0] + b[0], a[1] + b[1]]
    if a is None:
        return b
    if b is None:
        return a
    if kind in ("count", "count_star", "sum"):
        return a + b
    if kind == "min":
        return min(a, b, key=value_order)
    return max(a, b, key=value_order)
