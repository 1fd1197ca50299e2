"""Configuration: defaults, file, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from sarclym.node.config import Config, LogFormat, load_config
from sarclym.node.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "sarclym.example.yaml"


def test_embedded_defaults() -> None:
    config = load_config(environ={})
    assert config.listener.ae_title == "SARCLYM"
    assert config.listener.port == 11112
    assert not config.listener.allow_any_peer
    assert config.storage.data_dir.is_absolute()


def test_models_are_frozen() -> None:
    config = load_config(environ={})
    with pytest.raises(ValueError, match="frozen"):
        config.listener.port = 104  # type: ignore[misc]


def test_file_and_relative_paths(tmp_path: Path) -> None:
    file = tmp_path / "node.yaml"
    file.write_text("listener:\n  port: 10400\nstorage:\n  data_dir: state\n")
    config = load_config(file, environ={})
    assert config.listener.port == 10400
    assert config.storage.data_dir == tmp_path / "state"


def test_environment_overrides_file(tmp_path: Path) -> None:
    file = tmp_path / "node.yaml"
    file.write_text("listener:\n  port: 10400\n")
    env = {
        "SARCLYM__LISTENER__PORT": "10401",
        "SARCLYM__LOGGING__FORMAT": "json",
        "SARCLYM__LISTENER__ALLOWED_PEERS": "[{ae_title: PETCT1, host: 10.0.0.5}]",
        "UNRELATED": "x",
    }
    config = load_config(file, environ=env)
    assert config.listener.port == 10401
    assert config.logging.format is LogFormat.JSON
    assert config.listener.allowed_peers[0].ae_title == "PETCT1"
    assert config.listener.allowed_peers[0].host == "10.0.0.5"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("listener:\n  prot: 104\n", r"listener\.prot: unknown key"),
        ("listener:\n  port: 70000\n", r"listener\.port: Input should be less than or equal to"),
        ("listener:\n  port: eleven\n", r"listener\.port: Input should be a valid integer"),
        ("listener:\n  ae_title: THIS_TITLE_IS_TOO_LONG\n", r"listener\.ae_title: an AE title"),
        (
            "listener:\n  allowed_peers:\n    - {host: 1.2.3.4}\n",
            r"listener\.allowed_peers\.0\.ae_title: Field required",
        ),
        ("logging:\n  level: LOUD\n", r"logging\.level: expected DEBUG"),
        ("storage:\n  min_free_mb: -1\n", r"storage\.min_free_mb: Input should be greater"),
        ("queue: {}\n", r"queue: unknown key"),
        ("- a\n- b\n", r"expected a mapping of sections, got list"),
        ("listener: [\n", r"not valid YAML"),
    ],
)
def test_bad_file_names_key_and_reason(tmp_path: Path, yaml_text: str, expected: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml_text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(file, environ={})
    assert str(file) in str(info.value)


def test_bad_environment_names_variable() -> None:
    with pytest.raises(
        ConfigError, match=r"listener\.port: .*\[from environment SARCLYM__LISTENER__PORT\]"
    ):
        load_config(environ={"SARCLYM__LISTENER__PORT": "0"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_example_config_is_complete_and_valid() -> None:
    """The example in deploy/ loads, equals the defaults and mentions every key."""
    config = load_config(EXAMPLE, environ={})
    defaults = load_config(environ={})
    assert config.model_dump(exclude={"storage"}) == defaults.model_dump(exclude={"storage"})
    text = EXAMPLE.read_text()

    def keys(model: type[BaseModel]) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            out.append(name)
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out += keys(ann)
        return out

    for key in keys(Config):
        assert f"{key}:" in text, f"deploy/sarclym.example.yaml does not document {key!r}"


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("10.0.0.9", True),
        ("fe80::1", True),
        ("10.20.0.0/16", True),
        ("orthanc", True),
        ("pacs.example.org", True),
        ("10.20.0.0/33", False),
        ("bad_host!", False),
    ],
)
def test_allowed_peer_host_is_an_address_a_network_or_a_name(host: str, ok: bool) -> None:
    data = {"listener": {"allowed_peers": [{"ae_title": "PETCT1", "host": host}]}}
    if ok:
        assert Config.model_validate(data).listener.allowed_peers[0].host == host
        return
    with pytest.raises(ValidationError, match="host"):
        Config.model_validate(data)


def test_selection_defaults_are_the_model_rules() -> None:
    """The configuration's defaults and model.imaging.selection.DEFAULT_RULES are one rule set."""
    from sarclym.model.imaging.selection import DEFAULT_RULES

    assert Config().selection.rules() == DEFAULT_RULES
