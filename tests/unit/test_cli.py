"""The command line: --help everywhere, --version, exit codes, config check/show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sarclym.node import __version__
from sarclym.node.cli import EXIT_BAD_INPUT, EXIT_OK, main

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
