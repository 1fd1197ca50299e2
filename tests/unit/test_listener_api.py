"""dicom/listener: the names callers import from it stay there after the split into modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sarclym.node.dicom import contexts, listener, part10, peers, status


def test_public_names_are_the_moved_objects() -> None:
    assert listener.StoreStatus is status.StoreStatus
    assert listener.RejectReason is peers.RejectReason
    assert listener.check_peer is peers.check_peer
    assert listener.TRANSFER_SYNTAXES is contexts.TRANSFER_SYNTAXES
    assert listener.PRIVATE_STORAGE_CLASSES is contexts.PRIVATE_STORAGE_CLASSES
    assert listener.storage_contexts is contexts.storage_contexts
    assert listener.in_peer_order is contexts.in_peer_order
    assert listener.expected_count is part10.expected_count
    assert listener.part10_prefix is part10.part10_prefix


def test_all_is_importable() -> None:
    for module in (listener, contexts, peers, status, part10):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_verification_and_storage_contexts() -> None:
    made = contexts.storage_contexts(("1.2.3.4",))
    uids = [str(cx.abstract_syntax) for cx in made]
    assert uids[0] == contexts.VERIFICATION
    assert len(uids) == len(set(uids))
    assert {"1.2.3.4", *contexts.PRIVATE_STORAGE_CLASSES} <= set(uids)
    pet = next(cx for cx in made if str(cx.abstract_syntax) == "1.2.840.10008.5.1.4.1.1.128")
    assert [str(ts) for ts in pet.transfer_syntax] == list(contexts.TRANSFER_SYNTAXES)


def test_the_listener_imports_what_the_first_pet_instance_needs_when_it_starts(
    tmp_path: Path,
) -> None:
    """The first C-STORE of a PET slice must not wait for scipy and scikit-image (about 0.5 s):
    a fresh interpreter has them once ``Listener.start`` returned."""
    script = f"""
import sys
from sarclym.node.config import Config
from sarclym.node.dicom.listener import Listener
from sarclym.node.store.state import StateDB
from tests.conftest import free_port
wanted = ("sarclym.model.imaging.contribution_walk", "sarclym.model.imaging.eligibility")
assert not [m for m in wanted if m in sys.modules], "imported before start"
config = Config.model_validate({{"listener": {{"host": "127.0.0.1", "port": free_port()}},
    "storage": {{"data_dir": {str(tmp_path)!r}, "min_free_mb": 1}}}})
listener = Listener(config, StateDB.in_data_dir({str(tmp_path)!r}))
listener.start()
listener.stop()
print([m for m in wanted if m not in sys.modules])
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
