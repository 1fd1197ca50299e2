"""storage.database_url: the embedded SQLite file by default, or a SQLite / PostgreSQL URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from sarclym.node.config import load_config
from sarclym.node.errors import ConfigError


def test_default_is_the_embedded_file() -> None:
    assert load_config(environ={}).storage.database_url == ""


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////srv/sarclym/state.db",
        "postgresql://sarclym@db.example.org:5432/sarclym",
        "postgresql+psycopg://sarclym:secret@10.0.0.5/sarclym",
    ],
)
def test_sqlite_and_postgresql_urls_are_accepted(url: str) -> None:
    config = load_config(environ={"SARCLYM__STORAGE__DATABASE_URL": url})
    assert config.storage.database_url == url


@pytest.mark.parametrize(
    "url", ["mysql://root@db/sarclym", "state.db", "postgresql://", "sqlite://", "http://x/y"]
)
def test_other_urls_are_refused_naming_the_key(tmp_path: Path, url: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(f"storage:\n  database_url: '{url}'\n")
    with pytest.raises(
        ConfigError, match=r"storage\.database_url: expected '' \(the embedded state\.db\)"
    ) as info:
        load_config(file, environ={})
    assert str(file) in str(info.value)


def test_a_refused_url_does_not_echo_its_password(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("storage:\n  database_url: 'mysql://root:hunter2@db/sarclym'\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert "hunter2" not in str(info.value)
