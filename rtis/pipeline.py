"""Continuous queries at run time: compile them, feed them, checkpoint them.

(The query runners arrive with issue 3; for now this module compiles every
configured query so that bad SQL stops startup and ``rtis check``.)
"""

from __future__ import annotations

from .config import Config
from .errors import ConfigError


def compile_queries(config: Config) -> dict[str, str]:
    """Compile every query of ``config``; return name -> plan, or raise
    ConfigError naming each bad query (with line and column in its SQL)."""
    if not config.queries:
        return {}
    from .sql import SqlError, compile_query, load_functions

    errors: list[str] = []
    try:
        functions = load_functions(config.functions)
    except (SqlError, ValueError) as e:
        raise ConfigError([f"functions: {e}"]) from e
    plans: dict[str, str] = {}
    for name, q in config.queries.items():
        try:
            plans[name] = compile_query(
                name, q.sql, streams=config.streams.keys(), functions=functions
            ).plan
        except SqlError as e:
            errors.append(f"queries.{name}.sql: {e}")
    if errors:
        raise ConfigError(errors)
    return plans
