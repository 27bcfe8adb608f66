"""The ``rtis`` command: ``serve`` and ``check``.

``main(argv)`` returns an exit code, so tests call it directly. User errors
are one clear message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aiohttp import web

from . import __version__
from .config import Config, load_config, replace_server
from .errors import ConfigError, RtisError

log = logging.getLogger("rtis")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtis",
        description="rtis: real-time events over HTTP, SQLite and WebSocket in one process.",
    )
    parser.add_argument("--version", action="version", version=f"rtis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Reads --config, else ./config.toml, else the embedded "
        "default (one stream 'events', 127.0.0.1:8080, ./rtis.db).",
    )
    _config_arg(serve)
    serve.add_argument("--host", help="address to listen on (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    serve.add_argument("--db", help="SQLite database file (overrides server.database)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without [auth]",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        default="plain",
        choices=["plain", "json"],
        help="log lines on stderr as plain text or as JSON objects (default plain)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per HTTP request (off by default; overrides server.access_log)",
    )

    check = sub.add_parser(
        "check",
        help="validate the configuration without starting",
        description="Validate the configuration and print every problem, or a summary.",
    )
    _config_arg(check)

    from .client import add_send_parser, add_tail_parser
    from .loadgen import add_bench_parser

    add_send_parser(sub)
    add_tail_parser(sub)
    add_bench_parser(sub)

    from .demo import add_demo_parser

    add_demo_parser(sub)

    keys = sub.add_parser(
        "keys",
        help="make API keys",
        description="Make API keys for [auth.keys.NAME]; rtis keeps only their hashes.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = keys_sub.add_parser(
        "new",
        help="print a new API key once, and the config snippet holding its hash",
        description="Print a new API key once, and the [auth.keys.NAME] snippet for "
        "config.toml that holds only its SHA-256 hash. Store the key now: it cannot be "
        "shown again.",
    )
    new.add_argument("--name", required=True, help="the key's name in config (an identifier)")
    new.add_argument(
        "--scope",
        dest="scopes",
        action="extend",
        nargs="+",
        required=True,
        metavar="SCOPE",
        help="publish:STREAM, subscribe:TOPIC, read:TOPIC, admin or *; patterns like "
        "publish:* are allowed; repeat or list several",
    )
    new.add_argument(
        "--rate", type=float, help="events per second for this key (default: auth.rate)"
    )
    new.add_argument("--burst", type=int, help="bucket size for this key (default: auth.burst)")
    return parser


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="path to config.toml (default: ./config.toml if present)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    if getattr(args, "run", None) is not None:  # send, tail, bench: clients, no config
        return int(args.run(args))
    if args.command == "keys":
        return _keys_new(args)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"rtis: configuration error in {args.config or 'config.toml'}:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        return _check(config)
    return _serve(config, args)


def _check(config: Config) -> int:
    from .pipeline import compile_queries

    try:
        plans = compile_queries(config)
    except ConfigError as e:
        print("rtis: configuration error:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{config.path or '(embedded default)'}: ok")
    print(f"  database: {config.database_path()} (durability {config.server.durability})")
    print(f"  listen:   {config.server.host}:{config.server.port}")
    if config.auth is None:
        print("  auth:     none (serves on loopback only)")
    else:
        algorithms = ", ".join(config.auth.jwt.algorithms()) if config.auth.jwt else "none"
        print(f"  auth:     {len(config.auth.keys)} API keys; JWT: {algorithms}")
    for name, s in config.streams.items():
        extras = [
            f"{k}={v}" for k, v in (("time_field", s.time_field), ("dedupe_key", s.dedupe_key)) if v
        ]
        extras.append(f"on_invalid={s.on_invalid}")
        if s.schema is not None:
            extras.append("schema")
        print(f"  stream {name}: {', '.join(extras)}")
    for name, query in plans.items():
        print(f"  query {name}:")
        for line in query.plan.splitlines():
            print(f"    {line}")
    return 0


def _keys_new(args: Any) -> int:
    """Print a new key and its config snippet; the key is printed nowhere else."""
    from .auth import hash_key, new_key, scope_problem
    from .config import NAME_RE

    problems = []
    if not NAME_RE.match(args.name):
        problems.append(f"--name {args.name!r}: a letter or _ then letters, digits or _")
    problems += [f"--scope {p}" for p in map(scope_problem, args.scopes) if p]
    if args.rate is not None and args.rate < 0:
        problems.append(f"--rate must not be negative, got {args.rate:g}")
    if args.burst is not None and args.burst < 1:
        problems.append(f"--burst must be at least 1, got {args.burst}")
    if problems:
        for line in problems:
            print(f"rtis: {line}", file=sys.stderr)
        return EXIT_CONFIG
    key = new_key()
    scopes = ", ".join(f'"{s}"' for s in dict.fromkeys(args.scopes))
    print(f"API key {args.name!r}; it is shown only now, rtis keeps only its hash:\n")
    print(f"    {key}\n")
    print("Add this to config.toml and restart rtis:\n")
    print(f"[auth.keys.{args.name}]")
    print(f'hash = "{hash_key(key)}"')
    print(f"scopes = [{scopes}]")
    if args.rate is not None:
        print(f"rate = {args.rate:g}")
    if args.burst is not None:
        print(f"burst = {args.burst}")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(config: Config, args: Any) -> int:
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.db is not None:
        overrides["database"] = args.db
    if getattr(args, "access_log", False):
        overrides["access_log"] = True
    if overrides:
        config = replace_server(config, **overrides)
    if args.db is not None:
        from dataclasses import replace

        config = replace(config, path=None)  # --db is relative to the working directory
    from .logs import setup_logging

    setup_logging(args.log_level, getattr(args, "log_format", "plain"))
    if config.auth is None and not _is_loopback(config.server.host) and not args.insecure:
        print(
            f"rtis: refusing to listen on {config.server.host}: no [auth] is configured, so "
            "anyone who can reach it could publish and read. Listen on 127.0.0.1, or pass "
            "--insecure if something in front of rtis authenticates clients.",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        from .pipeline import compile_queries

        compile_queries(config)
    except ConfigError as e:
        print("rtis: configuration error:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        asyncio.run(_run(config))
    except RtisError as e:
        print(f"rtis: {e.message}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as e:
        print(
            f"rtis: cannot listen on {config.server.host}:{config.server.port}: {e.strerror or e}",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    return 0


async def _run(
    config: Config, companion: Callable[[str], Coroutine[Any, Any, None]] | None = None
) -> None:
    """Serve until SIGINT/SIGTERM; ``companion(url)`` runs alongside (``rtis demo``)."""
    from .logs import access_log_args, startup_summary
    from .server import create_app

    app = create_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=config.server.shutdown_timeout,
        **access_log_args(config.server.access_log),
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    side: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
        await site.start()
        port = _bound_port(site)
        host = config.server.host
        url_host = f"[{host}]" if ":" in host else host
        # Tests and scripts read this line to find the port when --port 0.
        print(f"rtis listening on http://{url_host}:{port}", flush=True)
        startup_summary(config, f"http://{url_host}:{port}")
        if companion is not None:
            side = asyncio.create_task(companion(f"http://{url_host}:{port}"))
        await stop.wait()
        log.info("shutting down: finishing in-flight requests and commits")
    finally:
        if side is not None:
            side.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await side
        with contextlib.suppress(Exception):
            await runner.cleanup()
        log.info("stopped")


def _bound_port(site: web.TCPSite) -> int:
    server = site._server
    sockets: list[socket.socket] = list(getattr(server, "sockets", None) or [])
    if sockets:
        return int(sockets[0].getsockname()[1])
    return int(site._port)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
