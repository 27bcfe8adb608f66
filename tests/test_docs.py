"""The documentation stays in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from rtis.config import settings_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_in_docs_config_md() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    m = re.search(r"<!-- settings:begin -->\n(.*)<!-- settings:end -->", text, re.S)
    assert m, "docs/config.md lost its settings markers"
    assert m.group(1).strip() == settings_markdown().strip(), (
        "docs/config.md is out of date: paste the output of "
        "python -c 'from rtis.config import settings_markdown; print(settings_markdown())'"
    )


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in readme
    assert command in ci.splitlines()


def test_example_config_toml_is_valid() -> None:
    from rtis.config import load_config
    from rtis.pipeline import compile_queries

    config = load_config(ROOT / "config.toml")
    assert "orders" in config.streams
    assert set(compile_queries(config)) == set(config.queries)
