"""Continuous queries: compile stateless ``SELECT ... FROM <stream> [WHERE ...]`` once.

This module owns the public face of the SQL compiler: parsing a query's text
with sqlglot, checking that it is a supported stateless query over a known
stream, and turning it into a :class:`CompiledQuery` whose ``where`` and
``project`` are plain closures (built by :mod:`rtis.sql_expr`). It is pure: it
does no I/O, imports nothing of rtis but ``rtis.errors`` and its ``sql_*``
helpers, never ``eval``s or ``exec``s user text, never walks the syntax tree
per event and never looks up Python attributes named in the SQL.

The dialect is documented in ``docs/sql.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from rtis.sql_aggregate import AggregateQuery, compile_aggregate, is_aggregate
from rtis.sql_expr import SUPPORTED_SYNTAX, ExprCompiler, RtisDialect, node_offset
from rtis.sql_functions import check_user_functions, load_functions
from rtis.sql_ops import Fn, Pred
from rtis.sql_values import EvalError, Row, SqlError
from rtis.windows import WindowOptions

__all__ = [
    "AggregateQuery",
    "CompiledQuery",
    "EvalError",
    "ExprCompiler",
    "Row",
    "SqlError",
    "WindowOptions",
    "compile_condition",
    "compile_query",
    "load_functions",
    "parse_select",
]

MAX_SQL_CHARS = 100_000

# Clauses of a SELECT that a stateless query may not have, with the keyword to
# point at in the text.
_CLAUSES = {
    "group": ("GROUP BY", r"\bGROUP\s+BY\b"),
    "having": ("HAVING", r"\bHAVING\b"),
    "order": ("ORDER BY", r"\bORDER\s+BY\b"),
    "limit": ("LIMIT", r"\bLIMIT\b"),
    "offset": ("OFFSET", r"\bOFFSET\b"),
    "joins": ("JOIN or a second FROM item", r"\bJOIN\b|,"),
    "distinct": ("DISTINCT", r"\bDISTINCT\b"),
    "with": ("WITH", r"\bWITH\b"),
    "with_": ("WITH", r"\bWITH\b"),
    "windows": ("WINDOW", r"\bWINDOW\b"),
    "qualify": ("QUALIFY", r"\bQUALIFY\b"),
    "laterals": ("LATERAL", r"\bLATERAL\b"),
}
_ALLOWED_ARGS = frozenset({"expressions", "from", "from_", "where"})


@dataclass(frozen=True)
class CompiledQuery:
    """A stateless continuous query, compiled once; ``run`` applies it to one event."""

    name: str
    source: str
    select_star: bool
    columns: tuple[str, ...]
    where: Pred | None
    project: Callable[[Row], Row]
    plan: str
    sql: str = field(repr=False)

    def run(self, row: Row) -> Row | None:
        """The output row, or None when WHERE filters the event out; raises EvalError."""
        where = self.where
        if where is not None and not where(row):
            return None
        return self.project(row)


def compile_query(
    name: str,
    sql: str,
    *,
    streams: Collection[str],
    functions: Mapping[str, Callable[..., Any]] | None = None,
    time_fields: Mapping[str, str | None] | None = None,
    options: WindowOptions | None = None,
) -> CompiledQuery | AggregateQuery:
    """Compile ``SELECT ... FROM <stream> [WHERE ...]``, or an aggregate query
    (``GROUP BY``, see :mod:`rtis.sql_aggregate`); SqlError says what is wrong and where.

    ``time_fields`` (stream -> its time_field) lets a window check that it names
    the stream's event time; ``options`` are the query's window settings.
    A bad ``functions`` mapping (name clashing with a built-in, not callable)
    raises ValueError.
    """
    compiler, select = parse_select(name, sql, functions, aggregate=True)
    source = _source(compiler, select, streams)
    if is_aggregate(select):
        return compile_aggregate(
            name,
            compiler,
            select,
            source,
            time_field=(time_fields or {}).get(source),
            check_time_field=time_fields is not None,
            options=options or WindowOptions(),
        )
    items = list(select.expressions)
    select_star = bool(items) and isinstance(items[0], exp.Star)
    if select_star:
        items = items[1:]
    names: list[str] = []
    fns: list[Fn] = []
    shown: list[str] = []
    for item in items:
        column, node = _output_name(compiler, item)
        if column in names:
            raise compiler.error(f"duplicate output column {column!r}", item)
        names.append(column)
        fns.append(compiler.value(node))
        shown.append(compiler.sql_of(node))
    where_node = select.args.get("where")
    where = compiler.predicate(where_node.this) if where_node is not None else None
    plan = _plan(name, source, select_star, names, shown, where_node, compiler)
    return CompiledQuery(
        name=name,
        source=source,
        select_star=select_star,
        columns=tuple(names),
        where=where,
        project=_projector(select_star, tuple(names), fns),
        plan=plan,
        sql=sql,
    )


def compile_condition(
    text: str, *, functions: Mapping[str, Callable[..., Any]] | None = None
) -> Pred:
    """Compile a bare WHERE condition (a per-subscriber filter such as ``region = 'eu'``)."""
    compiler = ExprCompiler("where", text, check_user_functions(functions))
    _check_length(compiler, text)
    if not text.strip():
        raise compiler.error("empty condition; write e.g. region = 'eu'")
    tree = _parse_with_errors(
        compiler, lambda: sqlglot.parse_one(text, dialect=RtisDialect, into=exp.Condition)
    )
    compiler.check_limits(tree)
    return compiler.predicate(tree)


def parse_select(
    name: str,
    sql: str,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    *,
    aggregate: bool = False,
) -> tuple[ExprCompiler, exp.Select]:
    """Parse exactly one plain SELECT, refusing every clause a stateless query cannot have
    (``aggregate=True`` lets GROUP BY and HAVING through, for the aggregate compiler).

    Returns the expression compiler for the query (to compile its expressions) and the tree.
    """
    allowed = _ALLOWED_ARGS | {"group", "having"} if aggregate else _ALLOWED_ARGS
    compiler = ExprCompiler(name, sql, check_user_functions(functions))
    _check_length(compiler, sql)
    statements = [
        s
        for s in _parse_with_errors(compiler, lambda: sqlglot.parse(sql, dialect=RtisDialect))
        if s is not None
    ]
    if not statements:
        raise compiler.error(f"empty query; {SUPPORTED_SYNTAX}")
    for statement in statements:
        compiler.check_limits(statement)
    if len(statements) > 1:
        offset = node_offset(statements[1])
        semicolon = sql.find(";")
        raise compiler.error(
            f"only one statement is allowed, found {len(statements)}",
            offset=semicolon if semicolon >= 0 else offset,
        )
    select = statements[0]
    if not isinstance(select, exp.Select):
        kind = select.key.upper()
        raise compiler.error(
            f"only SELECT is supported, not {kind}; {SUPPORTED_SYNTAX}",
            offset=len(sql) - len(sql.lstrip()),
        )
    for key, value in select.args.items():
        if value and key not in allowed:
            label, pattern = _CLAUSES.get(key, (key.upper(), r"\b" + re.escape(key) + r"\b"))
            hint = (
                " (windowed aggregation is not available in stateless queries)"
                if key in ("group", "having")
                else ""
            )
            found = re.search(pattern, sql, re.IGNORECASE)
            offset = found.start() if found else _first_offset(value)
            raise compiler.error(
                f"{label} is not supported{hint}; {SUPPORTED_SYNTAX}", offset=offset
            )
    if not select.expressions:
        raise compiler.error(f"nothing selected; {SUPPORTED_SYNTAX}", select)
    return compiler, select


# ---------------------------------------------------------------- helpers


def _check_length(compiler: ExprCompiler, text: str) -> None:
    if len(text) > MAX_SQL_CHARS:
        raise compiler.error(f"query text is {len(text)} characters; the limit is {MAX_SQL_CHARS}")


def _parse_with_errors(compiler: ExprCompiler, parse: Callable[[], Any]) -> Any:
    """Run sqlglot and turn whatever it raises into SqlError with a position."""
    try:
        return parse()
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        line = int(first.get("line") or 1)
        highlight = str(first.get("highlight") or "")
        column = int(first.get("col") or 1)
        if highlight and "\n" not in highlight:
            column = column - len(highlight) + 1
        description = str(first.get("description") or exc).split("\n")[0]
        description = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", description)
        near = f" near {highlight!r}" if highlight else ""
        raise SqlError(
            compiler.query, f"syntax error: {description}{near}", line, max(column, 1)
        ) from None
    except SqlglotError as exc:  # TokenError: unterminated string, bad character, ...
        message = str(exc).split("\n")[0]
        match = re.match(r"Error tokenizing '(.*)'", message, re.DOTALL)
        context = match.group(1) if match else ""
        offset = 0
        if context and compiler.text.startswith(context):
            offset = len(context)
            for quote in "'\"`":
                if context.count(quote) % 2:  # an unterminated quote: point at it
                    offset = context.rfind(quote)
        raise compiler.error(f"syntax error: {message}", offset=offset) from None
    except RecursionError:
        raise compiler.error("expression nests too deeply") from None
    except Exception as exc:  # sqlglot failing on hostile text must still be a SqlError
        raise compiler.error(f"could not parse the query ({type(exc).__name__})") from None


def _first_offset(value: Any) -> int:
    nodes = value if isinstance(value, list) else [value]
    for node in nodes:
        if isinstance(node, exp.Expression):
            offset = node_offset(node)
            if offset >= 0:
                return offset
    return 0


def _source(compiler: ExprCompiler, select: exp.Select, streams: Collection[str]) -> str:
    from_ = select.args.get("from") or select.args.get("from_")
    if from_ is None:
        end = len(compiler.text.rstrip().rstrip(";").rstrip())
        raise compiler.error(f"missing FROM <stream>; {SUPPORTED_SYNTAX}", offset=end)
    table = from_.this
    if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
        found = re.search(r"\bFROM\s+", compiler.text, re.IGNORECASE)
        offset = found.end() if found else node_offset(from_)
        raise compiler.error(f"FROM must name one stream; {SUPPORTED_SYNTAX}", offset=offset)
    extra = [k for k, v in table.args.items() if v and k != "this"]
    if extra:
        what = "an alias" if "alias" in extra else f"{'/'.join(extra)}"
        raise compiler.error(
            f"FROM takes a bare stream name, not {what} (nested fields are written a.b.c)",
            table,
        )
    source = str(table.this.this)
    if source not in streams:
        known = ", ".join(sorted(streams)) or "(none configured)"
        raise compiler.error(f"unknown stream {source!r}; known streams: {known}", table)
    return source


def _output_name(compiler: ExprCompiler, item: exp.Expression) -> tuple[str, exp.Expression]:
    if isinstance(item, exp.Star):
        raise compiler.error("* is only allowed once, as the first item of SELECT", item)
    if isinstance(item, exp.Alias):
        return str(item.alias), item.this
    if isinstance(item, exp.Column | exp.Dot):
        return compiler.field_path(item)[-1], item
    return compiler.sql_of(item), item


def _projector(select_star: bool, names: tuple[str, ...], fns: list[Fn]) -> Callable[[Row], Row]:
    if select_star:
        pairs = tuple(zip(names, fns, strict=True))
        if not pairs:
            return lambda r: r.copy()

        def star_plus(r: Row) -> Row:
            out = r.copy()
            for column, fn in pairs:
                out[column] = fn(r)
            return out

        return star_plus
    # Unrolled for the common small projections: a dict display is faster than a loop.
    if len(fns) == 1:
        (n0,), (f0,) = names, fns
        return lambda r: {n0: f0(r)}
    if len(fns) == 2:
        (n0, n1), (f0, f1) = names, fns
        return lambda r: {n0: f0(r), n1: f1(r)}
    if len(fns) == 3:
        (n0, n1, n2), (f0, f1, f2) = names, fns
        return lambda r: {n0: f0(r), n1: f1(r), n2: f2(r)}
    if len(fns) == 4:
        (n0, n1, n2, n3), (f0, f1, f2, f3) = names, fns
        return lambda r: {n0: f0(r), n1: f1(r), n2: f2(r), n3: f3(r)}
    pairs = tuple(zip(names, fns, strict=True))
    return lambda r: {column: fn(r) for column, fn in pairs}


def _plan(
    name: str,
    source: str,
    select_star: bool,
    names: list[str],
    shown: list[str],
    where_node: exp.Expression | None,
    compiler: ExprCompiler,
) -> str:
    lines = [f"query {name!r}: stateless (one output row per matching event)"]
    lines.append(f"  source   stream {source!r}")
    if where_node is not None:
        lines.append(f"  filter   {compiler.sql_of(where_node.this)}  (NULL counts as false)")
    else:
        lines.append("  filter   none (every event)")
    if select_star:
        lines.append("  output   every field of the event (SELECT *)")
        for column, text in zip(names, shown, strict=True):
            lines.append(f"           set {column} = {text}")
    else:
        for i, (column, text) in enumerate(zip(names, shown, strict=True)):
            label = "output  " if i == 0 else "        "
            lines.append(f"  {label} {column} = {text}")
    lines.append(
        "  errors   an event that cannot be evaluated goes to the dead letters with the reason"
    )
    return "\n".join(lines)
