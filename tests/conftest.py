"""Shared fixtures: configs on temporary databases, an app client, SQLite peeks."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from rtis.config import Config, config_from_dict
from rtis.server import create_app

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def make_config(db: Path, **sections: Any) -> Config:
    """A config whose database is ``db``; ``sections`` are TOML-shaped dicts."""
    data: dict[str, Any] = {"server": {"database": str(db), **sections.pop("server", {})}}
    data["streams"] = sections.pop("streams", {"events": {}})
    data.update(sections)
    return config_from_dict(data)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "rtis.db"


@pytest.fixture
def start(aiohttp_client: Any, db_path: Path) -> ClientFactory:
    """``await start(streams=..., server=...)`` -> a test client on a fresh app."""

    async def _start(**sections: Any) -> TestClient[Any, Any]:
        config = make_config(db_path, **sections)
        client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
        return client

    return _start


def stored(db: Path, topic: str = "events") -> list[tuple[int, Any]]:
    """(offset, data) of every message of ``topic`` really in the SQLite file."""
    import orjson

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT m.offset, m.data FROM messages m JOIN topics t ON t.id = m.topic_id"
            " WHERE t.name = ? ORDER BY m.offset",
            (topic,),
        ).fetchall()
    finally:
        conn.close()
    return [(o, orjson.loads(d)) for o, d in rows]


def dead_letters(db: Path) -> list[tuple[str, str | None, str, Any]]:
    import orjson

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT stream, query, reason, data FROM dead_letters ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [(s, q, r, orjson.loads(d)) for s, q, r, d in rows]
