"""The command line: --help everywhere, --version, exit codes, config check/show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sarclym.node import __version__
from sarclym.node.cli import EXIT_BAD_INPUT, EXIT_OK, main
from sarclym.node.cli.exitcodes import EXIT_BROKEN_PIPE
from sarclym.node.config import CONFIG_ENV, loading
from sarclym.node.store.state import StateDB
from tests.pg import StateBackend

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


def test_synth_refuses_a_folder_that_is_not_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Writing into an older cohort would merge two cohorts under one labels.csv."""
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "labels.csv").write_text("old labels\n")
    assert main(["synth", "--out", str(out), "--cases", "1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"--out {out}: not empty" in err
    assert "--force" in err
    assert [p.name for p in out.iterdir()] == ["labels.csv"]
    assert (out / "labels.csv").read_text() == "old labels\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "0"], "--lr: expected a number > 0"),
        (["--lr", "nan"], "--lr: expected a number > 0"),
        (["--suv-max", "-1"], "--suv-max: expected a number > 0"),
    ],
)
def test_retrain_numbers_and_choices_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["retrain", "--data", ".", "--labels", "x.csv", *argv])
    assert info.value.code == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


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


def _installed_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: StateBackend | None = None
) -> tuple[Path, Path]:
    """A node's configuration in a temporary "etc" folder, on the search path; its data folder
    holds a state database (or the configuration names ``backend``'s, where it has one). The
    working directory is another folder."""
    data = tmp_path / "srv" / "node-data"
    data.mkdir(parents=True)
    database_url = "" if backend is None else backend.database_url
    StateDB.in_data_dir(data, database_url=database_url).close()
    etc = tmp_path / "etc" / "sarclym"
    etc.mkdir(parents=True)
    installed = etc / "sarclym.yaml"
    storage = {"data_dir": str(data), **({"database_url": database_url} if database_url else {})}
    installed.write_text(yaml.safe_dump({"storage": storage}))
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
    state_backend: StateBackend,
) -> None:
    installed, data = _installed_node(tmp_path, monkeypatch, state_backend)
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
    state_backend: StateBackend,
) -> None:
    installed, data = _installed_node(tmp_path, monkeypatch, state_backend)
    assert main([command, "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    # Standard output stays JSON: an empty list of series, or no audit lines at all.
    assert captured.out == ("[]\n" if command == "status" else "")
    assert f"configuration: {installed}" in captured.err
    assert f"data folder: {data}" in captured.err


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
@pytest.mark.parametrize("command", ["status", "audit"])
def test_without_state_database_say_how_to_name_the_nodes_configuration(
    command: str,
    json_flag: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No node to report on is an error (exit 2, bad input), said on stderr: a script reading
    stdout (JSON or text) gets nothing that looks like an idle node."""
    monkeypatch.chdir(tmp_path)
    assert main([command, *json_flag]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert err[0] == "configuration: embedded defaults (no configuration file found)"
    assert err[1] == f"data folder: {tmp_path / 'var'}"
    assert err[2].startswith(
        f"sarclym-node {command}: no state database at {tmp_path / 'var' / 'state.db'}"
    )
    assert "--config FILE" in err[3]
    assert "SARCLYM_CONFIG=FILE" in err[3]
    assert "/etc/sarclym/sarclym.yaml" in err[3]
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


# Usage errors and closed pipes end with an exit code, never a traceback.


@pytest.mark.parametrize("command", ["status", "audit", "config"])
def test_unknown_log_level_is_a_usage_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--log-level", "LOUD", command])
    assert info.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "argument --log-level" in err
    assert "'LOUD'" in err
    assert "DEBUG, INFO, WARNING, ERROR or CRITICAL" in err
    assert "Traceback" not in err


def test_log_level_is_case_insensitive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "warning", "config", "check"]) == EXIT_OK


def _node_with_history(data: Path, events: int, backend: StateBackend) -> None:
    """A state database (``backend``'s) with one series and ``events`` audit events."""
    from sarclym.node.store.audit import record_event
    from tests.unit.test_state import pet

    with backend.open(data) as state:
        for index in (1, 2, 3, 4):
            state.record_instance(pet(index))
        with state.transaction() as conn:
            for k in range(events):
                record_event(
                    conn, f"1.2.826.0.1.3680043.10.1234.{k}", "received", actor="PETCT1", now=k
                )


def _cli_env(data: Path, backend: StateBackend) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    return {**env, **backend.environ, "SARCLYM__STORAGE__DATA_DIR": str(data)}


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["audit"]])
def test_stdout_closed_before_the_first_line_ends_quietly(
    argv: list[str], tmp_path: Path, state_backend: StateBackend
) -> None:
    """`sarclym-node status | true`: the reader is gone before anything is written."""
    import os

    data = tmp_path / "data"
    _node_with_history(data, 10, state_backend)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sarclym.node.cli", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=_cli_env(data, state_backend),
            cwd=tmp_path,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == EXIT_BROKEN_PIPE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "BrokenPipeError" not in proc.stderr
    assert "Exception ignored" not in proc.stderr


@pytest.mark.parametrize("argv", [["audit", "--limit", "4000"], ["audit", "--json"]])
def test_reader_that_stops_early_ends_the_command_quietly(
    argv: list[str], tmp_path: Path, state_backend: StateBackend
) -> None:
    """`sarclym-node audit | head -1`: the reader takes one line and closes the pipe while
    the command still has much more to write (far more than the pipe holds)."""
    import fcntl
    import os

    data = tmp_path / "data"
    _node_with_history(data, 4000, state_backend)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # smallest pipe: the writer must block
    proc = subprocess.Popen(
        [sys.executable, "-m", "sarclym.node.cli", *argv],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        env=_cli_env(data, state_backend),
        cwd=tmp_path,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = reader.readline()
    # The reader is closed: the command gets EPIPE on its next write.
    _, err = proc.communicate(timeout=120)
    assert first.strip(), err
    assert proc.returncode == EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err
    assert "Exception ignored" not in err


def test_hints_name_the_executable_that_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare `sarclym-node` in a hint only where that name on PATH is what runs."""
    from sarclym.node.cli.invocation import self_command

    bin_dir = tmp_path / "my venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "sarclym-node"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert self_command() == f"'{script}'"  # not on PATH: its path, quoted for a shell
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin")
    assert self_command() == "sarclym-node"
    monkeypatch.chdir(bin_dir.parent)
    monkeypatch.setattr(sys, "argv", ["bin/sarclym-node", "demo"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert self_command() == f"'{script}'"  # absolute: the hint may be used elsewhere
    monkeypatch.setattr(sys, "argv", ["/x/sarclym/node/cli/__main__.py", "demo"])
    assert self_command() == f"{sys.executable} -m sarclym.node.cli"


def test_demo_log_level_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """demo on a terminal: WARNING unless --log-level (or a quieter logging.level) says."""
    from sarclym.node.cli.main import _build_parser, _effective_level
    from sarclym.node.config import Config

    def level(argv: list[str], *, terminal: bool, configured: str = "INFO") -> str:
        args = _build_parser().parse_args(argv)
        config = Config.model_validate({"logging": {"level": configured}})
        return _effective_level(args, config, terminal=terminal)

    assert level(["demo"], terminal=True) == "WARNING"
    assert level(["demo"], terminal=False) == "INFO"
    assert level(["--log-level", "debug", "demo"], terminal=True) == "DEBUG"
    assert level(["demo"], terminal=True, configured="ERROR") == "ERROR"
    assert level(["status"], terminal=True) == "INFO"
