"""One ``serve`` per data folder (issue 14): a second one is refused with the holder's PID;
``worker`` processes share the folder and take no lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sarclym.node.cli import main
from sarclym.node.cli.exitcodes import EXIT_IN_USE
from sarclym.node.config import Config, load_config
from sarclym.node.service import Node
from sarclym.node.store.layout import DataLayout
from sarclym.node.store.serve_lock import DataFolderInUse, ServeLock
from tests.conftest import free_port


def _config(tmp_path: Path) -> Config:
    """A node on ``tmp_path/var`` listening on a free loopback port of its own."""
    return load_config(
        environ={
            "SARCLYM__STORAGE__DATA_DIR": str(tmp_path / "var"),
            "SARCLYM__STORAGE__MIN_FREE_MB": "0",
            "SARCLYM__SERVICE__LOCAL_ORTHANC_URL": "null",
            "SARCLYM__SERVICE__HTTP_PORT": "0",
            "SARCLYM__LISTENER__HOST": "127.0.0.1",
            "SARCLYM__LISTENER__PORT": str(free_port()),
        }
    )


def test_a_second_lock_on_the_folder_is_refused_with_the_holder(tmp_path: Path) -> None:
    path = DataLayout(tmp_path / "var").serve_lock
    with ServeLock(path):
        assert path.read_text().split() == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(DataFolderInUse) as info:
            ServeLock(path).acquire()
        message = str(info.value)
        assert str(tmp_path / "var") in message
        assert f"PID {os.getpid()} on {socket.gethostname()}" in message
    assert path.read_text() == ""  # no stale PID once released
    with ServeLock(path):  # free again
        pass


def test_the_lock_goes_with_a_killed_holder(tmp_path: Path) -> None:
    """kill -9 leaves the file; the kernel drops the lock with the process, nothing to clean."""
    path = DataLayout(tmp_path / "var").serve_lock
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from sarclym.node.store.serve_lock import ServeLock
        ServeLock(Path({str(path)!r})).acquire()
        print("held", flush=True)
        time.sleep(600)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DataFolderInUse, match=f"PID {holder.pid} on "):
            ServeLock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert path.exists()
    with ServeLock(path):
        pass


def test_a_second_serve_node_is_refused_and_a_worker_is_not(tmp_path: Path) -> None:
    """The second serve listens on a port of its own: before the lock it started without a
    word and ran a second sweeper, deliverer and recovery over the same state.db."""
    first = Node(_config(tmp_path))
    first.start(worker_threads=0)
    try:
        second = Node(_config(tmp_path))
        with pytest.raises(DataFolderInUse, match=f"PID {os.getpid()} "):
            second.start(worker_threads=0)
        second.stop()  # after a refused start, as `serve` does in its finally
        worker = Node(_config(tmp_path), worker_only=True)
        worker.start(worker_threads=1)
        worker.stop()
    finally:
        first.stop()
    again = Node(_config(tmp_path))  # the lock went with stop()
    again.start(worker_threads=0)
    again.stop()


def test_listener_replicas_share_the_folder_when_configured(tmp_path: Path) -> None:
    """storage.shared_by_serves: two serve processes on one folder, each on its own port (the
    two-listener ingest bench runs so); neither takes the lock."""

    def replica() -> Node:
        return Node(_config(tmp_path).model_copy(update={"storage": shared}))

    shared = _config(tmp_path).storage.model_copy(update={"shared_by_serves": True})
    first, second = replica(), replica()
    first.start(worker_threads=0)
    try:
        second.start(worker_threads=0)
        assert first.listener.port != second.listener.port
        second.stop()
    finally:
        first.stop()
    owner = Node(_config(tmp_path))  # replicas took no lock: a locking serve starts
    owner.start(worker_threads=0)
    owner.stop()


def test_serve_on_a_folder_in_use_exits_with_the_in_use_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "var"
    for key, value in {
        "STORAGE__DATA_DIR": str(data_dir),
        "STORAGE__MIN_FREE_MB": "0",
        "SERVICE__LOCAL_ORTHANC_URL": "null",
        "SERVICE__HTTP_PORT": "0",
        "SERVICE__WORKERS": "0",
        "LISTENER__HOST": "127.0.0.1",
        "LISTENER__PORT": str(free_port()),
    }.items():
        monkeypatch.setenv(f"SARCLYM__{key}", value)
    monkeypatch.delenv("SARCLYM_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with ServeLock(DataLayout(data_dir).serve_lock):
        assert main(["serve"]) == EXIT_IN_USE
    err = capsys.readouterr().err
    assert f"data folder {data_dir} is in use by another sarclym-node serve" in err
    assert f"PID {os.getpid()} on {socket.gethostname()}" in err
    assert "Traceback" not in err
