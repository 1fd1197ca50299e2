"""The command line: --help everywhere, --version, exit codes, config check/show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sarclym.node import __version__
from sarclym.node.cli import EXIT_BAD_INPUT, EXIT_OK, main
from sarclym.node.config import CONFIG_ENV, loading
from sarclym.node.store.state import StateDB

SUBCOMMANDS = [
    "synth",
    "config",
    "infer",
    "retrain",
    "model",
    "retry",
    "serve",
    "worker",
    "status",
    "audit",
    "dashboard-token",
    "demo",
]


@pytest.fixture(autouse=True)
def _no_installed_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands see no $SARCLYM_CONFIG and no ./sarclym.yaml or /etc/sarclym file."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setattr(loading, "SEARCH_PATH", ())


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sarclym.node.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"sarclym-node {__version__}"


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("sarclym-node")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "exit codes" in proc.stdout


@pytest.mark.parametrize("sub", ["", *SUBCOMMANDS])
def test_help_everywhere(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([sub, "--help"] if sub else ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: sarclym-node" in out
    assert "exit codes" in out
    assert "RESEARCH USE ONLY" in out


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_config_show_prints_effective_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == EXIT_OK
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["listener"]["ae_title"] == "SARCLYM"


def test_bad_config_exit_code_and_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listener:\n  port: -5\n")
    proc = _run("--config", str(bad), "config", "check")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "listener.port" in proc.stderr
    assert str(bad) in proc.stderr


def test_env_override_through_cli(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "SARCLYM__LISTENER__AE_TITLE": "NODE2"}
    proc = _run("config", "show", env=env)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["listener"]["ae_title"] == "NODE2"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["synth", "--out", "x", "--cases", "0"], "expected a number >= 1"),
        (["synth", "--out", "x", "--cases", "2", "--send", "nohost"], "expected HOST:PORT"),
    ],
)
def test_synth_argument_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_shuffle_without_send_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["synth", "--out", str(tmp_path / "o"), "--cases", "1", "--shuffle"])
    assert code == EXIT_BAD_INPUT
    assert "--shuffle" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["12x8", "256x", "0", "axb", "256x128x2"])
def test_retrain_input_size_is_checked(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["retrain", "--data", ".", "--labels", "x.csv", "--input-size", text])
    assert info.value.code == 2
    assert "--input-size" in capsys.readouterr().err


def test_worker_refuses_zero_threads(capsys: pytest.CaptureFixture[str]) -> None:
    """A `worker` process without threads would do nothing at all: say so, exit 2."""
    assert main(["worker", "--workers", "0"]) == EXIT_BAD_INPUT
    assert "--workers must be at least 1" in capsys.readouterr().err


# Which configuration a command read, and the data folder `status` and `audit` look in.


def _installed_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A node's configuration in a temporary "etc" folder, on the search path; its data folder
    holds a state database. The working directory is another folder."""
    data = tmp_path / "srv" / "node-data"
    data.mkdir(parents=True)
    StateDB(data / "state.db").close()
    etc = tmp_path / "etc" / "sarclym"
    etc.mkdir(parents=True)
    installed = etc / "sarclym.yaml"
    installed.write_text(f"storage:\n  data_dir: {data}\n")
    monkeypatch.setattr(loading, "SEARCH_PATH", (Path("sarclym.yaml"), installed))
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return installed, data


@pytest.mark.parametrize("command", ["status", "audit"])
def test_status_and_audit_name_the_configuration_and_data_folder(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    installed, data = _installed_node(tmp_path, monkeypatch)
    assert main([command]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err.splitlines()[:2] == [f"configuration: {installed}", f"data folder: {data}"]
    assert "no state database" not in captured.out


@pytest.mark.parametrize("command", ["status", "audit"])
def test_with_json_stdout_stays_json(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    installed, data = _installed_node(tmp_path, monkeypatch)
    assert main([command, "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    # Standard output stays JSON: an empty list of series, or no audit lines at all.
    assert captured.out == ("[]\n" if command == "status" else "")
    assert f"configuration: {installed}" in captured.err
    assert f"data folder: {data}" in captured.err


@pytest.mark.parametrize("command", ["status", "audit"])
def test_without_state_database_say_how_to_name_the_nodes_configuration(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([command]) == EXIT_OK
    captured = capsys.readouterr()
    err, lines = captured.err.splitlines(), captured.out.splitlines()
    assert err[0] == "configuration: embedded defaults (no configuration file found)"
    assert err[1] == f"data folder: {tmp_path / 'var'}"
    assert lines[0].startswith(f"no state database at {tmp_path / 'var' / 'state.db'}")
    assert "--config FILE" in lines[1]
    assert "SARCLYM_CONFIG=FILE" in lines[1]
    assert "/etc/sarclym/sarclym.yaml" in lines[1]
    assert not (tmp_path / "var").exists()  # reading creates nothing


def test_every_command_reads_the_same_configuration_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config, else $SARCLYM_CONFIG, else ./sarclym.yaml, else the installed file."""
    installed, _ = _installed_node(tmp_path, monkeypatch)
    named, explicit, local = tmp_path / "named.yaml", tmp_path / "explicit.yaml", Path.cwd()
    for file in (named, explicit):
        file.write_text("{}\n")

    def checked(*argv: str) -> str:
        assert main([*argv, "config", "check"]) == EXIT_OK
        return capsys.readouterr().out.strip()

    assert checked() == f"configuration OK ({installed})"
    (local / "sarclym.yaml").write_text("{}\n")
    assert checked() == f"configuration OK ({local / 'sarclym.yaml'})"
    monkeypatch.setenv(CONFIG_ENV, str(named))
    assert checked() == f"configuration OK ({named})"
    assert checked("--config", str(explicit)) == f"configuration OK ({explicit})"
