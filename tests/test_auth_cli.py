"""``rtis keys new`` and the loopback rule of ``rtis serve``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from rtis import cli
from rtis.auth import Authenticator
from rtis.config import Config, config_from_dict, load_config


def test_keys_new_prints_the_key_once_and_a_snippet_holding_only_its_hash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(
        ["keys", "new", "--name", "ingest", "--scope", "publish:orders", "--scope", "read:*"]
    )
    assert code == 0
    out = capsys.readouterr().out
    [key] = re.findall(r"^    (rtis_\S+)$", out, re.M)
    assert out.count(key) == 1
    snippet = out[out.index("[auth.keys.ingest]") :]
    assert key not in snippet
    table = tomllib.loads(snippet)
    assert table["auth"]["keys"]["ingest"]["scopes"] == ["publish:orders", "read:*"]
    config = config_from_dict({"streams": {"orders": {}}, "auth": table["auth"]})
    assert config.auth is not None
    principal = Authenticator(config.auth.keys).authenticate(key)
    assert principal.id == "key:ingest" and principal.allows("publish:orders")


def test_keys_new_takes_several_scopes_after_one_flag_and_a_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["keys", "new", "--name", "app", "--scope", "publish:a", "subscribe:a", "--rate", "50"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    snippet = tomllib.loads(out[out.index("[auth.keys.app]") :])
    assert snippet["auth"]["keys"]["app"]["scopes"] == ["publish:a", "subscribe:a"]
    assert snippet["auth"]["keys"]["app"]["rate"] == 50


def test_keys_new_refuses_bad_names_and_scopes_in_one_line_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["keys", "new", "--name", "my key", "--scope", "publsh:x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2
    assert "--name 'my key'" in lines[0] and "'publsh:x' is not a scope" in lines[1]


def test_keys_new_needs_no_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text("this is not toml")
    assert cli.main(["keys", "new", "--name", "k", "--scope", "admin"]) == 0


def write_auth_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[streams.events]\n\n[auth.keys.admin]\nhash = "sha256:{"0" * 64}"\nscopes = ["admin"]\n'
    )
    return path


def test_serve_beyond_loopback_is_allowed_once_auth_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[Config] = []

    async def fake_run(config: Config, *args: Any) -> None:
        served.append(config)

    monkeypatch.setattr(cli, "_run", fake_run)
    path = write_auth_config(tmp_path)
    argv = ["serve", "--config", str(path), "--host", "0.0.0.0", "--port", "0"]
    assert cli.main(argv) == 0
    assert served and served[0].server.host == "0.0.0.0"
    assert load_config(path).auth is not None


def test_serve_beyond_loopback_without_auth_is_refused_unless_insecure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[Config] = []

    async def fake_run(config: Config, *args: Any) -> None:
        served.append(config)

    monkeypatch.setattr(cli, "_run", fake_run)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "no [auth] is configured" in capsys.readouterr().err
    assert not served
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0", "--insecure"]) == 0
    assert len(served) == 1
