"""Configuration: which file, defaults, file, environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from sarclym.node.config import (
    CONFIG_ENV,
    Config,
    LogFormat,
    find_config,
    load_config,
    loading,
    search_order,
)
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


# Which file: --config, else $SARCLYM_CONFIG, else ./sarclym.yaml, else /etc/sarclym/sarclym.yaml
# (here a temporary stand-in: the tests never write /etc), else the embedded defaults.


def _installed(tmp_path: Path, text: str = "storage:\n  data_dir: data\n") -> Path:
    """A configuration where deploy/ installs it, under a temporary "etc" folder."""
    folder = tmp_path / "etc" / "sarclym"
    folder.mkdir(parents=True)
    file = folder / "sarclym.yaml"
    file.write_text(text)
    return file


def test_installed_config_is_found_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = _installed(tmp_path)
    elsewhere = tmp_path / "home" / "operator"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(loading, "SEARCH_PATH", (Path("sarclym.yaml"), installed))

    found = find_config(environ={})
    assert found == installed
    # Its relative data folder is the installed file's, not the working directory's.
    assert load_config(found, environ={}).storage.data_dir == installed.parent / "data"


def test_search_order_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = _installed(tmp_path)
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    search = (Path("sarclym.yaml"), installed)
    named, explicit = tmp_path / "named.yaml", tmp_path / "explicit.yaml"
    env = {CONFIG_ENV: str(named)}

    assert find_config(None, environ={}, search_path=search) == installed
    (cwd / "sarclym.yaml").write_text("{}\n")
    assert find_config(None, environ={}, search_path=search) == cwd / "sarclym.yaml"
    assert find_config(None, environ=env, search_path=search) == named
    assert find_config(explicit, environ=env, search_path=search) == explicit
    assert find_config(str(explicit), environ=env, search_path=search) == explicit


def test_nothing_found_is_the_embedded_defaults(tmp_path: Path) -> None:
    search = (tmp_path / "sarclym.yaml", tmp_path / "etc" / "sarclym.yaml")
    assert find_config(None, environ={}, search_path=search) is None
    assert find_config(None, environ={}, search_path=()) is None


def test_empty_names_count_as_unset(tmp_path: Path) -> None:
    installed = _installed(tmp_path)
    env = {CONFIG_ENV: ""}
    assert find_config("", environ=env, search_path=(installed,)) == installed


def test_a_named_file_that_is_missing_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    installed = _installed(tmp_path)
    missing = tmp_path / "typo.yaml"
    for found in (
        find_config(missing, environ={}, search_path=(installed,)),
        find_config(None, environ={CONFIG_ENV: str(missing)}, search_path=(installed,)),
    ):
        assert found == missing
        with pytest.raises(ConfigError, match="cannot read the file") as info:
            load_config(found, environ={})
        assert str(missing) in str(info.value)


def test_a_file_that_cannot_be_examined_is_returned_to_be_reported(tmp_path: Path) -> None:
    """A folder without permission is not "no file": loading then names the file and why."""

    class Locked(type(Path())):  # type: ignore[misc]
        def is_file(self) -> bool:
            raise PermissionError(13, "Permission denied")

    locked = Locked(tmp_path / "locked" / "sarclym.yaml")
    assert find_config(None, environ={}, search_path=(locked, _installed(tmp_path))) == locked


def test_search_order_in_words() -> None:
    assert search_order() == (
        "$SARCLYM_CONFIG, else ./sarclym.yaml, else /etc/sarclym/sarclym.yaml, "
        "else the embedded defaults"
    )
    assert search_order(()) == "$SARCLYM_CONFIG, else the embedded defaults"


def test_default_search_path_is_where_deploy_installs_the_file() -> None:
    """The systemd units, the Compose file and the Helm chart use /etc/sarclym/sarclym.yaml."""
    deploy = EXAMPLE.parent
    installed = Path("/etc/sarclym/sarclym.yaml")
    search_path = loading.SEARCH_PATH
    assert search_path == (Path("sarclym.yaml"), installed)
    for unit in ("systemd/sarclym-node.service", "systemd/sarclym-worker@.service"):
        assert f"SARCLYM_CONFIG={installed}" in (deploy / unit).read_text()
    assert f":{installed}:ro" in (deploy / "compose.yaml").read_text()
    helpers = (deploy / "helm" / "sarclym-node" / "templates" / "_helpers.tpl").read_text()
    assert f"value: {installed}" in helpers
