"""Compile one sqlglot expression tree into a plain Python closure over a row.

This module owns the translation of SQL expressions (operators, CASE, CAST,
IN, BETWEEN, LIKE, functions, nested fields) into nested closures, built once.
The closures specialise on what is known at compile time (a plain field, a
literal operand, a constant sub-expression) so that evaluating an event never
dispatches on node types. It must not ``eval``/``exec`` user text, never use
``getattr`` with a name from the SQL, and never walk the tree per event; field
access is only ever ``dict.get`` on the event. Aggregate queries
(:mod:`rtis.sql_aggregate`) reuse :meth:`ExprCompiler.value` and
:meth:`ExprCompiler.predicate`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from sqlglot import exp
from sqlglot.dialects.sqlite import SQLite
from sqlglot.tokenizer_core import TokenType

from rtis.sql_functions import (
    AGGREGATES,
    BUILTINS,
    SPECIAL_FUNCTIONS,
    call_user,
)
from rtis.sql_ops import (
    NOCONST,
    Compiled,
    Fn,
    Pred,
    add,
    as_condition,
    checked_compare,
    comparable,
    compare_with_constant,
    div,
    in_list_fn,
    lenient_call,
    like_regex,
    mod,
    mul,
    negate,
    num_result,
    strict_call,
    sub,
)
from rtis.sql_values import (
    NUM_TYPES,
    EvalError,
    Row,
    SqlError,
    cast_boolean,
    cast_integer,
    cast_numeric,
    cast_real,
    cast_text,
    describe,
    to_text,
    truth,
)

MAX_DEPTH = 128
MAX_NODES = 20_000


_SQLiteParser: Any = SQLite.Parser  # sqlglot builds it dynamically; mypy cannot see it


class RtisDialect(SQLite):
    """SQLite's syntax, with every function call kept as written (``Anonymous``).

    sqlglot normally rewrites known functions into typed nodes and even reorders
    their arguments between dialects; we want the user's function names.
    """

    class Parser(_SQLiteParser):  # type: ignore[misc]
        FUNCTIONS: dict[str, Any] = {}  # noqa: RUF012 - sqlglot's own class-level tables
        FUNCTION_PARSERS = {"CAST": SQLite.Parser.FUNCTION_PARSERS["CAST"]}  # noqa: RUF012
        # SESSION is a keyword to sqlglot; as a call it is the SESSION window.
        FUNC_TOKENS = {*SQLite.Parser.FUNC_TOKENS, TokenType.SESSION}  # noqa: RUF012


_CMP_OPS: dict[type[exp.Expression], tuple[Callable[[Any, Any], bool], str]] = {
    exp.EQ: (operator.eq, "="),
    exp.NEQ: (operator.ne, "!="),
    exp.LT: (operator.lt, "<"),
    exp.LTE: (operator.le, "<="),
    exp.GT: (operator.gt, ">"),
    exp.GTE: (operator.ge, ">="),
}
_FLIPPED = {
    operator.eq: operator.eq,
    operator.ne: operator.ne,
    operator.lt: operator.gt,
    operator.le: operator.ge,
    operator.gt: operator.lt,
    operator.ge: operator.le,
}

_CAST_TYPES: dict[str, tuple[str, Callable[[Any], Any]]] = {}
for _names, _target in (
    (("INT", "BIGINT", "SMALLINT", "TINYINT", "MEDIUMINT", "UBIGINT", "UINT"), "INTEGER"),
    (("DOUBLE", "FLOAT"), "REAL"),
    (("TEXT", "VARCHAR", "CHAR", "NVARCHAR", "NCHAR"), "TEXT"),
    (("BOOLEAN",), "BOOLEAN"),
    (("DECIMAL",), "NUMERIC"),
):
    _conv = {
        "INTEGER": cast_integer,
        "REAL": cast_real,
        "TEXT": cast_text,
        "BOOLEAN": cast_boolean,
        "NUMERIC": cast_numeric,
    }[_target]
    for _name in _names:
        _CAST_TYPES[_name] = (_target, _conv)

SUPPORTED_SYNTAX = (
    "supported: SELECT * | SELECT *, <expr> AS <name> | SELECT <expr> [AS <name>], ... "
    "FROM <stream> [WHERE <condition>] [GROUP BY <expr>, ... [, TUMBLE(...) | HOP(...) | "
    "SESSION(...)] [HAVING <condition>]]"
)


_ARITH: dict[type[exp.Expression], tuple[Callable[[Any, Any], Any], str]] = {
    exp.Add: (add, "add"),
    exp.Sub: (sub, "subtract"),
    exp.Mul: (mul, "multiply"),
    exp.Div: (div, "divide"),
    exp.Mod: (mod, "take the remainder of"),
}

# ---------------------------------------------------------------- the compiler


class ExprCompiler:
    """Compiles expression nodes of one query; raises :class:`SqlError` with positions."""

    def __init__(self, query: str, text: str, functions: Mapping[str, Callable[..., Any]]) -> None:
        self.query = query
        self.text = text
        self.functions = functions  # already validated, lower-case keys

    # -------------------------------------------------------- errors and limits

    def error(self, reason: str, node: exp.Expression | None = None, offset: int = -1) -> SqlError:
        if offset < 0 and node is not None:
            offset = node_offset(node)
        line, column = self.line_col(max(offset, 0))
        return SqlError(self.query, reason, line, column)

    def line_col(self, offset: int) -> tuple[int, int]:
        offset = min(offset, len(self.text))
        line = self.text.count("\n", 0, offset) + 1
        return line, offset - (self.text.rfind("\n", 0, offset) + 1) + 1

    def check_limits(self, tree: exp.Expression) -> None:
        """Refuse trees too deep or too big before anything recurses into them."""
        stack: list[tuple[exp.Expression, int]] = [(tree, 1)]
        count = 0
        while stack:
            node, depth = stack.pop()
            count += 1
            if depth > MAX_DEPTH:
                raise self.error(f"expression nests deeper than {MAX_DEPTH} levels", node)
            if count > MAX_NODES:
                raise self.error(f"query has more than {MAX_NODES} syntax nodes", node)
            stack.extend((child, depth + 1) for child in node.iter_expressions())

    def sql_of(self, node: exp.Expression) -> str:
        return node.sql(dialect=RtisDialect, normalize_functions=False)

    # -------------------------------------------------------- entry points

    def value(self, node: exp.Expression) -> Fn:
        """The closure computing this expression's value for a row."""
        return self.expr(node).fn

    def predicate(self, node: exp.Expression) -> Pred:
        """The closure telling whether a row satisfies this condition (NULL is false)."""
        node = _unparen(node)
        if isinstance(node, exp.And):
            a, b = self.predicate(node.this), self.predicate(node.expression)
            return lambda r: a(r) and b(r)
        if isinstance(node, exp.Or):
            a, b = self.predicate(node.this), self.predicate(node.expression)
            return lambda r: a(r) or b(r)
        if type(node) in _CMP_OPS and not self.is_constant(node):
            return self.comparison(node, pred=True).fn
        c = self.expr(node)
        if c.const is not NOCONST:
            try:
                result = truth(c.const) is True
            except EvalError as exc:
                raise self.error(f"{exc} in {c.sql}", node) from None
            return (lambda r: True) if result else (lambda r: False)
        fn, sql = c.fn, c.sql
        if c.boolean:
            return lambda r: fn(r) is True
        return lambda r: as_condition(fn(r), sql) is True

    # -------------------------------------------------------- dispatch

    def is_constant(self, node: exp.Expression) -> bool:
        for part in node.walk():
            if isinstance(part, exp.Column | exp.Dot | exp.Star):
                return False
            if isinstance(part, exp.Anonymous) and str(part.this).lower() in self.functions:
                return False  # user functions may be impure: call them per event
        return True

    def expr(self, node: exp.Expression) -> Compiled:
        handler = _HANDLERS.get(type(node))
        if handler is None:
            raise self.unsupported(node)
        compiled: Compiled = handler(self, node)
        if compiled.const is NOCONST and self.is_constant(node):
            try:
                value = compiled.fn({})
            except EvalError as exc:
                raise self.error(f"{exc}", node) from None
            return self.constant(value, compiled.sql)
        return compiled

    def constant(self, value: Any, sql: str) -> Compiled:
        return Compiled(lambda r: value, sql, const=value, boolean=value.__class__ is bool)

    def unsupported(self, node: exp.Expression) -> SqlError:
        if isinstance(node, exp.Select | exp.Subquery | exp.SetOperation):
            return self.error(f"subqueries are not supported; {SUPPORTED_SYNTAX}", node)
        if isinstance(node, exp.Window):
            return self.error(
                f"window functions (OVER) are not supported; {SUPPORTED_SYNTAX}", node
            )
        if isinstance(node, exp.Star):
            return self.error("* is only allowed as the first item of SELECT", node)
        if isinstance(node, exp.NullSafeEQ | exp.NullSafeNEQ):
            return self.error(
                "IS only supports IS [NOT] NULL, IS [NOT] TRUE and IS [NOT] FALSE; "
                "use = to compare",
                node,
            )
        if isinstance(node, exp.Func):
            return self.error(
                f"unsupported function {self.sql_of(node)!r}; {_FUNCTIONS_HELP}", node
            )
        return self.error(
            f"unsupported syntax {self.sql_of(node)!r}; expressions may use arithmetic, "
            "comparisons, AND/OR/NOT, IN, BETWEEN, LIKE, IS [NOT] NULL, CASE, CAST, ||, "
            "fields a.b.c, literals and functions",
            node,
        )

    # -------------------------------------------------------- leaves

    def h_paren(self, node: exp.Expression) -> Compiled:
        return self.expr(node.this)

    def h_literal(self, node: exp.Expression) -> Compiled:
        text = str(node.this)
        if node.is_string:
            return self.constant(text, self.sql_of(node))
        try:
            value: Any = int(text) if text.isdigit() else float(text)
        except ValueError:
            raise self.error(f"bad number {text!r}", node) from None
        if value.__class__ is int:
            value = num_result(value)
        return self.constant(value, text)

    def h_boolean(self, node: exp.Expression) -> Compiled:
        return self.constant(bool(node.this), "TRUE" if node.this else "FALSE")

    def h_null(self, node: exp.Expression) -> Compiled:
        return self.constant(None, "NULL")

    def h_field(self, node: exp.Expression) -> Compiled:
        path = self.field_path(node)
        sql = self.sql_of(node)
        if len(path) == 1:
            key = path[0]
            return Compiled(lambda r: r.get(key), sql, field=key)
        if len(path) == 2:
            k0, k1 = path

            def get2(r: Row) -> Any:
                v = r.get(k0)
                return v.get(k1) if v.__class__ is dict else None

            return Compiled(get2, sql)
        first, rest = path[0], path[1:]

        def get_path(r: Row) -> Any:
            v = r.get(first)
            for key in rest:
                if v.__class__ is not dict:
                    return None
                v = v.get(key)
            return v

        return Compiled(get_path, sql)

    def field_path(self, node: exp.Expression) -> tuple[str, ...]:
        """`a.b.c` -> ("a", "b", "c"); sqlglot reads the parts as catalog/db/table/column."""
        if isinstance(node, exp.Column):
            if not isinstance(node.this, exp.Identifier):
                raise self.unsupported(node)
            return tuple(str(part.this) for part in node.parts)
        if (
            isinstance(node, exp.Dot)
            and isinstance(node.expression, exp.Identifier)
            and isinstance(node.this, exp.Column | exp.Dot)
        ):
            return (*self.field_path(node.this), str(node.expression.this))
        raise self.unsupported(node)

    # -------------------------------------------------------- operators

    def h_arith(self, node: exp.Expression) -> Compiled:
        impl, verb = _ARITH[type(node)]
        lf = self.expr(node.this).fn
        rf = self.expr(node.expression).fn
        sql = self.sql_of(node)

        def arith(r: Row) -> Any:
            a = lf(r)
            if a is None:
                return None
            b = rf(r)
            if b is None:
                return None
            if a.__class__ in NUM_TYPES and b.__class__ in NUM_TYPES:
                return impl(a, b)
            raise EvalError(f"cannot {verb} {describe(a)} and {describe(b)} in {sql}")

        return Compiled(arith, sql)

    def h_neg(self, node: exp.Expression) -> Compiled:
        inner = self.expr(node.this).fn
        sql = self.sql_of(node)

        def neg(r: Row) -> Any:
            v: Any = inner(r)
            if v is None:
                return None
            if v.__class__ in NUM_TYPES:
                return _negated_number(v)
            raise EvalError(f"cannot negate {describe(v)} in {sql}")

        return Compiled(neg, sql)

    def h_concat(self, node: exp.Expression) -> Compiled:
        lf = self.expr(node.this).fn
        rf = self.expr(node.expression).fn
        sql = self.sql_of(node)

        def concat(r: Row) -> Any:
            a = lf(r)
            if a is None:
                return None
            b = rf(r)
            if b is None:
                return None
            if a.__class__ is str and b.__class__ is str:
                return a + b
            try:
                return to_text(a) + to_text(b)
            except EvalError:
                raise EvalError(
                    f"cannot concatenate {describe(a)} and {describe(b)} in {sql}"
                ) from None

        return Compiled(concat, sql)

    def h_compare(self, node: exp.Expression) -> Compiled:
        return self.comparison(node, pred=False)

    def comparison(self, node: exp.Expression, *, pred: bool) -> Compiled:
        """=, !=, <, <=, >, >=; with pred=True NULL becomes False (for WHERE)."""
        op, _ = _CMP_OPS[type(node)]
        left = self.expr(node.this)
        right = self.expr(node.expression)
        sql = self.sql_of(node)
        none = False if pred else None
        if left.const is not NOCONST and right.const is NOCONST:
            left, right, op = right, left, _FLIPPED[op]
        if right.const is not NOCONST:
            c = right.const
            if c is None:
                return Compiled(lambda r: none, sql, boolean=True)
            fn = compare_with_constant(left, op, c, none, sql)
            return Compiled(fn, sql, boolean=True)
        lf, rf = left.fn, right.fn

        def compare(r: Row) -> Any:
            a = lf(r)
            if a is None:
                return none
            b = rf(r)
            if b is None:
                return none
            if comparable(a, b):
                return op(a, b)
            raise EvalError(f"cannot compare {describe(a)} with {describe(b)} in {sql}")

        return Compiled(compare, sql, boolean=True)

    def h_and(self, node: exp.Expression) -> Compiled:
        lf = self.expr(node.this).fn
        rf = self.expr(node.expression).fn
        sql = self.sql_of(node)

        def and_(r: Row) -> bool | None:
            a = as_condition(lf(r), sql)
            if a is False:
                return False
            b = as_condition(rf(r), sql)
            if b is False:
                return False
            return None if a is None or b is None else True

        return Compiled(and_, sql, boolean=True)

    def h_or(self, node: exp.Expression) -> Compiled:
        lf = self.expr(node.this).fn
        rf = self.expr(node.expression).fn
        sql = self.sql_of(node)

        def or_(r: Row) -> bool | None:
            a = as_condition(lf(r), sql)
            if a is True:
                return True
            b = as_condition(rf(r), sql)
            if b is True:
                return True
            return None if a is None or b is None else False

        return Compiled(or_, sql, boolean=True)

    def h_not(self, node: exp.Expression) -> Compiled:
        inner = self.expr(node.this)
        fn = inner.fn
        sql = self.sql_of(node)
        if isinstance(_unparen(node.this), exp.Is):  # IS [NOT] NULL/TRUE never yields NULL
            return Compiled(lambda r: not fn(r), sql, boolean=True)

        def not_(r: Row) -> bool | None:
            t = as_condition(fn(r), sql)
            return None if t is None else not t

        return Compiled(not_, sql, boolean=True)

    def h_is(self, node: exp.Expression) -> Compiled:
        fn = self.expr(node.this).fn
        target = node.expression
        sql = self.sql_of(node)
        if isinstance(target, exp.Null):
            return Compiled(lambda r: fn(r) is None, sql, boolean=True)
        if isinstance(target, exp.Boolean):
            wanted = bool(target.this)
            return Compiled(lambda r: as_condition(fn(r), sql) is wanted, sql, boolean=True)
        raise self.error(
            "IS only supports IS [NOT] NULL, IS [NOT] TRUE and IS [NOT] FALSE; use = to compare",
            node,
        )

    def h_in(self, node: exp.Expression) -> Compiled:
        for key in ("query", "unnest", "field"):
            if node.args.get(key) is not None:
                raise self.error(f"IN takes a list of values; {SUPPORTED_SYNTAX}", node)
        sql = self.sql_of(node)
        vf = self.expr(node.this).fn
        items = [self.expr(e) for e in node.expressions]
        fn = in_list_fn(vf, items, sql)
        if node.args.get("negate"):
            return Compiled(negate(fn), sql, boolean=True)
        return Compiled(fn, sql, boolean=True)

    def h_between(self, node: exp.Expression) -> Compiled:
        if node.args.get("symmetric"):
            raise self.error("BETWEEN SYMMETRIC is not supported", node)
        vf = self.expr(node.this).fn
        lo = self.expr(node.args["low"]).fn
        hi = self.expr(node.args["high"]).fn
        sql = self.sql_of(node)

        def between(r: Row) -> bool | None:
            v = vf(r)
            low = lo(r)
            high = hi(r)
            ge = None if v is None or low is None else checked_compare(operator.ge, v, low, sql)
            if ge is False:
                return False
            le = None if v is None or high is None else checked_compare(operator.le, v, high, sql)
            if le is False:
                return False
            return None if ge is None or le is None else True

        if node.args.get("negate"):
            return Compiled(negate(between), sql, boolean=True)
        return Compiled(between, sql, boolean=True)

    def h_like(self, node: exp.Expression, escape_node: exp.Expression | None = None) -> Compiled:
        sql = self.sql_of(node)
        vf = self.expr(node.this).fn
        pat = self.expr(node.expression)
        esc = self.expr(escape_node) if escape_node is not None else None
        escape: str | None = None
        if esc is not None:
            if esc.const is NOCONST:
                raise self.error("the ESCAPE character must be a literal", escape_node)
            if esc.const.__class__ is not str or len(esc.const) != 1:
                raise self.error("ESCAPE expression must be a single character", escape_node)
            escape = esc.const
        if pat.const is not NOCONST and pat.const is not None:
            if pat.const.__class__ is not str:
                raise self.error(f"LIKE pattern must be text, got {describe(pat.const)}", node)
            regex = like_regex(pat.const, escape)
            match = regex.fullmatch

            def like_const(r: Row) -> bool | None:
                v = vf(r)
                if v.__class__ is str:
                    return match(v) is not None
                if v is None:
                    return None
                raise EvalError(f"LIKE needs text, got {describe(v)} in {sql}")

            fn: Fn = like_const
        else:
            pf = pat.fn

            def like(r: Row) -> bool | None:
                v = vf(r)
                if v is None:
                    return None
                p = pf(r)
                if p is None:
                    return None
                if v.__class__ is str and p.__class__ is str:
                    return like_regex(p, escape).fullmatch(v) is not None
                raise EvalError(f"LIKE needs text, got {describe(v)} and {describe(p)} in {sql}")

            fn = like
        if node.args.get("negate"):
            return Compiled(negate(fn), sql, boolean=True)
        return Compiled(fn, sql, boolean=True)

    def h_escape(self, node: exp.Expression) -> Compiled:
        inner = node.this
        if not isinstance(inner, exp.Like):
            raise self.unsupported(node)
        return self.h_like(inner, node.expression)

    def h_case(self, node: exp.Expression) -> Compiled:
        sql = self.sql_of(node)
        default_node = node.args.get("default")
        default = self.expr(default_node).fn if default_node is not None else (lambda r: None)
        ifs = node.args.get("ifs") or []
        if node.this is not None:  # CASE x WHEN v THEN ...
            base = self.expr(node.this).fn
            arms = [(self.expr(i.this).fn, self.expr(i.args["true"]).fn) for i in ifs]

            def simple_case(r: Row) -> Any:
                v = base(r)
                if v is not None:
                    for when, then in arms:
                        w = when(r)
                        if w is None:
                            continue
                        if not comparable(v, w):
                            raise EvalError(
                                f"cannot compare {describe(v)} with {describe(w)} in {sql}"
                            )
                        if v == w:
                            return then(r)
                return default(r)

            return Compiled(simple_case, sql)
        conds = [(self.predicate(i.this), self.expr(i.args["true"]).fn) for i in ifs]

        def searched_case(r: Row) -> Any:
            for cond, then in conds:
                if cond(r):
                    return then(r)
            return default(r)

        return Compiled(searched_case, sql)

    def h_cast(self, node: exp.Expression) -> Compiled:
        to = node.args.get("to")
        type_name = to.this.value if isinstance(to, exp.DataType) else None
        target = _CAST_TYPES.get(str(type_name))
        if target is None:
            raise self.error(
                f"cannot CAST to {self.sql_of(to) if to is not None else '?'}; "
                "supported types: INTEGER, REAL, TEXT, BOOLEAN, NUMERIC",
                node,
            )
        name, conv = target
        fn = self.expr(node.this).fn
        sql = self.sql_of(node)

        def cast(r: Row) -> Any:
            v = fn(r)
            if v is None:
                return None
            try:
                return conv(v)
            except EvalError as exc:
                raise EvalError(f"{exc} in {sql}") from None

        return Compiled(cast, sql, boolean=name == "BOOLEAN")

    # -------------------------------------------------------- functions

    def h_function(self, node: exp.Expression) -> Compiled:
        name = str(node.this).lower()
        args = list(node.expressions)
        sql = self.sql_of(node)
        if name in AGGREGATES:
            raise self.error(
                f"aggregate function {name}() is only allowed in the SELECT list and HAVING "
                f"of an aggregate query; {SUPPORTED_SYNTAX}",
                node,
            )
        if any(isinstance(a, exp.Star) for a in args):
            raise self.error(f"{name}(*) is not supported", node)
        if name in SPECIAL_FUNCTIONS:
            return self.special_function(node, name, args, sql)
        builtin = BUILTINS.get(name)
        if builtin is not None:
            if not builtin.min_args <= len(args) <= builtin.max_args:
                raise self.error(
                    _arity_message(name, builtin.min_args, builtin.max_args, len(args)), node
                )
            compiled = [self.expr(a) for a in args]
            if builtin.literal_check is not None:
                index, check = builtin.literal_check
                if index < len(compiled) and compiled[index].const not in (NOCONST, None):
                    try:
                        check(compiled[index].const)
                    except EvalError as exc:
                        raise self.error(str(exc), args[index]) from None
            fns = [c.fn for c in compiled]
            if builtin.strict:
                return Compiled(strict_call(builtin.impl, fns, sql), sql)
            return Compiled(lenient_call(builtin.impl, fns, sql), sql)
        user = self.functions.get(name)
        if user is not None:
            fns = [self.expr(a).fn for a in args]
            shown = str(node.this)

            def user_call(r: Row) -> Any:
                return call_user(shown, user, [f(r) for f in fns])

            return Compiled(user_call, sql)
        raise self.error(f"unknown function {str(node.this)!r}; {_FUNCTIONS_HELP}", node)

    def special_function(
        self, node: exp.Expression, name: str, args: list[exp.Expression], sql: str
    ) -> Compiled:
        fns = [self.expr(a).fn for a in args]
        if name == "coalesce":
            if len(fns) < 2:
                raise self.error(_arity_message(name, 2, 99, len(fns)), node)

            def coalesce(r: Row) -> Any:
                for f in fns:
                    v = f(r)
                    if v is not None:
                        return v
                return None

            return Compiled(coalesce, sql)
        if len(fns) != 2:
            raise self.error(_arity_message(name, 2, 2, len(fns)), node)
        a, b = fns
        if name == "ifnull":

            def ifnull(r: Row) -> Any:
                v = a(r)
                return b(r) if v is None else v

            return Compiled(ifnull, sql)

        def nullif(r: Row) -> Any:
            v = a(r)
            if v is None:
                return None
            w = b(r)
            if w is None:
                return v
            if not comparable(v, w):
                raise EvalError(f"cannot compare {describe(v)} with {describe(w)} in {sql}")
            return None if v == w else v

        return Compiled(nullif, sql)


def _arity_message(name: str, low: int, high: int, got: int) -> str:
    if low == high:
        wanted = f"{low}"
    elif high >= 99:
        wanted = f"at least {low}"
    else:
        wanted = f"{low} to {high}"
    return f"{name}() takes {wanted} argument{'s' if high != 1 else ''}, got {got}"


def _negated_number(value: Any) -> Any:
    return -value if value.__class__ is float else num_result(-int(value))


def _unparen(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def node_offset(node: exp.Expression) -> int:
    """Best-effort character offset of a node: its leftmost token that sqlglot positioned."""
    best = -1
    for part in node.walk():
        meta = part._meta  # None unless sqlglot recorded a token position
        if meta and "start" in meta:
            start = int(meta["start"])
            if best < 0 or start < best:
                best = start
    return best


_FUNCTIONS_HELP = "functions: " + ", ".join(
    [*sorted({*BUILTINS, *SPECIAL_FUNCTIONS}), "and configured [functions]"]
)

_HANDLERS: dict[type[exp.Expression], Callable[[ExprCompiler, exp.Expression], Compiled]] = {
    exp.Paren: ExprCompiler.h_paren,
    exp.Literal: ExprCompiler.h_literal,
    exp.Boolean: ExprCompiler.h_boolean,
    exp.Null: ExprCompiler.h_null,
    exp.Column: ExprCompiler.h_field,
    exp.Dot: ExprCompiler.h_field,
    exp.Add: ExprCompiler.h_arith,
    exp.Sub: ExprCompiler.h_arith,
    exp.Mul: ExprCompiler.h_arith,
    exp.Div: ExprCompiler.h_arith,
    exp.Mod: ExprCompiler.h_arith,
    exp.Neg: ExprCompiler.h_neg,
    exp.DPipe: ExprCompiler.h_concat,
    exp.EQ: ExprCompiler.h_compare,
    exp.NEQ: ExprCompiler.h_compare,
    exp.LT: ExprCompiler.h_compare,
    exp.LTE: ExprCompiler.h_compare,
    exp.GT: ExprCompiler.h_compare,
    exp.GTE: ExprCompiler.h_compare,
    exp.And: ExprCompiler.h_and,
    exp.Or: ExprCompiler.h_or,
    exp.Not: ExprCompiler.h_not,
    exp.Is: ExprCompiler.h_is,
    exp.In: ExprCompiler.h_in,
    exp.Between: ExprCompiler.h_between,
    exp.Like: ExprCompiler.h_like,
    exp.Escape: ExprCompiler.h_escape,
    exp.Case: ExprCompiler.h_case,
    exp.Cast: ExprCompiler.h_cast,
    exp.Anonymous: ExprCompiler.h_function,
}
