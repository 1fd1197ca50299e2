"""dicom/reactor: the listener's associations block on their socket and queues, and behave as
with pynetdicom's reactor (release, abort, the network timeout, stop, C-STORE)."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler

from sarclym.node.config import Config
from sarclym.node.dicom import compat, reactor
from sarclym.node.dicom.listener import Listener
from sarclym.node.dicom.transport import ListenerServer
from sarclym.node.errors import ConfigError
from sarclym.node.store.state import StateDB
from tests.conftest import free_port
from tests.unit.petfactory import PET_SOP, make_series

# The pynetdicom 3.0.4 sources that compat.make_acceptor, dul_reactor_pass and association_pass
# copy: a new pynetdicom that changes them must be read again before the pins move.
COPIED = {
    RequestHandler._create_association: "05c8d12b",
    DULServiceProvider.run_reactor: "e3a10eb3",
    Association._run_reactor: "f28838c5",
}


def _digest(function: Callable[..., object]) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:8]


@pytest.mark.parametrize("function", list(COPIED), ids=lambda f: f.__qualname__)
def test_the_copied_pynetdicom_code_is_unchanged(function: Callable[..., object]) -> None:
    assert _digest(function) == COPIED[function], (
        f"pynetdicom's {function.__qualname__} changed: compare it with compat.py's copy"
    )


def _until(condition: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    """Wait (bounded) for ``condition``: liveness, not a time bound on the node."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@contextlib.contextmanager
def _listener(tmp_path: Path, kind: str) -> Iterator[Listener]:
    """A started listener whose associations run on the ``kind`` reactor."""
    config = Config.model_validate(
        {
            "listener": {"host": "127.0.0.1", "port": free_port(), "allow_any_peer": True},
            "storage": {"data_dir": str(tmp_path), "min_free_mb": 1},
        }
    )
    state = StateDB.in_data_dir(tmp_path)
    listener = Listener(config, state)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ListenerServer, "reactor", kind)
        listener.start()
        try:
            yield listener
        finally:
            listener.stop()
            state.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Listener]:
    with _listener(tmp_path, reactor.BLOCKING) as listener:
        yield listener


def _server(listener: Listener) -> ListenerServer:
    server = listener._server
    assert server is not None
    return server


def _associate(listener: Listener) -> Association:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(PET_SOP)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=listener.config.ae_title)
    assert assoc.is_established
    return assoc


def _acceptor(listener: Listener) -> Association:
    _until(lambda: len(_server(listener).admitted()) == 1, "the association is admitted")
    return _server(listener).admitted()[0]


def test_the_listener_makes_blocking_associations_that_store_and_release(
    node: Listener,
) -> None:
    assoc = _associate(node)
    theirs = _acceptor(node)
    assert isinstance(theirs, reactor.BlockingAssociation)
    assert isinstance(theirs.dul, reactor.BlockingDUL)
    # The association's timeouts are on its (replaced) DUL's timers: ARTIM, network timeout.
    assert theirs.dul.artim_timer.timeout == node.config.artim_seconds
    assert compat.idle_seconds_left(theirs) is not None
    activity = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    for ds in make_series(activity, series_uid="1.2.826.0.1.3680043.8.498.161"):
        assert assoc.send_c_store(ds).Status == 0x0000
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    _until(lambda: not theirs.is_alive() and not theirs.dul.is_alive(), "both threads end")
    assert theirs.is_released
    assert len(node.state.instance_paths()) == 3


def test_an_abort_from_the_peer_ends_the_association(node: Listener) -> None:
    assoc = _associate(node)
    theirs = _acceptor(node)
    assoc.abort()
    _until(lambda: not theirs.is_alive() and not theirs.dul.is_alive(), "both threads end")
    assert theirs.is_aborted


def test_an_idle_association_still_times_out(node: Listener) -> None:
    _server(node).ae.network_timeout = 0.3  # copied into each association when it is made
    assoc = _associate(node)
    theirs = _acceptor(node)
    _until(lambda: assoc.is_aborted, "the node aborts an association idle past its timeout")
    _until(lambda: not theirs.is_alive() and not theirs.dul.is_alive(), "both threads end")


def test_stop_aborts_an_idle_association_and_its_threads_end(node: Listener) -> None:
    assoc = _associate(node)
    theirs = _acceptor(node)
    node.stop()
    assert not theirs.is_alive()
    assert not theirs.dul.is_alive()
    _until(lambda: assoc.is_aborted, "the peer sees the A-ABORT")


def test_the_fallback_is_pynetdicoms_reactor(tmp_path: Path) -> None:
    with _listener(tmp_path, reactor.PYNETDICOM) as listener:
        assoc = _associate(listener)
        theirs = _acceptor(listener)
        assert type(theirs) is Association
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()


def test_an_unknown_reactor_is_a_config_error(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "listener": {"host": "127.0.0.1", "port": free_port()},
            "storage": {"data_dir": str(tmp_path), "min_free_mb": 1},
        }
    )
    ae = AE()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ListenerServer, "reactor", "epoll")
        with pytest.raises(ConfigError, match=r"listener\.reactor"):
            ae.make_server(
                ("127.0.0.1", config.listener.port),
                contexts=[build_context("1.2.840.10008.1.1")],
                server_class=ListenerServer,
                config=config.listener,
            )


def test_a_wake_up_is_not_lost_between_a_pass_and_the_wait() -> None:
    """A put before the DUL's wait makes the wait return at once (the byte stays readable)."""
    assoc = reactor.BlockingAssociation(AE(), "acceptor")
    dul = assoc.dul
    assert isinstance(dul, reactor.BlockingDUL)
    dul.to_provider_queue.put(object())  # type: ignore[arg-type]
    ready = compat.association_socket(assoc)  # no socket yet: only the wake-up is watched
    assert ready is None
    dul._wait()  # returns: the wake-up byte was there
    dul.artim_timer.timeout = None
    assert dul.to_provider_queue.qsize() == 1
